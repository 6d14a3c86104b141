#!/usr/bin/env bash
# Checks the systemd unit (issue 3 acceptance):
#  1. `systemd-analyze verify` reports nothing (it exits 0 even on ignored
#     lines, so any output is a failure);
#  2. dicomgate.sysusers and dicomgate.tmpfiles apply cleanly to an empty
#     root directory (never the host's);
#  3. `systemd-analyze security --offline=true` overall exposure <= MAX.
# Prints the measured exposure. Needs systemd-analyze (Debian: systemd).
set -euo pipefail

MAX_EXPOSURE=${MAX_EXPOSURE:-1.5}
repo=$(cd "$(dirname "$0")/.." && pwd)
unit="$repo/systemd/dicomgate.service"

for tool in systemd-analyze systemd-sysusers systemd-tmpfiles; do
    command -v "$tool" >/dev/null || { echo "check-systemd: $tool not found (apt-get install -y systemd)" >&2; exit 2; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# verify checks that ExecStart's binary exists. Where dicomgate is not
# installed, verify a copy (same file name, so the same unit name) that
# points at a stand-in executable.
verify_unit="$unit"
if [[ ! -x /usr/bin/dicomgate ]]; then
    printf '#!/bin/sh\nexit 0\n' >"$work/dicomgate"
    chmod 0755 "$work/dicomgate"
    mkdir "$work/unit"
    sed "s|/usr/bin/dicomgate|$work/dicomgate|g" "$unit" >"$work/unit/dicomgate.service"
    verify_unit="$work/unit/dicomgate.service"
fi
if ! out=$(systemd-analyze verify --man=no "$verify_unit" 2>&1) || [[ -n "$out" ]]; then
    echo "check-systemd: systemd-analyze verify is not clean:" >&2
    echo "$out" >&2
    exit 1
fi
echo "systemd-analyze verify: clean"

root="$work/root"
mkdir -p "$root/etc"
if ! out=$(systemd-sysusers --root="$root" "$repo/systemd/dicomgate.sysusers" 2>&1) \
    || ! grep -q '^dicomgate:' "$root/etc/passwd"; then
    echo "check-systemd: dicomgate.sysusers does not create the dicomgate user:" >&2
    echo "$out" >&2
    exit 1
fi
if ! out=$(systemd-tmpfiles --root="$root" --create "$repo/systemd/dicomgate.tmpfiles" 2>&1) \
    || [[ ! -d "$root/etc/dicomgate" ]]; then
    echo "check-systemd: dicomgate.tmpfiles does not apply:" >&2
    echo "$out" >&2
    exit 1
fi
echo "sysusers.d and tmpfiles.d snippets: clean"

report=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1) || {
    echo "check-systemd: systemd-analyze security failed:" >&2
    echo "$report" >&2
    exit 1
}
# "→ Overall exposure level for dicomgate.service: 1.2 OK 🙂"
exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p' <<<"$report")
if [[ -z "$exposure" ]]; then
    echo "check-systemd: no 'Overall exposure level' line in:" >&2
    echo "$report" >&2
    exit 1
fi
echo "systemd-analyze security: overall exposure $exposure (maximum $MAX_EXPOSURE)"
if ! awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }'; then
    echo "check-systemd: exposure $exposure is above $MAX_EXPOSURE; the findings:" >&2
    grep '✗' <<<"$report" >&2 || true
    exit 1
fi
