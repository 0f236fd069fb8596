#!/usr/bin/env bash
# The test command CI runs (via `make test`): unit tests, then the Docker
# integration and security tests against a real engine. Starts the engine if
# none answers, builds the images (cached), and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"

# Stop the engine at the end only if this run started it.
if docker info >/dev/null 2>&1; then
    echo "== using the Docker engine that is already running"
else
    scripts/docker-engine.sh up
    trap 'scripts/docker-engine.sh down' EXIT
fi

echo "== lint: ruff, mypy --strict"
"$PY" -m ruff check .
"$PY" -m mypy

echo "== building images (cached after the first build)"
"$PY" -m orchestrator.cli images build

echo "== tests"
# The DSPex flow runs on both backends: process workers and real docker workers.
export MLBRIDGE_DSPEX_BACKENDS="${MLBRIDGE_DSPEX_BACKENDS:-process,docker}"
"$PY" -m pytest tests -q -p no:cacheprovider "$@"
