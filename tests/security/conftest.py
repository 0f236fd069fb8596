"""Shared fixtures of the attack suite: one hardened docker orchestrator per module.

The server runs the real orchestrator and public gRPC server (``ServerThread``)
on the docker backend with two bridges:

``custom``
    the sandbox under attack: pool of 2, small limits (:data:`LIMITS`), a
    10 s call deadline, 1 s cancel grace, small upload caps (:data:`CUSTOM_ENV`).
``mock``
    the witness: after every attack a ``mock:echo`` must still answer, and so
    must a fresh ``custom:run``.

The message cap is 1 MiB (:data:`MAX_MESSAGE_BYTES`) so oversized messages are
cheap to build. Before the server starts, :data:`HOST_MARKER_NAME` is put in
this process's environment: no worker may ever see it.

Network rule: tests only send traffic to listeners they start themselves, on
loopback or this machine's docker bridge address (:func:`docker_bridge_ipv4`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import socket
import struct
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import grpc
import pytest

from orchestrator import MLBridge
from orchestrator.errors import from_grpc_error
from orchestrator.proto import mlbridge_pb2 as pb
from orchestrator.proto import mlbridge_pb2_grpc as pb_grpc
from tests.harness import ServerThread, make_config

MIB = 1024 * 1024

#: Container limits of the custom bridge under attack.
LIMITS: dict[str, Any] = {"cpus": 1.0, "memory": "256m", "pids": 64, "nofile": 256, "tmpfs_size": "16m"}
MEMORY_LIMIT = 256 * MIB
TMPFS_BYTES = 16 * MIB
PIDS_LIMIT = 64
NOFILE = 256
CALL_TIMEOUT_S = 10.0
CANCEL_GRACE_S = 1.0
MAX_MESSAGE_BYTES = 1 * MIB
#: The custom bridge's own upload caps (``MLBRIDGE_CUSTOM_*``), small so bombs are cheap.
MAX_FILE_BYTES = 4 * MIB
MAX_UPLOAD_BYTES = 8 * MIB
MAX_UPLOAD_ENTRIES = 100
CUSTOM_ENV = {
    "MLBRIDGE_CUSTOM_MAX_FILE_BYTES": str(MAX_FILE_BYTES),
    "MLBRIDGE_CUSTOM_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
    "MLBRIDGE_CUSTOM_MAX_UPLOAD_ENTRIES": str(MAX_UPLOAD_ENTRIES),
}
#: Slack on top of deadline + grace for the orchestrator to answer (2-core machine, docker kill).
SLACK_S = 3.0
#: The runtime's uid inside every worker.
WORKER_UID = 10001

HOST_MARKER_NAME = "MLBRIDGE_TEST_HOST_MARKER"
HOST_MARKER = f"host-only-{uuid.uuid4().hex}"


def bridges(**custom_overrides: Any) -> dict[str, Any]:
    """The bridge section of the attack server's config."""
    custom = {
        "runtime": "custom",
        "pool_size": 2,
        "limits": dict(LIMITS),
        "call_timeout_s": CALL_TIMEOUT_S,
        "cancel_grace_s": CANCEL_GRACE_S,
        "start_timeout_s": 60,
        "env": dict(CUSTOM_ENV),
        **custom_overrides,
    }
    mock = {"runtime": "mock", "pool_size": 1, "limits": {"cpus": 0.5, "memory": "128m", "pids": 64},
            "call_timeout_s": 10}
    return {"custom": custom, "mock": mock}


def docker_scope(state_dir: Path) -> str:
    """The reaper scope the orchestrator derives from its state dir (see ``make_backend``)."""
    return hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:12]


def remove_scope_containers(scope: str) -> int:
    """Force-remove every container of one test server's scope (teardown safety net)."""
    removed = 0
    with contextlib.closing(docker.from_env()) as client:
        rows = client.api.containers(all=True, filters={"label": f"io.mlbridge.scope={scope}"})
        for row in rows:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.api.remove_container(row["Id"], force=True, v=True)
                removed += 1
    return removed


