"""Metadata keys of mlbridge's two hops.

Request metadata (public API): :data:`AUTHORIZATION` carries ``Bearer <token>``.

Reply metadata keys a handler may set (``ctx.metadata[KEY] = value``) to tell the orchestrator something.

REPLAY_KEY: replay this call, keyed by the value, on every worker the tenant
    claims later (a replacement after a crash included). A later call with the
    same key replaces the earlier one.
REPLAY_CLEAR: forget every replayable call of this tenant and bridge.
CREATED_RESOURCES: JSON list of ``{"resource_id", "type", "config", "info"}``
    for resources a handler created as a side effect; the orchestrator
    registers them so clients can use them like any other.
DELETED_RESOURCES: JSON list of resource ids a handler deleted.
RESOURCE_STATES: JSON object of resource id -> state, set by the runtime after
    a call that changed resources whose state the orchestrator keeps
    (``Resource.snapshot``); stored with the resource's spec before the reply
    goes out and handed back when the resource is re-created.
EXPORTED_MODELS: JSON list of ``{"name", "hash", "dir"}``: models a handler
    wrote under the worker's export directory (``dir`` relative to it) for the
    orchestrator to import into its model store under ``name``; the
    orchestrator re-hashes the files and refuses a hash that differs.
BATCH_SIZE: the number of requests served by the model invocation that
    answered this call (adaptive batching), set by a bridge that batches.
DEPRECATED: a sentence naming the replacement of a deprecated command.
RETRIED: set by the orchestrator on a reply whose call it ran a second time on a
    replacement worker (the command is retry-safe and the first worker died); the
    value is the first attempt's error.
METRICS: JSON ``{"v": 1, "series": [...]}``: what the bridge's own metrics
    (``Bridge.metrics``) counted since the worker last reported, set by the
    runtime on a reply when anything changed; the orchestrator adds them to its
    ``mlbridge_bridge_*`` series with the bridge and tenant labels.
SPANS: JSON list of spans the runtime recorded for this call (its handler,
    and spans a bridge marked with ``ctx.span``), in the trace the request's
    ``traceparent`` named; the orchestrator exports them with its own.
USAGE: JSON ``{"tokens_in": n, "tokens_out": n}``: tokens this call used,
    where a bridge reports them (``ctx.record_tokens``); usage accounting.
"""

AUTHORIZATION = "authorization"
#: W3C trace context a client may send with a public call (OpenTelemetry's propagation header).
TRACEPARENT = "traceparent"

REPLAY_KEY = "mlbridge-replay-key"
REPLAY_CLEAR = "mlbridge-replay-clear"
CREATED_RESOURCES = "mlbridge-created-resources"
DELETED_RESOURCES = "mlbridge-deleted-resources"
RESOURCE_STATES = "mlbridge-resource-states"
EXPORTED_MODELS = "mlbridge-exported-models"
BATCH_SIZE = "mlbridge-batch-size"
DEPRECATED = "mlbridge-deprecated"
RETRIED = "mlbridge-retried"
METRICS = "mlbridge-metrics"
SPANS = "mlbridge-spans"
USAGE = "mlbridge-usage"
#: Reply keys for the orchestrator alone: taken out of a reply before it goes on to the client.
FOR_ORCHESTRATOR = frozenset({METRICS, SPANS, USAGE})
