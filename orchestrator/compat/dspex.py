"""The DSPex legacy API: un-namespaced commands with their old shapes.

DSPex, the Elixir bridge mlbridge grew from, drove one Python process
(``dspy_bridge.py``) with commands such as ``create_program``. Those commands
still work: sent through ``Call`` with no namespace (or through ``mlbridge
port``), each is mapped by :class:`DSPexFacade` onto the ``dspy`` bridge's
resources through the public operations of the
:class:`~orchestrator.edge.Gateway`, with the caller's own identity, so each
step is authorised, counted, given its deadline and audited as any call of
the new API. What DSPex counted and mlbridge does not (commands, errors,
executions per program) is kept per tenant by the facade the server owns.

Results keep DSPex's shapes (times are Unix seconds, as DSPex sent them):

- ``ping``: ``{status: "ok", timestamp, dspy_available, gemini_available, uptime,
  mode: "mlbridge", worker_id}``
- ``configure_lm``: ``{status: "configured", model, provider, temperature}``
- ``create_program``: ``{program_id, status: "created", signature, program_type}``
- ``execute_program``: ``{program_id, outputs, execution_time, duration_ms}``
- ``list_programs``: ``{programs: [{id, created_at, execution_count, last_executed,
  signature}], total_count}``
- ``get_program_info``: ``{program_id, signature, created_at, execution_count,
  last_executed, program_type}``
- ``delete_program``: ``{program_id, status: "deleted"}``
- ``get_stats``: ``{programs_count, command_count, error_count, uptime,
  memory_usage: {rss, vms, percent}, dspy_available, gemini_available,
  dspy: <dspy:stats>}``
- ``cleanup``: ``{status: "cleaned", programs_removed}``
- ``reset_state``: ``{status: "reset", programs_cleared, commands_reset, errors_reset}``

``execution_time`` is, as in DSPex, the Unix time the execution finished (not
a duration); ``duration_ms`` is new. Every successful reply carries the
metadata key ``mlbridge-deprecated``: a sentence naming the replacement.

API keys: ``configure_lm {api_key}`` hands the key to the tenant's worker
with ``dspy:set_secret`` (as an attachment, never in JSON) under the name
:data:`API_KEY_SECRET`, and the ``lm`` resource it creates names that secret.
The key is never in a resource spec, the registry, a reply or a log line; it
lives in the worker only, so after that worker is replaced the client must
call ``configure_lm`` again (the error says so). Without ``api_key`` the
provider's conventional tenant secret is used (``GEMINI_API_KEY`` for the
default provider ``google``), which is what DSPex's ``required_env`` was for.

Sessions, as DSPex's pool workers kept them: ``create_program``,
``execute_program``, ``get_program_info`` and ``delete_program`` take an
optional ``session_id``; a session's program is the resource
``sess:<session>:<program id>``, so two sessions may each have a program
``p1``, and ``list_programs`` with a ``session_id`` lists that session's.

- ``cleanup_session``: ``{status: "cleaned", session_id, programs_removed}``,
  or ``{status: "not_found", session_id}``
- ``update_session_data {session_id, data}``: merges ``data`` (a key set to
  null is removed): ``{status: "updated", session_id, keys}``
- ``get_session_data {session_id, key?}``: ``{session_id, data}`` or
  ``{session_id, key, value}``; an unknown session is NOT_FOUND

The policy decides on the session data commands as on a Call of
``dspy:cleanup_session``, ``dspy:get_session_data`` or
``dspy:update_session_data``. Session data is kept per tenant in the orchestrator's memory (at most
:data:`MAX_SESSIONS` sessions of :data:`MAX_SESSION_BYTES` each), as DSPex
kept it in its bridge process: it does not survive a restart.
Errors keep DSPex's wording where its Elixir side matched on it: ``Program
not found: ID``, ``Program with ID 'ID' already exists``.

Deliberate differences from DSPex, each turning a silent surprise into an
error: failures are errors (DSPex's ``configure_lm`` returned
``{"error": ...}`` as a success); an unknown ``program_type`` is refused
(DSPex built a ``Predict`` whatever it said); a signature that does not build
is refused (DSPex fell back to ``question -> answer``); field names must be
Python identifiers (DSPex rewrote them). As in DSPex, field ``type`` keys are
ignored and outputs are strings. ``create_gemini_program`` and
``execute_gemini_program`` are not served; ``shutdown`` is the port's own
(``mlbridge port``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runtimes.wire.errors import (
    AlreadyExists,
    ConfigError,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
)
from runtimes.wire.metadata import DEPRECATED
from runtimes.wire.payload import check_payload, dumps, loads_lenient, parse_object

from ..calls import Reply
from ..edge import Gateway
from ..registry import ResourceRecord
from ..service import Caller

__all__ = ["API_KEY_SECRET", "BRIDGE", "DEPRECATED_KEY", "DEPRECATIONS", "LEGACY_COMMANDS", "LM_ID", "DSPexFacade"]

BRIDGE = "dspy"
# The lm resource configure_lm creates, one per tenant (resource ids are per tenant).
LM_ID = "dspex-default-lm"
# The worker-only secret an api_key given to configure_lm is kept under.
API_KEY_SECRET = "DSPEX_API_KEY"
DEPRECATED_KEY = DEPRECATED

DEPRECATIONS: dict[str, str] = {
    "ping": "ping is deprecated; use Call(bridge='dspy', command='common:ping')",
    "configure_lm": ("configure_lm is deprecated; use CreateResource(bridge='dspy', type='lm') and "
                     "Call('dspy:configure_lm', {'lm': <id>}) or the dspy adapter's configure_lm, with API keys "
                     "in tenant secrets"),
    "create_program": "create_program is deprecated; use CreateResource(bridge='dspy', type='program') or the "
                      "dspy adapter",
    "execute_program": "execute_program is deprecated; use ExecuteResource(<program id>) or the dspy adapter",
    "list_programs": "list_programs is deprecated; use ListResources(bridge='dspy', type='program')",
    "get_program_info": "get_program_info is deprecated; use ListResources(bridge='dspy', type='program') "
                        "and read the resource's info",
    "delete_program": "delete_program is deprecated; use DeleteResource(<program id>)",
    "get_stats": "get_stats is deprecated; use GetStats() or Call('dspy:stats')",
    "cleanup": "cleanup is deprecated; use DeleteResource for each resource from ListResources(bridge='dspy')",
    "reset_state": "reset_state is deprecated; use DeleteResource for each resource from "
                   "ListResources(bridge='dspy')",
    "cleanup_session": "cleanup_session is deprecated; use DeleteResource for each of the session's resources",
    "get_session_data": "get_session_data is deprecated; use your application's own store for session data",
    "update_session_data": "update_session_data is deprecated; use your application's own store for session data",
}
LEGACY_COMMANDS = frozenset(DEPRECATIONS)

# A session's program is the resource "sess:<session id>:<program id>"; session ids hold no ":".
SESSION_PREFIX = "sess:"
_SESSION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Sessions holding data per tenant, and the JSON size of one session's data.
MAX_SESSIONS = 10_000
MAX_SESSION_BYTES = 1024 * 1024

# DSPex program_type -> DSPy module (DSPex only ever built Predict).
_MODULES = {"predict": "Predict", "chain_of_thought": "ChainOfThought", "chainofthought": "ChainOfThought",
            "cot": "ChainOfThought"}
_PROGRAM_TYPES = {"Predict": "predict", "ChainOfThought": "chain_of_thought"}
# DSPex provider names -> LiteLLM provider prefixes ("google" meant Google AI Studio).
_PROVIDERS = {"google": "gemini"}
# configure_lm args passed on to the lm config besides model/provider/temperature (not in DSPex:
# the dummy LM's scripted answers, and what a proxy or a local model server needs).
_LM_EXTRAS = ("answers", "follow_examples", "max_tokens", "api_base", "num_retries", "cache")


@dataclass
class _ProgramStats:
    signature: Any = None
    program_type: str = ""
    execution_count: int = 0
    last_executed: float | None = None


@dataclass
class _TenantState:
    """What DSPex counted and kept and the orchestrator does not: per tenant, in memory."""

    commands: int = 0
    errors: int = 0
    programs: dict[str, _ProgramStats] = field(default_factory=dict)  # by resource id
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)  # session id -> its data


class DSPexFacade:
    """The DSPex legacy commands over the public operations of one orchestrator.

    Args:
        gateway: the public operations every step goes through.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._tenants: dict[str, _TenantState] = {}

    @staticmethod
    def handles(command: str) -> bool:
        """Whether ``command`` is a legacy DSPex command (un-namespaced, one of :data:`LEGACY_COMMANDS`)."""
        return command in LEGACY_COMMANDS

    async def handle(self, caller: Caller, command: str, args_json: str, call_id: str,
                     timeout_s: float | None) -> Reply:
        """Run one legacy command for ``caller``; the reply carries the deprecation notice.

        Raises:
            InvalidArgument: the arguments are not a JSON object, or are malformed.
            MLBridgeError: whatever the public operation it maps to raised.
        """
        state = self._tenants.setdefault(caller.tenant, _TenantState())
        state.commands += 1
        call = _Call(self.gateway, caller, state, call_id, timeout_s)
        try:
            # The rules every public payload keeps (no NaN, no lone surrogate, nesting): the legacy args come here
            # straight from Call, not through the gateway's call.
            check_payload(args_json, f"args of {command}")
            result, worker_id = await _HANDLERS[command](call, _parse(command, args_json))
        except Exception:
            state.errors += 1
            raise
        return Reply(call_id, dumps(result), {}, {DEPRECATED_KEY: DEPRECATIONS[command]}, worker_id)


