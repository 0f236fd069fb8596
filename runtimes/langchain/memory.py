"""The ``memory`` resource: conversation threads an agent checkpoints into, kept by the orchestrator.

An agent given ``memory: <id>`` uses this resource's LangGraph checkpointer
(``InMemorySaver``), keyed by ``config.thread_id``. After each turn the agent
names this resource with ``ctx.save_state``, so :meth:`MemoryResource.snapshot`
(the latest checkpoint of every thread) travels to the orchestrator, which
stores it before the reply reaches the client. When the worker dies, the
resource is re-created on the tenant's next worker and :meth:`restore` puts
the checkpoints back: a conversation loses no finished turn. A turn that
fails is rolled back here (:meth:`rollback`), so the thread is as it was
before that turn, in the worker and in the orchestrator alike.

Checkpoints are LangGraph's own serialisation (msgpack), base64 in JSON.
Snapshots hold one checkpoint per thread and namespace (the latest), so their
size follows the conversations, not the number of steps.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from runtimes.core import CallContext, InvalidArgument

from .base import LCResource
from .jsonify import message_json

__all__ = ["MemoryResource"]

STATE_VERSION = 1
DEFAULT_MAX_THREADS = 1000


class MemoryResource(LCResource):
    type_name = "memory"
    description = ("Conversation threads (by config.thread_id) an agent keeps its checkpoints in; kept by "
                   "the orchestrator after every turn. Execute: {action: get|list|clear, thread_id}")
    config_schema = {
        "type": "object",
        "properties": {"max_threads": {"type": "integer", "description": f"default {DEFAULT_MAX_THREADS}"}},
        "additionalProperties": False,
    }

    def create(self, ctx: CallContext) -> None:
        from langgraph.checkpoint.memory import InMemorySaver

        self.max_threads = self.config.get("max_threads", DEFAULT_MAX_THREADS)
        if not isinstance(self.max_threads, int) or self.max_threads < 1:
            raise InvalidArgument("memory max_threads must be a positive integer")
        self.saver = InMemorySaver()
        self._lock = threading.Lock()  # guards the thread locks, exports and imports
        self._threads: dict[str, threading.Lock] = {}

    # -- turns -----------------------------------------------------------------------------
    @contextmanager
    def holding(self, ctx: CallContext, thread_id: str) -> Iterator[None]:
        """One turn at a time per thread; waiting honours the call's cancellation and deadline."""
        with self._lock:
            if not self.has(thread_id) and len(self.thread_ids()) >= self.max_threads:
                raise InvalidArgument(f"memory {self.resource_id!r} holds {self.max_threads} threads, its "
                                      f"max_threads; clear some ({{action: clear, thread_id}})")
            lock = self._threads.setdefault(thread_id, threading.Lock())
        while not lock.acquire(timeout=0.05):
            ctx.check()
        try:
            yield
        finally:
            lock.release()

    def export_thread(self, thread_id: str) -> dict[str, Any] | None:
        """The thread's latest checkpoint per namespace (JSON), or None for an empty thread."""
        with self._lock:
            namespaces = list(self.saver.storage.get(thread_id, {}))
            out = {}
            for ns in namespaces:
                tup = self.saver.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}})
                if tup is not None:
                    out[ns] = {"checkpoint": _dump(self.saver, tup.checkpoint), "metadata": _dump(self.saver, tup.metadata)}
        return out or None

    def import_thread(self, thread_id: str, state: dict[str, Any] | None) -> None:
        """Make ``state`` (from :meth:`export_thread`) the thread's whole history."""
        with self._lock:
            self.saver.delete_thread(thread_id)
            for ns, item in (state or {}).items():
                checkpoint = _load(self.saver, item["checkpoint"])
                metadata = _load(self.saver, item["metadata"])
                config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}}
                self.saver.put(config, checkpoint, metadata, checkpoint["channel_versions"])

    rollback = import_thread

    def thread_ids(self) -> list[str]:
        """Threads with at least one checkpoint (the saver's dicts also hold empty ones)."""
        return sorted(tid for tid, spaces in list(self.saver.storage.items()) if any(spaces.values()))

    def has(self, thread_id: str) -> bool:
        return any(self.saver.storage[thread_id].values()) if thread_id in self.saver.storage else False

    def messages(self, thread_id: str) -> list[Any]:
        if not self.has(thread_id):
            return []
        tup = self.saver.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
        return list(tup.checkpoint["channel_values"].get("messages", [])) if tup is not None else []

    # -- the orchestrator's copy --------------------------------------------------------------
    def snapshot(self) -> Any:
        threads = {tid: state for tid in self.thread_ids() if (state := self.export_thread(tid))}
        return {"version": STATE_VERSION, "threads": threads}

    def restore(self, ctx: CallContext, state: Any) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise InvalidArgument(f"memory {self.resource_id!r}: kept state has an unknown format")
        for tid, thread in state.get("threads", {}).items():
            self.import_thread(tid, thread)

    # -- execute: read or clear threads ----------------------------------------------------------
    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> Any:
        action, tid = inputs.get("action", "get"), inputs.get("thread_id")
        if set(inputs) - {"action", "thread_id"}:
            raise InvalidArgument("memory takes {action: get|list|clear, thread_id}")
        if action == "list":
            return {"threads": self.thread_ids()}
        if not isinstance(tid, str) or not tid:
            raise InvalidArgument(f"memory action {action!r} needs a thread_id")
        if action == "get":
            return {"thread_id": tid, "messages": [message_json(m) for m in self.messages(tid)]}
        if action == "clear":
            with self.holding(ctx, tid):
                existed = self.has(tid)
                self.import_thread(tid, None)
            return {"thread_id": tid, "cleared": existed}
        raise InvalidArgument(f"memory action must be get, list or clear, not {action!r}")

    def info(self) -> dict[str, Any]:
        return {"threads": len(self.thread_ids()) if hasattr(self, "saver") else 0,
                "max_threads": getattr(self, "max_threads", DEFAULT_MAX_THREADS)}


def _dump(saver: Any, value: Any) -> list[str]:
    kind, data = saver.serde.dumps_typed(value)
    return [kind, base64.b64encode(data).decode("ascii")]


def _load(saver: Any, item: Any) -> Any:
    if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
        raise InvalidArgument("memory: a kept checkpoint is malformed")
    return saver.serde.loads_typed((item[0], base64.b64decode(item[1])))
