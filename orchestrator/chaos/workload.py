"""A mixed workload through the public API, recording what every caller saw.

Each client thread loops over: ``mock:echo`` calls, a streaming ``mock:stream``,
and a small set of its own resources (``counter`` and ``journal``, the latter
kept by the orchestrator across workers) it creates, executes and deletes.
Every call is one :class:`CallRecord`: what, who, when (monotonic seconds),
and the outcome code (``OK`` or the error's code).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from runtimes.wire.errors import MLBridgeError

from ..client import MLBridge
from .targets import ChaosRefused

__all__ = ["CallRecord", "Workload", "WorkloadSpec"]

T = TypeVar("T")

#: Commands the workload needs from its bridge (a bridge running the ``mock`` runtime).
NEEDED_COMMANDS = ("mock:echo", "mock:stream")
NEEDED_TYPES = ("counter", "journal")
DEFAULT_MIX = {"echo": 0.35, "stream": 0.1, "execute": 0.35, "create": 0.1, "delete": 0.1}
MAX_LIVE = 4


@dataclass
class WorkloadSpec:
    """The load to drive while faults are injected.

    Attributes:
        clients: client threads.
        tokens: bearer tokens the threads use, round robin (None: no token).
        bridge: the bridge called; it must run the ``mock`` runtime.
        call_timeout_s: each call's deadline (the server answers DEADLINE_EXCEEDED after it).
        mix: relative weights of echo, stream, execute, create, delete.
        think_s: pause between one thread's calls.
    """

    clients: int = 8
    tokens: Sequence[str | None] = (None,)
    bridge: str = "mock"
    call_timeout_s: float = 10.0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    think_s: float = 0.0


@dataclass
class CallRecord:
    """One call the workload made and what its caller saw.

    Attributes:
        op: echo, stream, create, execute, delete (or whoami, check: outside the measured run).
        method: the public RPC (``Call``, ``CallStream``, ``CreateResource``, ...), as the audit log names it.
        tenant: the caller's tenant.
        start, end: monotonic seconds.
        code: ``OK`` or the error's code.
        transport: the error came from gRPC itself (no mlbridge error details).
        message: the error's message (first 300 characters).
        call_id, resource_id: what the audit record carries.
    """

    op: str
    method: str
    tenant: str
    start: float
    end: float = 0.0
    code: str = "OK"
    transport: bool = False
    message: str = ""
    call_id: str = ""
    resource_id: str = ""

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "method": self.method, "tenant": self.tenant, "start": self.start, "end": self.end,
                "code": self.code, "transport": self.transport, "message": self.message, "call_id": self.call_id,
                "resource_id": self.resource_id}


@dataclass
class _Live:
    rid: str
    type: str
    entries: list[str] = field(default_factory=list)


class Workload:
    """Client threads driving :class:`WorkloadSpec` against ``address`` until :meth:`stop`.

    ``records`` holds every call; ``resources`` the resources created and not
    deleted (id -> type), ``journal`` the entries each journal acknowledged.
    """

    def __init__(self, address: str, spec: WorkloadSpec, *, tls: dict[str, str | None] | None = None,
                 seed: int | None = None) -> None:
        self.address = address
        self.spec = spec
        self.tls = tls or {}
        self.run_id = uuid.uuid4().hex[:8]
        self.records: list[CallRecord] = []
        self.tenants: dict[int, str] = {}  # token index -> tenant
        self.resources: dict[str, tuple[int, str]] = {}  # live id -> (token index, type)
        self.uncertain: dict[str, tuple[int, str]] = {}  # a delete failed: it may or may not exist
        self.vanished: list[str] = []  # a delete found the resource already gone
        self.journal: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._clients: list[MLBridge] = []
        self._seed = seed
        self._counter = itertools.count()

    # -- setup -----------------------------------------------------------------------------
    def _connect(self, token: str | None) -> MLBridge:
        return MLBridge.connect(self.address, token, tls_ca=self.tls.get("ca"), tls_cert=self.tls.get("cert"),
                                tls_key=self.tls.get("key"))

    def prepare(self) -> None:
        """Connect a client per token, check the bridge serves what the workload needs and learn each tenant.

        Raises:
            ChaosRefused: the bridge is unknown or not a mock bridge, or a token is refused.
        """
        if self.spec.clients < 1:
            raise ChaosRefused("the workload needs at least one client")
        for i, token in enumerate(self.spec.tokens or (None,)):
            mb = self._connect(token)
            self._clients.append(mb)
            try:
                if i == 0:
                    names = [b["name"] for b in mb.list_bridges()]
                    if self.spec.bridge not in names:
                        raise ChaosRefused(f"unknown bridge {self.spec.bridge!r} for the workload (the orchestrator "
                                           f"serves {', '.join(sorted(names)) or 'none'})")
                    info = mb.describe(self.spec.bridge)
                    commands = {c["name"] for c in info["commands"]}
                    types = {t["name"] for t in info["resource_types"]}
                    if not set(NEEDED_COMMANDS) <= commands or not set(NEEDED_TYPES) <= types:
                        raise ChaosRefused(f"bridge {self.spec.bridge!r} does not run the mock runtime the workload "
                                           "drives (mock:echo, mock:stream, counter, journal)")
                self.tenants[i] = str(mb.call(self.spec.bridge, "mock:whoami", {},
                                              timeout=self.spec.call_timeout_s)["tenant"])
            except MLBridgeError as err:
                raise ChaosRefused(f"the workload cannot use {self.address} (token #{i + 1}): "
                                   f"{err.code}: {err.message}") from None

    # -- running ---------------------------------------------------------------------------
    def start(self) -> None:
        for n in range(self.spec.clients):
            t = threading.Thread(target=self._client_loop, args=(n,), name=f"chaos-client-{n}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after each thread's current call (waits up to ``timeout``, default the call timeout + 10 s)."""
        self._stop.set()
        deadline = time.monotonic() + (timeout if timeout is not None else self.spec.call_timeout_s + 10)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        for mb in self._clients:
            mb.close()
        self._clients.clear()

    def _record(self, rec: CallRecord, fn: Callable[[], T]) -> T | None:
        try:
            value = fn()
        except MLBridgeError as err:
            rec.end = time.monotonic()
            rec.code = err.code
            rec.transport = "grpc_status" in err.details
            rec.message = err.message[:300]
            value = None
        except Exception as exc:  # noqa: BLE001 - what the caller saw, whatever it is
            rec.end = time.monotonic()
            rec.code = f"CLIENT_ERROR:{type(exc).__name__}"
            rec.message = str(exc)[:300]
            value = None
        else:
            rec.end = time.monotonic()
        with self._lock:
            self.records.append(rec)
        return value

    def _client_loop(self, n: int) -> None:
        rng = random.Random(None if self._seed is None else self._seed * 1000 + n)
        index = n % len(self._clients)
        mb, tenant = self._clients[index], self.tenants[index]
        live: list[_Live] = []
        serial = itertools.count()
        spec = self.spec
        ops = list(spec.mix)
        weights = [spec.mix[o] for o in ops]
        while not self._stop.is_set():
            op = "create" if not live else rng.choices(ops, weights)[0]
            if op == "create" and len(live) >= MAX_LIVE:
                op = "execute"
            if op == "delete" and len(live) < 2:
                op = "echo"
            self._one(mb, index, tenant, n, op, live, serial, rng)
            if spec.think_s:
                self._stop.wait(spec.think_s)

    def _one(self, mb: MLBridge, index: int, tenant: str, n: int, op: str, live: list[_Live],
             serial: itertools.count[int], rng: random.Random) -> None:
        bridge, timeout = self.spec.bridge, self.spec.call_timeout_s
        if op == "echo":
            cid = uuid.uuid4().hex
            payload = {"client": n, "i": next(serial)}
            rec = CallRecord("echo", "Call", tenant, time.monotonic(), call_id=cid)
            got = self._record(rec, lambda: mb.call(bridge, "mock:echo", payload, call_id=cid, timeout=timeout))
            if rec.ok and got != payload:
                rec.code, rec.message = "WRONG_RESULT", f"echo returned {got!r}"[:300]
        elif op == "stream":
            cid = uuid.uuid4().hex
            rec = CallRecord("stream", "CallStream", tenant, time.monotonic(), call_id=cid)

            kinds: list[str] = []

            def stream() -> bool:
                for ev in mb.call_stream(bridge, "mock:stream", {"n": 3}, call_id=cid, timeout=timeout):
                    kinds.append(ev.kind)
                return "result" in kinds

            if self._record(rec, stream) is False:
                rec.code, rec.message = "WRONG_RESULT", "the stream ended without a result"
            elif not rec.ok:
                rec.message = f"{rec.message} (after {len(kinds)} events)"[-300:]
        elif op == "create":
            rtype = "journal" if next(self._counter) % 2 else "counter"
            rid = f"chaos-{self.run_id}-{n}-{next(serial)}"
            rec = CallRecord("create", "CreateResource", tenant, time.monotonic(), resource_id=rid)
            self._record(rec, lambda: mb.create_resource(bridge, rtype, {} if rtype == "journal" else {"start": 0},
                                                          resource_id=rid, timeout=timeout))
            if rec.ok:
                live.append(_Live(rid, rtype))
                with self._lock:
                    self.resources[rid] = (index, rtype)
                    if rtype == "journal":
                        self.journal[rid] = []
        elif op == "execute":
            res = rng.choice(live)
            cid = uuid.uuid4().hex
            entry = f"{n}-{next(serial)}"
            inputs: dict[str, Any] = {"entry": entry} if res.type == "journal" else {"add": 1}
            rec = CallRecord("execute", "ExecuteResource", tenant, time.monotonic(), call_id=cid,
                             resource_id=res.rid)
            got = self._record(rec, lambda: mb.execute_resource(res.rid, inputs, call_id=cid, timeout=timeout))
            if rec.ok and res.type == "journal":
                entries = got.get("entries") if isinstance(got, dict) else None
                if not isinstance(entries, list) or entries[-1:] != [entry]:
                    rec.code, rec.message = "WRONG_RESULT", f"journal returned {got!r}"[:300]
                else:
                    with self._lock:
                        self.journal[res.rid].append(entry)
        elif op == "delete":
            res = live.pop(rng.randrange(len(live)))
            rec = CallRecord("delete", "DeleteResource", tenant, time.monotonic(), resource_id=res.rid)
            deleted = self._record(rec, lambda: mb.delete_resource(res.rid))
            with self._lock:
                entry_ = self.resources.pop(res.rid, None)
                self.journal.pop(res.rid, None)
                if not rec.ok and entry_ is not None:
                    self.uncertain[res.rid] = entry_
                elif deleted is False:
                    self.vanished.append(res.rid)

    # -- after the run ---------------------------------------------------------------------
    def check_resources(self) -> dict[str, Any]:
        """Every resource created and not deleted must be listed and executable; journals keep their entries.

        Returns:
            ``expected``, ``listed``, ``missing`` (ids), ``not_executable`` (id -> code: message),
            ``journal_entries_lost`` (id -> entries), ``vanished_on_delete``, ``uncertain`` (a delete failed).
        """
        missing: list[str] = []
        broken: dict[str, str] = {}
        lost_entries: dict[str, list[str]] = {}
        listed = 0
        by_token: dict[int, list[tuple[str, str]]] = {}
        for rid, (index, rtype) in sorted(self.resources.items()):
            by_token.setdefault(index, []).append((rid, rtype))
        for index, items in sorted(by_token.items()):
            mb = self._clients[index]
            try:
                ids = {r["resource_id"] for r in mb.list_resources(self.spec.bridge)}
            except MLBridgeError as err:
                ids = set()
                broken["(list)"] = f"{err.code}: {err.message}"[:300]
            listed += sum(1 for rid, _ in items if rid in ids)
            for rid, rtype in items:
                if rid not in ids:
                    missing.append(rid)
                try:
                    got = mb.execute_resource(rid, {} if rtype == "journal" else {"add": 0},
                                              timeout=self.spec.call_timeout_s)
                except MLBridgeError as err:
                    broken[rid] = f"{err.code}: {err.message}"[:300]
                    continue
                if rtype == "journal":
                    have = got.get("entries") if isinstance(got, dict) else None
                    gone = [e for e in self.journal.get(rid, []) if not isinstance(have, list) or e not in have]
                    if gone:
                        lost_entries[rid] = gone
        return {"expected": len(self.resources), "listed": listed, "missing": missing, "not_executable": broken,
                "journal_entries_lost": lost_entries, "journal_entries_checked": sum(map(len, self.journal.values())),
                "vanished_on_delete": list(self.vanished), "uncertain": sorted(self.uncertain)}

    def cleanup(self) -> int:
        """Delete what the workload left (its resources, and those whose delete failed); how many went."""
        gone = 0
        for rid, (index, _) in list(self.resources.items()) + list(self.uncertain.items()):
            try:
                gone += bool(self._clients[index].delete_resource(rid))
            except MLBridgeError:
                pass
        return gone