@dataclass
class _Call:
    api: Gateway
    caller: Caller
    state: _TenantState
    call_id: str
    timeout_s: float | None

    async def local(self, command: str, args: dict[str, Any], op: Callable[[], Awaitable[dict[str, Any]]]) -> Result:
        """A command the facade answers itself, authorised and audited as a Call of ``dspy:<command>``."""
        return await self.api.local(self.caller, BRIDGE, f"{BRIDGE}:{command}", dumps(args), op), ""

    async def command(self, command: str, args: dict[str, Any], *, main: bool = False,
                      attachments: dict[str, bytes] | None = None) -> Reply:
        """A namespaced call on the dspy bridge; ``main`` reuses the legacy call id (so Cancel finds it)."""
        return await self.api.call(self.caller, BRIDGE, command, dumps(args), attachments,
                                   self.call_id if main else _new_id(), self.timeout_s)


# -- handlers: (call, args) -> (result, worker id) ---------------------------------------
Result = tuple[dict[str, Any], str]


async def _ping(c: _Call, args: dict[str, Any]) -> Result:
    reply = await c.command("common:ping", {}, main=True)
    return {"status": "ok", "timestamp": time.time(), "dspy_available": True, "gemini_available": False,
            "uptime": time.time() - c.api.started, "mode": "mlbridge", "worker_id": reply.worker_id}, reply.worker_id


