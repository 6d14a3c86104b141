#!/usr/bin/env bash
# Checks that the JSON Schema (`dicomgate schema`, committed as
# docs/dicomgate.schema.json) accepts every configuration the test suite
# started a gateway with. .ci/run sets DICOMGATE_CONFIG_CORPUS around
# scripts/test.sh; the test support code copies each accepted config there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${DICOMGATE_CONFIG_CORPUS:?set DICOMGATE_CONFIG_CORPUS to the directory the test run filled}"
shopt -s nullglob
files=("$dir"/*.yaml)
if [ ${#files[@]} -eq 0 ]; then
  echo "check-config-corpus: no config recorded in $dir: did scripts/test.sh run with DICOMGATE_CONFIG_CORPUS set?" >&2
  exit 1
fi
echo "check-config-corpus: ${#files[@]} configs the test suite used, against docs/dicomgate.schema.json"
check-jsonschema --schemafile docs/dicomgate.schema.json "${files[@]}"
