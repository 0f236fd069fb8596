#!/usr/bin/env bash
# The test command CI runs (via `make test`): unit tests, then the Docker
# integration and security tests against a real engine. Starts the engine if
# none answers, builds the images (cached), and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"

scripts/docker-engine.sh up
trap 'scripts/docker-engine.sh down' EXIT

echo "== building images (cached after the first build)"
"$PY" -m orchestrator.cli images build

echo "== tests"
"$PY" -m pytest tests -q -p no:cacheprovider "$@"
