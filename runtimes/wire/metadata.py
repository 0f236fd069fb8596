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
"""

AUTHORIZATION = "authorization"

REPLAY_KEY = "mlbridge-replay-key"
REPLAY_CLEAR = "mlbridge-replay-clear"
CREATED_RESOURCES = "mlbridge-created-resources"
DELETED_RESOURCES = "mlbridge-deleted-resources"
RESOURCE_STATES = "mlbridge-resource-states"
EXPORTED_MODELS = "mlbridge-exported-models"
BATCH_SIZE = "mlbridge-batch-size"
DEPRECATED = "mlbridge-deprecated"
