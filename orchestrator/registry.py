"""Resource specs in SQLite, so resources outlive the worker that holds them.

Each resource is (tenant, resource_id) -> bridge, type, config. The worker
currently holding it is kept in memory only: after a worker (or the whole
orchestrator) dies, the next use re-creates the resource from its spec.
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    tenant TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    bridge TEXT NOT NULL,
    type TEXT NOT NULL,
    config BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    info BLOB NOT NULL DEFAULT x'',
    state BLOB NOT NULL DEFAULT x'',
    PRIMARY KEY (tenant, resource_id)
);
CREATE TABLE IF NOT EXISTS replay (
    tenant TEXT NOT NULL,
    bridge TEXT NOT NULL,
    key TEXT NOT NULL,
    command TEXT NOT NULL,
    args BLOB NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (tenant, bridge, key)
);
"""


@dataclass
class ResourceRecord:
    """A resource's spec: its config and info are JSON text."""

    tenant: str
    resource_id: str
    bridge: str
    type: str
    config: str
    created_ms: int
    info: str = ""
    worker_id: str = ""  # in memory only
    state: str = ""  # the resource's last snapshot (JSON), "" for none


def _text(value: str | bytes) -> str:
    """JSON columns hold text; databases written before payloads were text hold UTF-8 bytes."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


class Registry:
    """Thread-safe store of resource specs; an in-memory mirror serves reads."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(resources)")}
        if "state" not in columns:  # a database from before resources had kept state
            self._db.execute("ALTER TABLE resources ADD COLUMN state BLOB NOT NULL DEFAULT x''")
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], ResourceRecord] = {}
        for row in self._db.execute(
            "SELECT tenant, resource_id, bridge, type, config, created_ms, info, state FROM resources"
        ):
            tenant, rid, bridge, type_, config, created_ms, info, state = row
            rec = ResourceRecord(tenant, rid, bridge, type_, _text(config), created_ms, _text(info),
                                 state=_text(state))
            self._cache[(rec.tenant, rec.resource_id)] = rec

    def add(self, tenant: str, resource_id: str, bridge: str, type_: str, config: str,
            info: str = "", worker_id: str = "") -> ResourceRecord:
        rec = ResourceRecord(tenant, resource_id, bridge, type_, config, int(time.time() * 1000), info, worker_id)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO resources (tenant, resource_id, bridge, type, config, created_ms, info) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (tenant, resource_id, bridge, type_, config, rec.created_ms, info),
            )
            self._cache[(tenant, resource_id)] = rec
        return rec

    def get(self, tenant: str, resource_id: str) -> ResourceRecord | None:
        return self._cache.get((tenant, resource_id))

    def exists(self, tenant: str, resource_id: str) -> bool:
        return (tenant, resource_id) in self._cache

    def set_state(self, tenant: str, resource_id: str, state: str) -> bool:
        """Keep a resource's latest snapshot (JSON), durably; False when there is no such resource."""
        with self._lock:
            rec = self._cache.get((tenant, resource_id))
            if rec is None:
                return False
            self._db.execute("UPDATE resources SET state = ? WHERE tenant = ? AND resource_id = ?",
                             (state, tenant, resource_id))
            rec.state = state
            return True

    def remove(self, tenant: str, resource_id: str) -> bool:
        with self._lock:
            self._db.execute("DELETE FROM resources WHERE tenant = ? AND resource_id = ?", (tenant, resource_id))
            return self._cache.pop((tenant, resource_id), None) is not None

    def list(self, tenant: str, bridge: str = "", type_: str = "") -> list[ResourceRecord]:
        return sorted(
            (r for r in self._cache.values()
             if r.tenant == tenant and (not bridge or r.bridge == bridge) and (not type_ or r.type == type_)),
            key=lambda r: (r.created_ms, r.resource_id),
        )

    def count(self, tenant: str) -> int:
        return sum(1 for r in self._cache.values() if r.tenant == tenant)

    def total(self) -> int:
        return len(self._cache)

    def by_bridge(self) -> dict[str, int]:
        """Resources held per bridge (read from any thread: a snapshot of the cache)."""
        out: dict[str, int] = {}
        for rec in builtins.list(self._cache.values()):
            out[rec.bridge] = out.get(rec.bridge, 0) + 1
        return out

    def on_worker(self, worker_id: str) -> builtins.list[ResourceRecord]:
        return [r for r in self._cache.values() if r.worker_id == worker_id]

    # -- calls replayed on every worker a tenant claims later ----------------------
    def set_replay(self, tenant: str, bridge: str, key: str, command: str, args: str) -> None:
        with self._lock:
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM replay").fetchone()[0]
            self._db.execute("INSERT OR REPLACE INTO replay VALUES (?, ?, ?, ?, ?, ?)",
                             (tenant, bridge, key, command, args, seq))

    def clear_replay(self, tenant: str, bridge: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM replay WHERE tenant = ? AND bridge = ?", (tenant, bridge))

    def replays(self, tenant: str, bridge: str) -> builtins.list[tuple[str, str]]:
        with self._lock:
            return [(c, _text(a)) for c, a in self._db.execute(
                "SELECT command, args FROM replay WHERE tenant = ? AND bridge = ? ORDER BY seq", (tenant, bridge))]

    def close(self) -> None:
        with self._lock:
            self._db.close()
