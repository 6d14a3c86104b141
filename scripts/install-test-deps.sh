#!/usr/bin/env bash
# Installs the external tools the test suite drives (real peers and checkers),
# from Debian's packages, only when one is missing:
#   dcmtk      echoscu, storescu, findscu, storescp, wlmscpfs, dump2dcm
#   openssl    certificate checks, s_client
#   prometheus promtool (metrics and alert-rule checks)
#   systemd    systemd-analyze (unit verification and security exposure)
#   testssl.sh testssl (TLS policy audit of a listener, tests/it/security_tls.rs)
#   haproxy    the L4 load balancer in front of the gateway (PROXY protocol tests)
#   chromium   headless rendering and screenshot of the status page (tests/it/admin_page.rs)
#   rsyslog    the syslog receiver of the ATNA audit trail tests (imtcp, RFC 6587)
#   rsyslog-gnutls  its TLS driver (RFC 5425, client certificates), tests/it/atna_syslog.rs
#   lintian    the Debian package check (scripts/check-package.sh)
# and from PyPI:
#   check-jsonschema  validates configs against `dicomgate schema` (tests/it/schema.rs)
# (cargo-deb comes from crates.io: scripts/build-package.sh installs it.)
#
# It changes the system only with CI=true as root (the CI machine). Anywhere
# else it installs nothing: it names what is missing and how to install it,
# and the tests that need a missing tool skip (scripts/test.sh lists them at
# the end; under CI=true they fail instead).
set -euo pipefail

may_install() { [ "${CI:-}" = true ] && [ "$(id -u)" -eq 0 ]; }

need=()
command -v storescp >/dev/null 2>&1 || need+=(dcmtk)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v testssl >/dev/null 2>&1 || need+=(testssl.sh)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v rsyslogd >/dev/null 2>&1 || need+=(rsyslog)
ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || need+=(rsyslog-gnutls)
command -v lintian >/dev/null 2>&1 || need+=(lintian)

# PyPI, not Debian: Debian's python3-check-jsonschema is not in every release.
need_pip_for_check_jsonschema() {
  command -v check-jsonschema >/dev/null 2>&1 && return 0
  if ! may_install; then
    echo "install-test-deps: missing check-jsonschema (tests/it/schema.rs will skip); install it with: pip install check-jsonschema" >&2
    return 0
  fi
  command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || need+=(python3-pip)
  return 0
}
need_pip_for_check_jsonschema
pip_install() {
  command -v check-jsonschema >/dev/null 2>&1 && return 0
  may_install || return 0
  echo "install-test-deps: installing check-jsonschema (PyPI)"
  # Debian's system Python refuses pip installs (PEP 668) unless told to;
  # this is a test tool on a CI or developer machine, not a system package.
  python3 -m pip install --quiet check-jsonschema 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages check-jsonschema
}

if [ ${#need[@]} -eq 0 ]; then
  pip_install
  exit 0
fi
if ! may_install; then
  echo "install-test-deps: missing ${need[*]}: the tests that drive them will skip. Install them with:" >&2
  echo "  sudo apt-get install -y --no-install-recommends ${need[*]}" >&2
  echo "  (or run the suite as CI does, as root: CI=true scripts/test.sh)" >&2
  exit 0
fi
echo "install-test-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
pip_install
