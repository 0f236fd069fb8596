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
# A tiny text classifier for the demo (random weights, a tokenizer trained here; no hub is needed).
if ! "$PY" -m orchestrator.cli models list | grep -q '^tiny-bert '; then
    DEMO_MODEL="$(mktemp -d)"
    "$PY" -m orchestrator.cli models tiny bert-classifier "$DEMO_MODEL/tiny-bert"
    "$PY" -m orchestrator.cli models add "$DEMO_MODEL/tiny-bert" --name tiny-bert
    rm -rf "$DEMO_MODEL"
fi
"$PY" -m orchestrator.cli serve --backend docker --listen "$ADDRESS" --metrics-listen "${MLBRIDGE_METRICS_LISTEN:-127.0.0.1:9464}" &
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
echo "== a transformers pipeline over the model store's tiny-bert, in its hardened worker (batching on)"
"$PY" - "$ADDRESS" <<'PYEOF'
import sys
from orchestrator import MLBridge

with MLBridge.connect(sys.argv[1]) as mb:
    tf = mb.get_adapter("transformers")
    clf = tf.pipeline("text-classification", model="tiny-bert", batching={"max_batch_size": 16, "max_batch_time_ms": 2})
    for text in ("this movie was great", "this movie was terrible"):
        print(f"{text!r}: {tf.run(clf, text)}")
PYEOF
echo
echo "== Prometheus metrics: the calls above, per bridge, tenant and outcome"
"$PY" - "${MLBRIDGE_METRICS_LISTEN:-127.0.0.1:9464}" <<'PYEOF'
import sys
import urllib.request

page = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=10).read().decode()
print("\n".join(line for line in page.splitlines() if line.startswith("mlbridge_calls_total")))
PYEOF
echo
echo "mlbridge is serving on $ADDRESS (metrics on ${MLBRIDGE_METRICS_LISTEN:-127.0.0.1:9464}); Ctrl-C stops it."
wait "$SERVE_PID"
