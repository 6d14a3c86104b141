#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the real DICOM peers
# and checkers it needs (Debian packages, as root), then runs every test:
# unit tests, the integration crate (tests/it) and the fuzz-corpus replay.
# With CI=true a test whose tool is missing fails instead of skipping; without
# it, skipped tests are listed at the end. Uses cargo-nextest when installed
# (a process per test, per-test times, the slowest listed at the end; see
# .config/nextest.toml), plain `cargo test` otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh

DICOMGATE_SKIPPED="$(mktemp)"
export DICOMGATE_SKIPPED
trap 'rm -f "$DICOMGATE_SKIPPED"' EXIT

status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --all-targets || status=$?
  junit=target/nextest/default/junit.xml
  if [ -f "$junit" ]; then
    echo "slowest tests:"
    python3 - "$junit" <<'PY'
import sys, xml.etree.ElementTree as ET
cases = [(float(c.get("time", 0)), f'{c.get("classname")} {c.get("name")}') for c in ET.parse(sys.argv[1]).iter("testcase")]
for t, name in sorted(cases, reverse=True)[:10]:
    print(f"  {t:7.1f} s  {name}")
print(f"  ({len(cases)} tests, {sum(t for t, _ in cases):.0f} s of test time in all)")
PY
  fi
else
  echo "test.sh: cargo-nextest not installed (cargo install cargo-nextest); using cargo test"
  cargo test --locked --all-targets || status=$?
fi

if [ -s "$DICOMGATE_SKIPPED" ]; then
  echo "skipped tests ($(wc -l <"$DICOMGATE_SKIPPED")), their tools missing on this machine:"
  sort "$DICOMGATE_SKIPPED" | sed 's/^/  /'
fi
exit "$status"
