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

# Debian packages the tests drive for real, installed when a command they provide is missing.
need() {  # need PACKAGES... -- COMMANDS...
    local pkgs=() cmd missing=""
    while [ "$1" != "--" ]; do pkgs+=("$1"); shift; done
    shift
    for cmd in "$@"; do command -v "$cmd" >/dev/null 2>&1 || missing="$cmd"; done
    [ -z "$missing" ] && return 0
    echo "== installing Debian's ${pkgs[*]} (for $*)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null; }
}
# promtool checks the shipped alert rules, and a real Prometheus scrapes the orchestrator in the tests.
need prometheus -- promtool prometheus
# The Elixir client's ExUnit suite (clients/elixir) runs against real orchestrators.
need elixir erlang-jiffy -- elixir mix

echo "== lint: ruff, mypy --strict"
"$PY" -m ruff check .
"$PY" -m mypy

echo "== building images (cached after the first build)"
"$PY" -m orchestrator.cli images build
# The orchestrator's own image, for the testcontainers tests (docs/ci.md).
"$PY" -m orchestrator.cli images build orchestrator

echo "== tests"
# The DSPex flow runs on both backends: process workers and real docker workers.
export MLBRIDGE_DSPEX_BACKENDS="${MLBRIDGE_DSPEX_BACKENDS:-process,docker}"
"$PY" -m pytest tests -q -p no:cacheprovider "$@"

echo "== the docker tests again, over the tcp-mtls worker channel (tests that start no worker left out)"
MLBRIDGE_TEST_WORKER_CHANNEL=tcp-mtls "$PY" -m pytest tests/integration tests/security tests/chaos -m docker \
    -q -p no:cacheprovider \
    --ignore=tests/integration/test_elixir_client.py --ignore=tests/integration/test_testcontainers.py \
    --ignore=tests/integration/test_wheel_anywhere.py --ignore=tests/integration/test_image_rollback_docker.py \
    --ignore=tests/integration/test_images.py
