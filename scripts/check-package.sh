#!/usr/bin/env bash
# Checks the Debian package that scripts/build-package.sh wrote:
#   1. lintian: no error (warnings left are explained in packaging/README.md);
#   2. only with CI=true and as root (the CI machine is thrown away after the
#      run; a developer's system is never touched): dpkg -i, the files, user and
#      modes are there, the service is neither enabled nor started, the packaged
#      config passes `dicomgate check` as user dicomgate, systemd-analyze
#      verifies the installed unit; then dpkg --purge leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"

shopt -s nullglob
debs=("$target"/debian/dicomgate_*.deb)
if [ ${#debs[@]} -ne 1 ]; then
  echo "check-package: expected one $target/debian/dicomgate_*.deb, found ${#debs[@]}: run scripts/build-package.sh" >&2
  exit 1
fi
deb="${debs[0]}"
fail() { echo "check-package: $*" >&2; exit 1; }

echo "check-package: lintian $deb"
# --fail-on error: warnings are reported (and explained in packaging notes), errors fail.
lintian --fail-on error --info "$deb"

if [ "${CI:-}" != true ] || [ "$(id -u)" -ne 0 ]; then
  echo "check-package: SKIP install/purge test (it needs CI=true and root; it never runs on a developer's system)"
  exit 0
fi

dpkg -s dicomgate >/dev/null 2>&1 && fail "dicomgate is already installed here; refusing to touch it"
getent passwd dicomgate >/dev/null && fail "a user dicomgate already exists here; refusing to let purge remove it"

echo "check-package: dpkg -i $deb"
dpkg -i "$deb"
trap 'dpkg --purge dicomgate >/dev/null 2>&1 || true' EXIT

for f in /usr/bin/dicomgate /usr/lib/systemd/system/dicomgate.service \
         /usr/lib/systemd/system/dicomgate-store.socket /usr/lib/systemd/system/dicomgate-worklist.socket \
         /usr/lib/sysusers.d/dicomgate.conf /usr/lib/tmpfiles.d/dicomgate.conf \
         /etc/dicomgate/config.yaml /usr/share/dicomgate/dicomgate.schema.json \
         /usr/share/man/man1/dicomgate.1.gz /usr/share/man/man1/dicomgate-check.1.gz \
         /usr/share/man/man5/dicomgate.yaml.5.gz \
         /usr/share/bash-completion/completions/dicomgate \
         /usr/share/zsh/vendor-completions/_dicomgate /usr/share/fish/vendor_completions.d/dicomgate.fish \
         /usr/share/doc/dicomgate/copyright /usr/share/doc/dicomgate/changelog.Debian.gz \
         /usr/share/doc/dicomgate/README.md /usr/share/doc/dicomgate/operations.md \
         /usr/share/doc/dicomgate/configuration.md; do
  [ -e "$f" ] || fail "$f is missing after dpkg -i"
done
dpkg-query -W -f='${Conffiles}\n' dicomgate | grep -q '^ /etc/dicomgate/config.yaml ' \
  || fail "/etc/dicomgate/config.yaml is not a conffile"
getent passwd dicomgate >/dev/null || fail "user dicomgate was not created"
[ "$(stat -c '%a %U %G' /var/lib/dicomgate)" = "700 dicomgate dicomgate" ] \
  || fail "/var/lib/dicomgate is $(stat -c '%a %U %G' /var/lib/dicomgate), expected 700 dicomgate dicomgate"
[ "$(stat -c '%a %U %G' /etc/dicomgate)" = "750 root dicomgate" ] \
  || fail "/etc/dicomgate is $(stat -c '%a %U %G' /etc/dicomgate), expected 750 root dicomgate"
[ "$(stat -c '%a %U %G' /etc/dicomgate/config.yaml)" = "640 root dicomgate" ] \
  || fail "/etc/dicomgate/config.yaml is $(stat -c '%a %U %G' /etc/dicomgate/config.yaml), expected 640 root dicomgate"
# Installed, not enabled: no wants/ link (works with or without a running systemd).
[ ! -e /etc/systemd/system/multi-user.target.wants/dicomgate.service ] || fail "the service was enabled on install"
if [ -d /run/systemd/system ] && systemctl is-active --quiet dicomgate.service; then
  fail "the service was started on install"
fi

echo "check-package: dicomgate check as user dicomgate"
setpriv --reuid=dicomgate --regid=dicomgate --init-groups \
  /usr/bin/dicomgate check --config /etc/dicomgate/config.yaml \
  || fail "the packaged config does not pass dicomgate check as user dicomgate"
grep -q '^# yaml-language-server: \$schema=/usr/share/dicomgate/dicomgate.schema.json' /etc/dicomgate/config.yaml \
  || fail "the packaged config has no schema modeline"

echo "check-package: systemd-analyze verify"
systemd-analyze verify /usr/lib/systemd/system/dicomgate.service \
    /usr/lib/systemd/system/dicomgate-store.socket /usr/lib/systemd/system/dicomgate-worklist.socket

echo "check-package: man pages"
for page in man1/dicomgate.1 man1/dicomgate-run.1 man1/dicomgate-check.1 man5/dicomgate.yaml.5; do
  zcat "/usr/share/man/$page.gz" | grep -q '^\.TH' || fail "man page $page is not roff"
done

echo "check-package: upgrade (reinstall) keeps the admin's config and leaves the service off"
echo "# edited by the admin" >>/etc/dicomgate/config.yaml
dpkg -i "$deb"
grep -q '^# edited by the admin$' /etc/dicomgate/config.yaml || fail "an upgrade replaced the admin's config.yaml"
[ ! -e /etc/systemd/system/multi-user.target.wants/dicomgate.service ] || fail "the upgrade enabled the service"

files=$(dpkg-query -L dicomgate)
echo "check-package: dpkg --purge"
dpkg --purge dicomgate
trap - EXIT
left=()
while IFS= read -r f; do
  # Shared directories (/usr/bin, /usr/share/man/man1, ...) stay, of course.
  [ -e "$f" ] && [ ! -d "$f" ] && left+=("$f")
done <<<"$files"
for d in /etc/dicomgate /var/lib/dicomgate /usr/share/doc/dicomgate /usr/share/dicomgate; do
  [ -e "$d" ] && left+=("$d")
done
[ ${#left[@]} -eq 0 ] || fail "left after purge: ${left[*]}"
getent passwd dicomgate >/dev/null && fail "user dicomgate is left after purge"
getent group dicomgate >/dev/null && fail "group dicomgate is left after purge"
echo "check-package: install, check, purge: clean"
