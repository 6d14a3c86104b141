#!/usr/bin/env bash
# The system tests: dicomgate where it runs, not in a stand-in.
#   vm         the .deb from scripts/build-package.sh under systemd as PID 1
#              in a Debian 12 VM (QEMU, TCG): install, start, TLS from the
#              host, reload, the package upgrade under load, the MAINPID
#              hand-over, the sandbox, socket units, crash, journald, purge
#              (tests/system/vm_test.py)
#   container  the shipped Dockerfile built with podman and run with the
#              documented layout (tests/system/container_test.py)
# Usage: scripts/system-test.sh [vm|container]...   (default: both)
#
# They boot a VM and build an image, so they run only with CI=true or
# DICOMGATE_SYSTEM_TESTS=1, as root; otherwise they skip with this message.
# Only CI=true installs what is missing (tests/system/install-deps.sh).
# Each check prints PASS or FAIL; the exit status is 1 if any failed.
# Images are cached under target/system-test/ (keyed by their package lists).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(vm container)

if [ "${CI:-}" != true ] && [ "${DICOMGATE_SYSTEM_TESTS:-}" != 1 ]; then
  echo "system-test: SKIP ${suites[*]} (they boot a VM and build a container image: run with CI=true or DICOMGATE_SYSTEM_TESTS=1, as root)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system-test: FAIL: needs root (mmdebstrap --mode=root, podman as root)" >&2
  exit 1
fi
tests/system/install-deps.sh

shopt -s nullglob
debs=("$target"/debian/dicomgate_*.deb)
if [ ${#debs[@]} -ne 1 ]; then
  echo "system-test: FAIL: expected one $target/debian/dicomgate_*.deb, found ${#debs[@]}: run scripts/build-package.sh" >&2
  exit 1
fi
deb="$(realpath "${debs[0]}")"
mkdir -p "$target/system-test"
base="$(realpath "$target/system-test")"

# The "new version" for the upgrade check: the same package with a higher
# version and a binary that differs (a marker appended after the ELF image,
# which the loader ignores), so the check can tell which file the running
# main process executes.
upgrade_deb() {
  local tmp version new out
  tmp="$(mktemp -d "$base/upgrade-XXXXXX")"
  dpkg-deb -R "$deb" "$tmp/pkg"
  version="$(dpkg-deb -f "$deb" Version)"
  new="${version}+systest1"
  sed -i "s/^Version: .*/Version: $new/" "$tmp/pkg/DEBIAN/control"
  printf '\ndicomgate-system-test-upgrade\n' >>"$tmp/pkg/usr/bin/dicomgate"
  out="$base/debs/dicomgate_${new}_$(dpkg-deb -f "$deb" Architecture).deb"
  mkdir -p "$base/debs"
  rm -f "$base"/debs/*.deb
  dpkg-deb --root-owner-group -Zxz -b "$tmp/pkg" "$out" >/dev/null
  rm -rf "$tmp"
  echo "$out"
}

status=0
for suite in "${suites[@]}"; do
  start=$(date +%s)
  case "$suite" in
  vm)
    image="$(realpath "$(tests/system/vm-image.sh "$target")")"
    new="$(upgrade_deb)"
    work="$base/vm-run"
    rm -rf "$work" && mkdir -p "$work"
    python3 tests/system/vm_test.py "$image" "$work" "$deb" "$new" || status=1
    ;;
  container)
    work="$base/container-run"
    rm -rf "$work" && mkdir -p "$work"
    python3 tests/system/container_test.py "$(pwd)" "$base" "$work" || status=1
    ;;
  *)
    echo "system-test: unknown suite $suite (vm, container)" >&2
    exit 2
    ;;
  esac
  echo "system-test: $suite took $(( $(date +%s) - start )) s"
done
exit $status