async def _configure_lm(c: _Call, args: dict[str, Any]) -> Result:
    model = _opt_str(args, "model")
    provider = _opt_str(args, "provider")
    api_key = _opt_str(args, "api_key")
    temperature = args.get("temperature", 0.7)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise InvalidArgument("configure_lm: 'temperature' must be a number")
    if not provider and not (model and "/" in model):
        provider = "google"  # DSPex's default
    config: dict[str, Any] = {"temperature": temperature}
    if model:
        config["model"] = model
    if provider:
        config["provider"] = _PROVIDERS.get(provider, provider)
    config.update({k: args[k] for k in _LM_EXTRAS if k in args})
    if api_key:
        await c.command("dspy:set_secret", {"name": API_KEY_SECRET}, attachments={"value": api_key.encode()})
        config["api_key_secret"] = API_KEY_SECRET
    old = c.api.find_resource(c.caller, LM_ID)
    if old is not None:
        if (old.bridge, old.type) != (BRIDGE, "lm"):
            raise AlreadyExists(f"resource id {LM_ID!r} is taken by a {old.type!r} resource; configure_lm "
                                f"keeps its LM under that id")
        await c.api.delete_resource(c.caller, LM_ID)
    await c.api.create_resource(c.caller, BRIDGE, "lm", dumps(config), resource_id=LM_ID, call_id=_new_id(),
                                timeout_s=c.timeout_s)
    reply = await c.command("dspy:configure_lm", {"lm": LM_ID}, main=True)
    return {"status": "configured", "model": model or config.get("model", "dummy"),
            "provider": provider or config.get("provider", ""), "temperature": temperature}, reply.worker_id


