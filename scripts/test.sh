#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the real DICOM peers
# and checkers it needs (Debian packages, as root), then runs every test.
# With CI=true a test whose tool is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo test --locked --all-targets
