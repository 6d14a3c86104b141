#!/usr/bin/env bash
# The fault suite (tests/faults/, issue 24): an HA pair of gateways on
# keepalived, a cloud and a PACS in network namespaces, with a userspace link
# emulator for loss, delay, reordering, duplication, a black-holed server and
# a partition. It creates namespaces (all named dgf-*) and installs packages,
# so it runs only with CI=true as root; elsewhere it says so and exits 0.
#
#   CI=true scripts/fault-test.sh                 # the whole suite (~4 min)
#   CI=true scripts/fault-test.sh --only ha_failover
#   CI=true scripts/fault-test.sh --binary /path/to/other/dicomgate
#   CI=true scripts/fault-test.sh --keepalived-conf other.conf --only ha_failover
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${CI:-}" != "true" ]; then
  echo "fault-test: skipped: the fault suite creates network namespaces and installs packages; run it with CI=true as root"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "fault-test: CI=true but not root: network namespaces, TAP devices and keepalived need root" >&2
  exit 1
fi

# keepalived (the HA pair), iproute2 (namespaces, bridges), dcmtk (the
# peers), curl (keepalived's check; the admin endpoint), python3 (the suite
# and the link emulator; standard library only).
need=()
command -v keepalived >/dev/null 2>&1 || need+=(keepalived)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v storescp >/dev/null 2>&1 || need+=(dcmtk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "fault-test: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -c /dev/net/tun ] || { echo "fault-test: /dev/net/tun missing: the link emulator needs TAP devices" >&2; exit 1; }

binary_given=false
for a in "$@"; do [ "$a" = "--binary" ] && binary_given=true; done
$binary_given || cargo build --release --locked --quiet

work="$(mktemp -d /tmp/dicomgate-faults.XXXXXX)"
# The suite removes its namespaces itself (also on SIGTERM); this is the
# last line of defence for a suite killed with SIGKILL mid-run.
cleanup() {
  for ns in dgf-cloud dgf-gwa dgf-gwb dgf-pacs dgf-net; do
    if ip netns list | grep -qw "$ns"; then
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
}
trap cleanup EXIT
python3 tests/faults/suite.py --workdir "$work" "$@"