async def _create_program(c: _Call, args: dict[str, Any]) -> Result:
    pid = args.get("id") or f"program_{uuid.uuid4().hex[:16]}"
    if not isinstance(pid, str):
        raise InvalidArgument("create_program: 'id' must be a string")
    if "signature" not in args:
        raise InvalidArgument("create_program needs 'signature': {inputs: [...], outputs: [...]}")
    signature_def = args["signature"]
    program_type = args.get("program_type", "predict")
    module = _MODULES.get(program_type.strip().lower()) if isinstance(program_type, str) else None
    if module is None:
        raise InvalidArgument(f"create_program: program_type {program_type!r} is not supported; "
                              f"types: {', '.join(_MODULES)}")
    config = {"signature": _signature(signature_def), "module": module}
    session = _session_id(args)
    rid = _resource_id(session, pid)
    if c.api.find_resource(c.caller, rid) is not None:  # DSPex's wording
        raise AlreadyExists(f"Program with ID '{pid}' already exists" + (f" in session {session}" if session else ""))
    rid, _ = await c.api.create_resource(c.caller, BRIDGE, "program", dumps(config), resource_id=rid,
                                         call_id=c.call_id, timeout_s=c.timeout_s)
    c.state.programs[rid] = _ProgramStats(signature_def, program_type)
    rec = c.api.find_resource(c.caller, rid)
    return ({"program_id": pid, "status": "created", "signature": signature_def, "program_type": program_type},
            rec.worker_id if rec else "")


async def _execute_program(c: _Call, args: dict[str, Any]) -> Result:
    pid, rid = _program_ids(args)
    inputs = args.get("inputs", {})
    if not isinstance(inputs, dict):
        raise InvalidArgument("execute_program: 'inputs' must be an object of input field -> value")
    _program(c, args, rid)
    started = time.monotonic()
    try:
        reply = await c.api.execute_resource(c.caller, rid, dumps(inputs), call_id=c.call_id,
                                             timeout_s=c.timeout_s)
    except ConfigError:
        # A replaced worker has no default LM: select the tenant's configure_lm LM again, retry once.
        if c.api.find_resource(c.caller, LM_ID) is None:
            raise
        try:
            await c.command("dspy:configure_lm", {"lm": LM_ID})
        except (NotFound, ConfigError):
            raise ConfigError(
                f"program {pid!r} has no LM: the worker holding the LM set by configure_lm was replaced and "
                f"the LM could not be restored (an api_key given to configure_lm lives only in its worker); "
                f"call configure_lm again") from None
        reply = await c.api.execute_resource(c.caller, rid, dumps(inputs), call_id=c.call_id,
                                             timeout_s=c.timeout_s)
    stats = c.state.programs.setdefault(rid, _ProgramStats())
    stats.execution_count += 1
    stats.last_executed = time.time()
    return {"program_id": pid, "outputs": loads_lenient(reply.result, {}), "execution_time": stats.last_executed,
            "duration_ms": round((time.monotonic() - started) * 1000, 3)}, reply.worker_id


async def _list_programs(c: _Call, args: dict[str, Any]) -> Result:
    """Every program; with ``session_id``, that session's (as DSPex's pool workers listed them)."""
    only = _session_id(args)
    recs = c.api.list_resources(c.caller, BRIDGE, "program")
    live = {r.resource_id for r in recs}
    for gone in set(c.state.programs) - live:  # deleted through the new API
        del c.state.programs[gone]
    programs = []
    for rec in recs:
        session, pid = _split(rec.resource_id)
        if only and session != only:
            continue
        entry = _entry(c, rec)
        item = {"id": pid, **{k: entry[k] for k in ("created_at", "execution_count", "last_executed", "signature")}}
        if session:
            item["session_id"] = session
        programs.append(item)
    return {"programs": programs, "total_count": len(programs)}, ""


async def _get_program_info(c: _Call, args: dict[str, Any]) -> Result:
    pid, rid = _program_ids(args)
    # Through list_resources, so the policy's list_resources rule applies as to ListResources.
    for rec in c.api.list_resources(c.caller, BRIDGE, "program"):
        if rec.resource_id == rid:
            return {"program_id": pid, **_entry(c, rec)}, ""
    raise _program_not_found(args, pid)


async def _delete_program(c: _Call, args: dict[str, Any]) -> Result:
    pid, rid = _program_ids(args)
    _program(c, args, rid)
    await c.api.delete_resource(c.caller, rid)
    c.state.programs.pop(rid, None)
    return {"program_id": pid, "status": "deleted"}, ""


async def _get_stats(c: _Call, args: dict[str, Any]) -> Result:
    reply = await c.command("common:stats", {}, main=True)
    worker = loads_lenient(reply.result, {})
    return {
        "programs_count": len(c.api.list_resources(c.caller, BRIDGE, "program")),
        "command_count": c.state.commands,
        "error_count": c.state.errors,
        "uptime": time.time() - c.api.started,
        # Only the worker's RSS is measured; DSPex reported zeros where it could not measure.
        "memory_usage": {"rss": int(worker.get("rss_bytes") or 0), "vms": 0, "percent": 0.0},
        "dspy_available": True,
        "gemini_available": False,
        "dspy": worker.get("bridge_stats", {}),
    }, reply.worker_id


