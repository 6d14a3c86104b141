#!/usr/bin/env bash
# Checks the Prometheus files in deploy/prometheus with promtool (Debian:
# prometheus): the alert rules parse, their unit tests pass (each alert fires
# on its situation and stays quiet on a healthy gateway), and the example
# configuration loads them.
set -euo pipefail

dir="$(cd "$(dirname "$0")/.." && pwd)/deploy/prometheus"
command -v promtool >/dev/null || { echo "check-deploy: promtool not found (apt-get install -y prometheus)" >&2; exit 2; }

# promtool resolves rule_files relative to the file that names them.
cd "$dir"
promtool check rules dicomgate-alerts.yml
promtool test rules dicomgate-alerts.test.yml
promtool check config prometheus.yml
echo "check-deploy: alert rules, their tests and the example configuration are valid"
