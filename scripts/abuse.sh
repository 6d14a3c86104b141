#!/usr/bin/env bash
# The abuse suite (tests/it/abuse.rs) at sizes too large for CI, against the real
# release binary at its default limits (no max_connections key: issue 11):
# slowloris connections (TCP and TLS, silent or one byte a second) from
# 127.0.0.2 while DCMTK's echoscu must still be served, a connect-and-close
# flood that must leave the daemon's fds and RSS at baseline, and the hostile
# first-PDU cases. Then tests/it/admission_defaults.rs at its larger sizes. Then
# issue 20's attacks (tests/it/deny_service.rs, refusal_summaries.rs,
# many_sources.rs, guessing.rs): a never-closing bad-AE flood and an RJ 2/3/2
# storm at 500 RQs/s for 10 s, off-list admin peers, FLOOD garbage-TLS
# connections with an ATNA receiver, and SLOWLORIS attacker addresses (as
# many concurrent connections, at most 3000) against a prompt peer. Loopback
# only (127.0.0.0/8); every loop is bounded in count and the whole run in time.
#
#   scripts/abuse.sh [SLOWLORIS [FLOOD]]     defaults: 5000 slowloris, 20000 flood
#
# DICOMGATE_BINARY=PATH measures another build (e.g. the release before a
# fix) with the same tests; only the figures they print are then of use.
#
# Needs about 2 × SLOWLORIS + 512 open files: the soft limit is raised to
# that when the hard limit allows (ulimit -n), else the script stops.
set -euo pipefail
cd "$(dirname "$0")/.."

slowloris=${1:-5000}
flood=${2:-20000}
case "$slowloris$flood" in
  *[!0-9]*) echo "abuse.sh: sizes must be numbers" >&2; exit 2 ;;
esac
if [ "$slowloris" -gt 10000 ] || [ "$flood" -gt 100000 ]; then
  echo "abuse.sh: at most 10000 slowloris connections and a 100000-connection flood" >&2
  exit 2
fi

need=$((2 * slowloris + 512))
soft=$(ulimit -Sn)
hard=$(ulimit -Hn)
if [ "$soft" != unlimited ] && [ "$soft" -lt "$need" ]; then
  if [ "$hard" = unlimited ] || [ "$hard" -ge "$need" ]; then
    ulimit -Sn "$need"
  else
    echo "abuse.sh: needs $need open files, the hard limit is $hard (raise it, e.g. in limits.conf)" >&2
    exit 1
  fi
fi

scripts/install-test-deps.sh
echo "abuse.sh: $slowloris slowloris connections, $flood-connection flood, open files $(ulimit -Sn)"
export ABUSE_SLOWLORIS="$slowloris" ABUSE_FLOOD="$flood"
# One test at a time, so each has the machine to itself; 30 minutes at most.
timeout --kill-after=30s 1800 \
  cargo test --release --locked --test it abuse:: -- --nocapture --test-threads=1
# Hostile peers from allowed addresses against echoscu, and a denied flood,
# with no limit or timeout key at all.
export ADMISSION_HOSTILE="$slowloris" ADMISSION_DENIED="$flood"
timeout --kill-after=30s 900 \
  cargo test --release --locked --test it admission_defaults:: -- --nocapture --test-threads=1
# Issue 20: allowed peers, AE-title guessers and off-list scanners.
workers=$((slowloris < 3000 ? slowloris : 3000))
export DENY_RQ_RATE=500 DENY_RQ_SECONDS=10 DENY_GARBAGE="$flood" \
  MANY_SOURCES_ADDRESSES="$slowloris" MANY_SOURCES_WORKERS="$workers"
timeout --kill-after=30s 1800 \
  cargo test --release --locked --test it -- deny_service:: refusal_summaries:: many_sources:: guessing:: \
  --nocapture --test-threads=1