async def _cleanup(c: _Call, args: dict[str, Any]) -> Result:
    return {"status": "cleaned", "programs_removed": await _delete_all(c)}, ""


async def _reset_state(c: _Call, args: dict[str, Any]) -> Result:
    cleared = await _delete_all(c)
    commands, errors = c.state.commands, c.state.errors
    c.state.commands = c.state.errors = 0
    return {"status": "reset", "programs_cleared": cleared, "commands_reset": commands, "errors_reset": errors}, ""


async def _cleanup_session(c: _Call, args: dict[str, Any]) -> Result:
    """Delete a session's programs and drop its data (DSPex's pool workers did this when a session ended)."""
    session = _session_id(args, required=True)
    removed = 0
    for rec in reversed(c.api.list_resources(c.caller, BRIDGE)):
        if _split(rec.resource_id)[0] != session:
            continue
        try:
            await c.api.delete_resource(c.caller, rec.resource_id)
        except NotFound:
            continue  # deleted meanwhile
        c.state.programs.pop(rec.resource_id, None)
        removed += rec.type == "program"

    async def drop() -> dict[str, Any]:
        if not removed and c.state.sessions.pop(session, None) is None:
            return {"status": "not_found", "session_id": session}
        c.state.sessions.pop(session, None)
        return {"status": "cleaned", "session_id": session, "programs_removed": removed}

    return await c.local("cleanup_session", args, drop)


async def _get_session_data(c: _Call, args: dict[str, Any]) -> Result:
    """The data kept for a session; with ``key``, that key's value (null when unset)."""
    session = _session_id(args, required=True)
    key = _opt_str(args, "key")

    async def get() -> dict[str, Any]:
        data = c.state.sessions.get(session)
        if data is None:
            raise NotFound(f"Session not found: {session}")
        if key:
            return {"session_id": session, "key": key, "value": data.get(key)}
        return {"session_id": session, "data": data}

    return await c.local("get_session_data", args, get)


async def _update_session_data(c: _Call, args: dict[str, Any]) -> Result:
    """Merge ``data`` into what is kept for a session (a key set to null is removed)."""
    session = _session_id(args, required=True)
    update = args.get("data")
    if not isinstance(update, dict):
        raise InvalidArgument("update_session_data: 'data' must be an object of key -> value")

    async def merge() -> dict[str, Any]:
        sessions = c.state.sessions
        if session not in sessions and len(sessions) >= MAX_SESSIONS:
            raise QuotaExceeded(f"{len(sessions)} sessions hold data, the most kept per tenant; "
                                f"cleanup_session the ones that ended")
        merged = {k: v for k, v in {**sessions.get(session, {}), **update}.items() if v is not None}
        size = len(dumps(merged))
        if size > MAX_SESSION_BYTES:
            raise PayloadTooLarge(f"session {session} would hold {size} bytes of data, over the cap of "
                                  f"{MAX_SESSION_BYTES}")
        sessions[session] = merged
        return {"status": "updated", "session_id": session, "keys": sorted(merged)}

    return await c.local("update_session_data", args, merge)


_HANDLERS: dict[str, Callable[[_Call, dict[str, Any]], Awaitable[Result]]] = {
    "ping": _ping,
    "configure_lm": _configure_lm,
    "create_program": _create_program,
    "execute_program": _execute_program,
    "list_programs": _list_programs,
    "get_program_info": _get_program_info,
    "delete_program": _delete_program,
    "get_stats": _get_stats,
    "cleanup": _cleanup,
    "reset_state": _reset_state,
    "cleanup_session": _cleanup_session,
    "get_session_data": _get_session_data,
    "update_session_data": _update_session_data,
}
assert set(_HANDLERS) == LEGACY_COMMANDS


# -- helpers ---------------------------------------------------------------------------------
async def _delete_all(c: _Call) -> int:
    """Delete the tenant's dspy resources, newest first, keeping configure_lm's LM (DSPex kept its LM).

    Returns how many programs went.
    """
    programs = 0
    for rec in reversed(c.api.list_resources(c.caller, BRIDGE)):
        if rec.resource_id == LM_ID:
            continue
        try:
            await c.api.delete_resource(c.caller, rec.resource_id)
        except NotFound:
            continue  # deleted meanwhile
        programs += rec.type == "program"
    c.state.programs.clear()
    c.state.sessions.clear()
    return programs


