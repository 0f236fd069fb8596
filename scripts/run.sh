#!/usr/bin/env bash
# Bring mlbridge up with its default configuration on this machine: start the
# Docker engine (installing it when missing), build the images, serve the
# default bridges from hardened containers, and show it answering. Ctrl-C
# stops the orchestrator and the engine it started.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
ADDRESS="${MLBRIDGE_ADDRESS:-127.0.0.1:50051}"

SERVE_PID=""
STARTED_ENGINE=0
if ! docker info >/dev/null 2>&1; then
    scripts/docker-engine.sh up
    STARTED_ENGINE=1
fi
cleanup() {
    if [ -n "$SERVE_PID" ]; then kill "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true; fi
    if [ "$STARTED_ENGINE" = 1 ]; then scripts/docker-engine.sh down; fi
}
trap cleanup EXIT

"$PY" -m orchestrator.cli images build
"$PY" -m orchestrator.cli serve --backend docker --listen "$ADDRESS" &
SERVE_PID=$!

for _ in $(seq 1 240); do
    if "$PY" -m orchestrator.cli --address "$ADDRESS" bridges >/dev/null 2>&1; then break; fi
    kill -0 "$SERVE_PID" 2>/dev/null || { echo "mlbridge serve exited" >&2; exit 1; }
    sleep 0.5
done

echo
echo "== mlbridge status"
"$PY" -m orchestrator.cli --address "$ADDRESS" status
echo
echo "== mlbridge call mock mock:echo --args '{\"hello\": \"world\"}'"
"$PY" -m orchestrator.cli --address "$ADDRESS" call mock mock:echo --args '{"hello": "world"}'
echo
echo "== a LangChain chain in its hardened worker (offline fake model), streamed"
LC_CHAIN='{"runnable": {"prompt": {"template": "Say hi to {name}"}, "model": {"provider": "fake", "responses": ["Hello, Ada!"]}, "parser": "str"}, "input": {"name": "Ada"}}'
"$PY" -m orchestrator.cli --address "$ADDRESS" call langchain langchain:stream --stream --args "$LC_CHAIN"
echo
echo "mlbridge is serving on $ADDRESS; Ctrl-C stops it."
wait "$SERVE_PID"
