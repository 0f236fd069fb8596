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

# promtool checks the shipped alert rules, and a real Prometheus scrapes the orchestrator in the tests.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    echo "== installing Debian's prometheus (server and promtool)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
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