def _entry(c: _Call, rec: ResourceRecord) -> dict[str, Any]:
    stats = c.state.programs.get(rec.resource_id) or _ProgramStats()
    config = _object(rec.config)
    return {
        "signature": stats.signature if stats.signature is not None else _signature_of(_object(rec.info)),
        "created_at": rec.created_ms / 1000,
        "execution_count": stats.execution_count,
        "last_executed": stats.last_executed,
        "program_type": stats.program_type or _PROGRAM_TYPES.get(config.get("module", "Predict"), ""),
    }


def _signature_of(info: dict[str, Any]) -> dict[str, Any]:
    """A DSPex-shaped signature from a program's info (programs made by the new API or an optimizer)."""
    sig = info.get("signature") or {}
    out: dict[str, Any] = {"inputs": [{"name": n} for n in sig.get("inputs", [])],
                           "outputs": [{"name": n} for n in sig.get("outputs", [])]}
    if sig.get("instructions"):
        out["description"] = sig["instructions"]
    return out


def _signature(spec: Any) -> Any:
    """A DSPex signature definition as a dspy bridge inline signature.

    DSPex took ``{name?, description?, inputs: [{name, description?, type?}], outputs: [...]}``;
    names may also be plain strings, and ``"a -> b"`` strings pass through.
    """
    if isinstance(spec, str) and "->" in spec:
        return spec
    if not isinstance(spec, dict):
        raise InvalidArgument("create_program: 'signature' must be {inputs: [...], outputs: [...]} or 'a -> b'")
    out: dict[str, Any] = {}
    for role in ("inputs", "outputs"):
        items = spec.get(role)
        if not isinstance(items, list) or not items:
            raise InvalidArgument(f"create_program: signature {role!r} must be a non-empty list of fields")
        out[role] = [_field(item, role) for item in items]
    description = spec.get("description")
    if isinstance(description, str) and description:
        out["instructions"] = description
    return out


def _field(item: Any, role: str) -> Any:
    if isinstance(item, str):
        return item
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidArgument(f"create_program: each signature {role[:-1]} is a name or an object with 'name'")
    desc = item.get("description")
    return {"name": item["name"], "description": desc} if isinstance(desc, str) and desc else item["name"]


def _program_ids(args: dict[str, Any]) -> tuple[str, str]:
    """(program id, resource id): the resource of a session's program carries the session in its id."""
    pid = args.get("program_id")
    if not isinstance(pid, str) or not pid:
        raise InvalidArgument("'program_id' is required (a string)")
    return pid, _resource_id(_session_id(args), pid)


def _program(c: _Call, args: dict[str, Any], rid: str) -> ResourceRecord:
    rec = c.api.find_resource(c.caller, rid)
    if rec is None or (rec.bridge, rec.type) != (BRIDGE, "program"):
        raise _program_not_found(args, _split(rid)[1])
    return rec


def _program_not_found(args: dict[str, Any], pid: str) -> NotFound:
    """DSPex's wording, which its Elixir side matches on."""
    session = _session_id(args)
    if session:
        return NotFound(f"Program not found in session {session}: {pid}")
    return NotFound(f"Program not found: {pid}")


def _session_id(args: dict[str, Any], *, required: bool = False) -> str:
    session = args.get("session_id")
    if session is None or session == "":
        if required:
            raise InvalidArgument("Session ID required: 'session_id' (a string)")
        return ""
    if not isinstance(session, str) or not _SESSION.match(session):
        raise InvalidArgument(f"'session_id' must match {_SESSION.pattern}")
    return session


def _resource_id(session: str, pid: str) -> str:
    return f"{SESSION_PREFIX}{session}:{pid}" if session else pid


def _split(rid: str) -> tuple[str, str]:
    """(session id or "", program id) of a resource id."""
    if rid.startswith(SESSION_PREFIX):
        session, sep, pid = rid[len(SESSION_PREFIX):].partition(":")
        if sep and pid:
            return session, pid
    return "", rid


def _opt_str(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{key!r} must be a string")
    return value


def _parse(command: str, data: str) -> dict[str, Any]:
    if data.strip() == "null":  # DSPex sent null for "no arguments"
        return {}
    return parse_object(data, f"args of {command}")


def _object(data: str) -> dict[str, Any]:
    value = loads_lenient(data, {})
    return value if isinstance(value, dict) else {}


def _new_id() -> str:
    return uuid.uuid4().hex