def docker_bridge_ipv4() -> str:
    """This machine's IPv4 address on docker0 (the default bridge's gateway)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", b"docker0"))  # SIOCGIFADDR
            return socket.inet_ntoa(packed[20:24])
    except OSError:
        with contextlib.closing(docker.from_env()) as client:
            return str(client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"])


class Sandbox:
    """A running attack server plus the helpers every attack test needs."""

    def __init__(self, srv: ServerThread, token: str | None = None, tenant: str = "default") -> None:
        self.srv = srv
        self.tenant = tenant
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.client = MLBridge.connect(srv.target, token=token)
        # A raw channel: lets a test set the server-side deadline (timeout_ms) while the
        # gRPC deadline stays long, so the orchestrator's own error comes back, and send
        # messages above the server's cap (the client cap stays at 16 MiB).
        self.channel = grpc.insecure_channel(srv.target, options=[
            ("grpc.max_receive_message_length", 16 * MIB), ("grpc.max_send_message_length", 16 * MIB)])
        self.stub = pb_grpc.MLBridgeStub(self.channel)

    def close(self) -> None:
        self.client.close()
        self.channel.close()

    # -- calls ------------------------------------------------------------------------
    def call_raw(self, bridge: str, command: str, args: dict[str, Any] | None = None, *,
                 deadline_s: float | None = None, call_id: str | None = None,
                 attachments: dict[str, bytes] | None = None, args_json: bytes | None = None,
                 grpc_timeout_s: float = 90.0) -> pb.CallReply:
        """One Call; failures raise the typed ``MLBridgeError`` the Python client would."""
        req = pb.CallRequest(bridge=bridge, command=command,
                             args_json=args_json if args_json is not None else json.dumps(args or {}).encode(),
                             attachments=attachments or {}, call_id=call_id or uuid.uuid4().hex,
                             timeout_ms=int(deadline_s * 1000) if deadline_s else 0)
        try:
            return self.stub.Call(req, timeout=grpc_timeout_s, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise from_grpc_error(exc) from None

    def call(self, bridge: str, command: str, args: dict[str, Any] | None = None, **kw: Any) -> Any:
        reply = self.call_raw(bridge, command, args, **kw)
        return json.loads(reply.result_json) if reply.result_json else None

    def run(self, code: str, inputs: dict[str, Any] | None = None, *, deadline_s: float | None = None,
            call_id: str | None = None, **extra: Any) -> dict[str, Any]:
        """``custom:run`` of ``code`` (dedented); returns the whole reply dict."""
        args = {"code": textwrap.dedent(code), "inputs": inputs or {}, **extra}
        out = self.call("custom", "custom:run", args, deadline_s=deadline_s, call_id=call_id)
        assert isinstance(out, dict)
        return out

    def result(self, code: str, inputs: dict[str, Any] | None = None, **kw: Any) -> Any:
        """``main``'s return value only."""
        return self.run(code, inputs, **kw)["result"]

    # -- workers ----------------------------------------------------------------------
    def workers(self, bridge: str = "custom") -> dict[str, dict[str, Any]]:
        """Snapshot of the pool's workers (read on the server's loop)."""
        async def snap() -> dict[str, dict[str, Any]]:
            pool = self.srv.orch.pools[bridge]
            return {wid: {"state": w.state, "tenant": w.tenant, "ref": w.handle.ref, "calls": w.calls}
                    for wid, w in pool.workers.items()}
        return self.srv.run(snap(), timeout=30)

    def tenant_worker(self, tenant: str | None = None, bridge: str = "custom") -> str | None:
        """The ready worker a tenant (this client's) has claimed (None before its first call or after a kill)."""
        tenant = tenant or self.tenant
        mine = [wid for wid, w in self.workers(bridge).items() if w["tenant"] == tenant and w["state"] == "ready"]
        assert len(mine) <= 1, mine
        return mine[0] if mine else None

    def claim(self) -> str:
        """Make sure this client's tenant holds a custom worker; return its id."""
        assert self.result("def main(i):\n    return 'claimed'") == "claimed"
        wid = self.tenant_worker()
        assert wid is not None
        return wid

    def container(self, worker_id: str) -> str:
        return str(self.workers()[worker_id]["ref"])

    def wait_gone(self, worker_id: str, timeout: float = 15.0) -> None:
        """Wait until ``worker_id`` is out of the custom pool (killed and removed)."""
        deadline = time.monotonic() + timeout
        while worker_id in self.workers():
            assert time.monotonic() < deadline, f"worker {worker_id} is still in the pool"
            time.sleep(0.05)

    def assert_serving(self) -> str:
        """The witness: mock answers, a fresh custom:run returns a value. Returns the custom worker."""
        token = uuid.uuid4().hex
        assert self.call("mock", "mock:echo", {"token": token}) == {"token": token}
        got = self.result("def main(inputs):\n    return {'sum': inputs['a'] + inputs['b'], 't': inputs['t']}",
                          {"a": 2, "b": 3, "t": token})
        assert got == {"sum": 5, "t": token}
        wid = self.tenant_worker()
        assert wid is not None and self.workers()[wid]["state"] == "ready"
        return wid


@contextlib.contextmanager
def attack_server(tmp: Path, **fields: Any) -> Iterator[ServerThread]:
    """A docker-backed ServerThread with the attack bridges; the host marker is in our env meanwhile.

    ``fields`` are extra top-level config fields (e.g. ``policy``). Every container of
    the server's scope is force-removed afterwards, whatever happened.
    """
    cfg = make_config(tmp, backend="docker", default_bridge="mock", max_message_bytes=MAX_MESSAGE_BYTES,
                      bridges=bridges(), **fields)
    scope = docker_scope(cfg.state_dir)
    mp = pytest.MonkeyPatch()
    mp.setenv(HOST_MARKER_NAME, HOST_MARKER)
    try:
        with ServerThread(cfg) as srv:
            yield srv
    finally:
        mp.undo()
        remove_scope_containers(scope)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """The module's attack server (docker backend, no policy: one tenant, "default")."""
    with attack_server(tmp_path_factory.mktemp("security")) as srv:
        box = Sandbox(srv)
        try:
            yield box
        finally:
            box.close()
