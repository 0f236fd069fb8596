"""The kubernetes backend against the official client with its HTTP layer replaced: the exact requests.

No cluster here. :class:`FakeApiServer` stands in for urllib3's pool manager
under a real ``kubernetes.client.ApiClient``, so every request goes through
the client's own API objects, serialisation and ``watch.Watch``; it keeps the
objects it was sent, answers reads and label-selected lists from them, and
plays scripted watch events. The tests assert method, path, query and body of
each request, and that the Role in deploy/kubernetes/rbac.yaml grants every
one of them.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import urllib3
import yaml
from kubernetes import client as k8s

from orchestrator.backends.base import WorkerSpec
from orchestrator.backends.kubernetes import KubernetesBackend
from orchestrator.backends.kubernetes.api import MERGE_PATCH
from orchestrator.backends.kubernetes.render import WorkerObjects, render_worker
from orchestrator.backends.kubernetes.settings import load_settings
from orchestrator.backends.tls import WORKER_PORT, TcpMtlsChannel, WorkerCA, WorkerCredentials
from orchestrator.config import BridgeConfig, Config
from runtimes.wire.errors import ConfigError, Unavailable

ROOT = Path(__file__).resolve().parents[2]
NS = "mlbridge"
DIGEST = "sha256:" + "ab" * 32
IMAGE = f"registry.example.com/mlbridge/mock@{DIGEST}"
CORE = f"/api/v1/namespaces/{NS}"
NET = f"/apis/networking.k8s.io/v1/namespaces/{NS}"
MIB = 1024 * 1024


class _Body(io.BytesIO):
    """A response body urllib3 sees as closed once read (as a socket's is at end of stream)."""

    def isclosed(self) -> bool:
        return self.closed or self.tell() >= len(self.getbuffer())


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    content_type: str | None


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (selector or "").split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value:
                return False
        elif term not in labels:
            return False
    return True


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = json.loads(json.dumps(value))
    return target


class FakeApiServer:
    """urllib3's pool manager for a ``kubernetes.client.ApiClient``: records requests, keeps objects."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}  # (resource, name) -> object
        self.rv = 100
        #: pod name -> events the next watch of it plays: (type, status patch or None for DELETED)
        self.watch_script: dict[str, list[tuple[str, dict[str, Any] | None]]] = {}
        #: (method, resource) -> (status, message): answer with an error instead
        self.fail: dict[tuple[str, str], tuple[int, str]] = {}
        self.created_rv: dict[str, str] = {}
        self.lock = threading.Lock()
        cfg = k8s.Configuration(host="https://k8s.test")
        self.client = k8s.ApiClient(cfg)
        self.client.rest_client.pool_manager = self

    # -- urllib3.PoolManager's surface ---------------------------------------------------
    def request(self, method: str, url: str, body: Any = None, fields: Any = None, timeout: Any = None,
                headers: dict[str, str] | None = None, preload_content: bool = True, **_: Any) -> urllib3.HTTPResponse:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        data = json.loads(body) if body else None
        with self.lock:
            req = Request(method, parts.path, query, data, (headers or {}).get("Content-Type"))
            self.requests.append(req)
            status, payload = self._serve(req)
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return urllib3.HTTPResponse(body=_Body(raw), status=status, preload_content=False, reason="X",
                                    headers={"content-type": "application/json"})

    def clear(self) -> None:
        pass

    # -- the API server ------------------------------------------------------------------
    def _serve(self, req: Request) -> tuple[int, Any]:
        parts = req.path.strip("/").split("/")
        base = 4 if parts[0] == "api" else 5  # api/v1/namespaces/ns | apis/group/v1/namespaces/ns
        resource = parts[base]
        name = parts[base + 1] if len(parts) > base + 1 else None
        sub = parts[base + 2] if len(parts) > base + 2 else None
        if (req.method, resource) in self.fail:
            code, message = self.fail[(req.method, resource)]
            return code, {"kind": "Status", "status": "Failure", "code": code, "message": message}
        self.rv += 1
        key = (resource, name or "")
        if req.method == "POST":
            obj = json.loads(json.dumps(req.body))
            obj["metadata"].update(uid=str(uuid.uuid4()), resourceVersion=str(self.rv))
            self.created_rv[obj["metadata"]["name"]] = str(self.rv)
            if resource == "pods":
                obj["status"] = {"phase": "Pending"}
            self.objects[(resource, obj["metadata"]["name"])] = obj
            return 201, obj
        if req.method == "GET" and sub == "log":
            return (200, b"line 1\nline 2\n") if key in self.objects else self._missing(name)
        if req.method == "GET" and name is None and req.query.get("watch") == "true":
            return 200, self._watch(req.query)
        if req.method == "GET" and name is None:
            items = [o for (r, _), o in self.objects.items()
                     if r == resource and _matches(o["metadata"].get("labels") or {}, req.query.get("labelSelector", ""))]
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.rv)},
                         "items": items}
        if req.method == "GET":
            return (200, self.objects[key]) if key in self.objects else self._missing(name)
        if req.method == "PATCH":
            if key not in self.objects:
                return self._missing(name)
            obj = _merge(self.objects[key], req.body)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            return 200, obj
        if req.method == "DELETE" and name is None:
            selector = req.query.get("labelSelector", "")
            for k in [k for k, o in self.objects.items()
                      if k[0] == resource and _matches(o["metadata"].get("labels") or {}, selector)]:
                del self.objects[k]
            return 200, {"kind": "Status", "status": "Success"}
        if req.method == "DELETE":
            if key not in self.objects:
                return self._missing(name)
            return 200, self.objects.pop(key)
        raise AssertionError(f"unexpected request {req}")

    def _missing(self, name: str | None) -> tuple[int, Any]:
        return 404, {"kind": "Status", "status": "Failure", "code": 404, "reason": "NotFound",
                     "message": f"{name} not found"}

    def _watch(self, query: dict[str, str]) -> bytes:
        name = query["fieldSelector"].split("=", 1)[1]
        script = self.watch_script.pop(name, [])
        if not script:
            time.sleep(0.05)  # a quiet watch: the server would hold it open until timeoutSeconds
        lines = []
        for i, (kind, status) in enumerate(script):
            if kind == "ERROR":  # the watch expired: the rest of the script plays on the next watch
                lines.append(json.dumps({"type": "ERROR", "object": {
                    "kind": "Status", "status": "Failure", "code": 410, "reason": "Expired",
                    "message": "too old resource version"}}))
                self.watch_script[name] = script[i + 1:]
                if ("pods", name) in self.objects:  # it changed meanwhile: a read sees a newer version
                    self.objects[("pods", name)]["metadata"]["resourceVersion"] = str(self.rv)
                break
            obj = json.loads(json.dumps(self.objects.get(("pods", name)) or {"metadata": {"name": name}}))
            self.rv += 1
            obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
            if status is not None:
                obj["status"] = status
            if kind == "DELETED":
                self.objects.pop(("pods", name), None)
            lines.append(json.dumps({"type": kind, "object": obj}))
        return ("\n".join(lines) + "\n").encode() if lines else b""

    def pop(self) -> list[Request]:
        out, self.requests = self.requests, []
        return out


def running(ip: str = "10.1.2.3") -> dict[str, Any]:
    return {"phase": "Running", "podIP": ip, "containerStatuses": [
        {"name": "runtime", "ready": False, "restartCount": 0, "image": IMAGE, "imageID": IMAGE,
         "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}]}


def terminated(code: int, reason: str) -> dict[str, Any]:
    return {"phase": "Failed", "podIP": "10.1.2.3", "containerStatuses": [
        {"name": "runtime", "ready": False, "restartCount": 0, "image": IMAGE, "imageID": IMAGE,
         "state": {"terminated": {"exitCode": code, "reason": reason}}}]}


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"phase": "Pending", "containerStatuses": [
        {"name": "runtime", "ready": False, "restartCount": 0, "image": IMAGE, "imageID": "",
         "state": {"waiting": {"reason": reason, "message": message}}}]}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> WorkerCA:
    return WorkerCA(tmp_path_factory.mktemp("k8s") / "ca")


@pytest.fixture
def server() -> FakeApiServer:
    return FakeApiServer()


def make_backend(server: FakeApiServer, ca: WorkerCA, **options: Any) -> tuple[KubernetesBackend, WorkerCredentials]:
    settings = load_settings({"namespace": NS, "images": {"mock": IMAGE}, **options})
    backend = KubernetesBackend(settings, ca_dir=ca.directory, scope="s1", api_client=server.client)
    backend._ca = ca
    return backend, ca.issue("mock-0123456789")


def spec(**limits: Any) -> WorkerSpec:
    return WorkerSpec(worker_id="mock-0123456789", bridge="mock", orchestrator_id="orch00000001",
                      config=BridgeConfig(runtime="mock", start_timeout_s=5, limits=limits), max_message_bytes=4 * MIB)


def expected(backend: KubernetesBackend, creds: WorkerCredentials, worker: WorkerSpec) -> WorkerObjects:
    return render_worker(worker, backend.settings, image=IMAGE, credentials=creds, scope="s1")


def start(backend: KubernetesBackend, server: FakeApiServer, creds: WorkerCredentials,
          monkeypatch: pytest.MonkeyPatch, worker: WorkerSpec | None = None) -> Any:
    monkeypatch.setattr(backend.ca, "issue", lambda worker_id, **_: creds)
    server.watch_script["mlbridge-mock-0123456789"] = [("MODIFIED", {"phase": "Pending", "podIP": "10.1.2.3"}),
                                                       ("MODIFIED", running())]
    return asyncio.run(backend.start(worker or spec()))


def test_start_creates_secret_policy_pod_owns_them_and_watches_for_the_address(
        server: FakeApiServer, ca: WorkerCA, monkeypatch: pytest.MonkeyPatch) -> None:
    backend, creds = make_backend(server, ca)
    handle = start(backend, server, creds, monkeypatch)
    objects = expected(backend, creds, spec())
    name = objects.name
    reqs = server.pop()
    assert [(r.method, r.path) for r in reqs] == [
        ("POST", f"{CORE}/secrets"),
        ("POST", f"{NET}/networkpolicies"),
        ("POST", f"{CORE}/pods"),
        ("PATCH", f"{CORE}/secrets/{name}-tls"),
        ("PATCH", f"{NET}/networkpolicies/{name}"),
        ("GET", f"{CORE}/pods"),
    ]
    # The bodies are exactly what render_worker renders (nothing the client's models dropped or added).
    assert reqs[0].body == objects.secret
    assert reqs[1].body == objects.network_policy
    assert reqs[2].body == objects.pod
    uid = server.objects[("pods", name)]["metadata"]["uid"]
    owner = {"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}]}}
    assert reqs[3].body == owner and reqs[4].body == owner
    assert reqs[3].content_type == reqs[4].content_type == MERGE_PATCH
    watch = reqs[5]
    assert watch.query["watch"] == "true"
    assert watch.query["fieldSelector"] == f"metadata.name={name}"
    # From the version the create answered with: no change after it is missed, none before it replayed.
    assert watch.query["resourceVersion"] == server.created_rv[name]
    assert 1 <= int(watch.query["timeoutSeconds"]) <= 5
    # The channel: mutual TLS to the pod IP, checking that worker's certificate name.
    assert isinstance(handle.channel, TcpMtlsChannel)
    assert (handle.channel.host, handle.channel.port) == ("10.1.2.3", WORKER_PORT)
    assert handle.channel.server_name == creds.server_name == "mock-0123456789.workers.mlbridge"
    assert handle.channel.credentials is ca.client_credentials()
    assert handle.ref == name and handle.image_id == IMAGE and handle.backend == "kubernetes"
    asyncio.run(backend.close())


def test_an_expired_watch_resumes_from_a_fresh_read(server: FakeApiServer, ca: WorkerCA,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    backend, creds = make_backend(server, ca)
    monkeypatch.setattr(backend.ca, "issue", lambda worker_id, **_: creds)
    name = "mlbridge-mock-0123456789"
    server.watch_script[name] = [("ERROR", None), ("MODIFIED", running("10.9.9.9"))]
    handle = asyncio.run(backend.start(spec()))
    reqs = server.pop()[5:]
    assert [(r.method, r.path, r.query.get("watch")) for r in reqs] == [
        ("GET", f"{CORE}/pods", "true"), ("GET", f"{CORE}/pods/{name}", None), ("GET", f"{CORE}/pods", "true")]
    assert reqs[2].query["resourceVersion"] != reqs[0].query["resourceVersion"]  # from the fresh read
    assert isinstance(handle.channel, TcpMtlsChannel) and handle.channel.host == "10.9.9.9"


def test_a_pod_that_cannot_pull_its_image_fails_the_start_and_is_removed(
        server: FakeApiServer, ca: WorkerCA, monkeypatch: pytest.MonkeyPatch) -> None:
    backend, creds = make_backend(server, ca)
    monkeypatch.setattr(backend.ca, "issue", lambda worker_id, **_: creds)
    name = "mlbridge-mock-0123456789"
    server.watch_script[name] = [("MODIFIED", waiting("ErrImagePull")),
                                 ("MODIFIED", waiting("ImagePullBackOff", "Back-off pulling image"))]
    with pytest.raises(Unavailable, match="did not start: could not run: ImagePullBackOff: Back-off pulling"):
        asyncio.run(backend.start(spec()))
    tail = [(r.method, r.path, r.query.get("gracePeriodSeconds")) for r in server.pop()[-3:]]
    assert tail == [("DELETE", f"{CORE}/pods/{name}", "0"), ("DELETE", f"{CORE}/secrets/{name}-tls", None),
                    ("DELETE", f"{NET}/networkpolicies/{name}", None)]
    assert server.objects == {}


def test_a_runtime_that_exits_at_once_fails_the_start_with_its_last_output(
        server: FakeApiServer, ca: WorkerCA, monkeypatch: pytest.MonkeyPatch) -> None:
    backend, creds = make_backend(server, ca)
    monkeypatch.setattr(backend.ca, "issue", lambda worker_id, **_: creds)
    crashed = terminated(2, "Error")
    crashed["containerStatuses"][0]["state"]["terminated"]["message"] = \
        "Traceback ...\nmlbridge runtime: FAILED_PRECONDITION: tls directory /run/mlbridge/tls: cannot read worker.key"
    server.watch_script["mlbridge-mock-0123456789"] = [("MODIFIED", crashed)]
    with pytest.raises(Unavailable, match=r"did not start: exited with code 2; its last output:\nTraceback"
                                          r" \.\.\.\nmlbridge runtime: FAILED_PRECONDITION: tls directory"):
        asyncio.run(backend.start(spec()))
    assert server.objects == {}


def test_a_pod_that_never_runs_times_out_with_the_reason(server: FakeApiServer, ca: WorkerCA,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    backend, creds = make_backend(server, ca)
    monkeypatch.setattr(backend.ca, "issue", lambda worker_id, **_: creds)
    worker = WorkerSpec(worker_id="mock-0123456789", bridge="mock", orchestrator_id="orch00000001",
                        config=BridgeConfig(runtime="mock", start_timeout_s=0.3), max_message_bytes=4 * MIB)
    server.watch_script["mlbridge-mock-0123456789"] = [("MODIFIED", {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]})]
    with pytest.raises(Unavailable, match=r"did not run within 0.3s: PodScheduled: Unschedulable: 0/3 nodes"):
        asyncio.run(backend.start(worker))
    assert server.objects == {}


def test_mark_tenant_relabels_the_claimed_pod(server: FakeApiServer, ca: WorkerCA,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    backend, creds = make_backend(server, ca)
    handle = start(backend, server, creds, monkeypatch)
    server.pop()
    asyncio.run(backend.mark_tenant(handle, "acme"))
    (req,) = server.pop()
    assert (req.method, req.path, req.content_type) == ("PATCH", f"{CORE}/pods/{handle.ref}", MERGE_PATCH)
    assert req.body == {"metadata": {"labels": {"io.mlbridge.tenant": "acme"},
                                     "annotations": {"io.mlbridge.tenant": "acme"}}}
    assert server.objects[("pods", handle.ref)]["metadata"]["labels"]["io.mlbridge.tenant"] == "acme"
    # A tenant name that is no label value keeps a readable, unique label and the exact annotation.
    asyncio.run(backend.mark_tenant(handle, "team a/b"))
    labels = server.pop()[0].body["metadata"]
    assert labels["annotations"]["io.mlbridge.tenant"] == "team a/b"
    assert labels["labels"]["io.mlbridge.tenant"].startswith("team-a-b-")


def test_stop_deletes_with_grace_watches_the_end_then_removes_secret_and_policy(
        server: FakeApiServer, ca: WorkerCA, monkeypatch: pytest.MonkeyPatch) -> None:
    backend, creds = make_backend(server, ca)
    handle = start(backend, server, creds, monkeypatch)
    server.pop()
    name = handle.ref
    server.objects[("pods", name)]["status"] = running()
    server.watch_script[name] = [("MODIFIED", terminated(143, "Error")), ("DELETED", terminated(143, "Error"))]
    asyncio.run(backend.stop(handle, timeout=7))
    reqs = server.pop()
    assert [(r.method, r.path) for r in reqs] == [
        ("GET", f"{CORE}/pods/{name}"),
        ("DELETE", f"{CORE}/pods/{name}"),
        ("GET", f"{CORE}/pods"),  # the watch
        ("DELETE", f"{CORE}/pods/{name}"),
        ("DELETE", f"{CORE}/secrets/{name}-tls"),
        ("DELETE", f"{NET}/networkpolicies/{name}"),
    ]
    assert reqs[1].query == {"gracePeriodSeconds": "7", "propagationPolicy": "Background"}
    assert reqs[2].query["watch"] == "true" and reqs[2].query["fieldSelector"] == f"metadata.name={name}"
    assert reqs[3].query["gracePeriodSeconds"] == "0"
    info = asyncio.run(backend.exit_info(handle))
    assert info is not None and info.exit_code == 143 and info.reason == "stopped by mlbridge (exit code 143)"
    assert server.pop() == []  # remembered: no request after the pod is gone
    assert server.objects == {}


def test_kill_deletes_at_once(server: FakeApiServer, ca: WorkerCA, monkeypatch: pytest.MonkeyPatch) -> None:
    backend, creds = make_backend(server, ca)
    handle = start(backend, server, creds, monkeypatch)
    server.pop()
    server.objects[("pods", handle.ref)]["status"] = running()
    server.watch_script[handle.ref] = [("DELETED", terminated(137, "Error"))]
    asyncio.run(backend.stop(handle, kill=True))
    assert server.pop()[1].query["gracePeriodSeconds"] == "0"
    info = asyncio.run(backend.exit_info(handle))
    assert info is not None and not info.oom_killed and info.reason == "killed by mlbridge (exit code 137)"


def test_exit_info_reads_an_oom_kill_from_the_terminated_state(server: FakeApiServer, ca: WorkerCA,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    backend, creds = make_backend(server, ca)
    handle = start(backend, server, creds, monkeypatch)
    server.pop()
    assert asyncio.run(backend.exit_info(handle)) is None  # created, not running yet: no exit
    server.objects[("pods", handle.ref)]["status"] = running()
    assert asyncio.run(backend.exit_info(handle)) is None
    server.objects[("pods", handle.ref)]["status"] = terminated(137, "OOMKilled")
    info = asyncio.run(backend.exit_info(handle))
    assert [(r.method, r.path) for r in server.pop()] == [("GET", f"{CORE}/pods/{handle.ref}")] * 3
    assert info is not None and info.oom_killed and info.cause == "oom"
    assert info.memory_limit == 512 * MIB
    assert info.describe() == "killed for running out of memory (limit 512 MiB)"
    del server.objects[("pods", handle.ref)]
    gone = asyncio.run(backend.exit_info(handle))
    assert gone is not None and gone.reason == "pod was removed"


def test_list_and_reap_select_by_label(server: FakeApiServer, ca: WorkerCA,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    backend, creds = make_backend(server, ca)
    handle = start(backend, server, creds, monkeypatch)
    # What a dead orchestrator (same scope) left: a pod, and a secret and policy whose pod it never made.
    old = spec()
    old.worker_id, old.orchestrator_id = "mock-dead000001", "orch0000dead"
    left = render_worker(old, backend.settings, image=IMAGE, credentials=creds, scope="s1")
    other_scope = render_worker(old, backend.settings, image=IMAGE, credentials=creds, scope="s2")
    for obj, resource in ((left.pod, "pods"), (left.secret, "secrets"), (left.network_policy, "networkpolicies")):
        server.objects[(resource, obj["metadata"]["name"])] = json.loads(json.dumps(obj))
    server.objects[("pods", "foreign")] = json.loads(json.dumps(other_scope.pod))
    server.pop()

    rows = asyncio.run(backend.list({"io.mlbridge.bridge": "mock"}))
    (req,) = server.pop()
    assert (req.method, req.path) == ("GET", f"{CORE}/pods")
    assert req.query["labelSelector"] == "io.mlbridge.orchestrator,io.mlbridge.bridge=mock,io.mlbridge.scope=s1"
    assert sorted(r["name"] for r in rows) == sorted([handle.ref, left.name])

    assert asyncio.run(backend.reap("orch00000001")) == 1
    selector = "io.mlbridge.orchestrator,io.mlbridge.orchestrator!=orch00000001,io.mlbridge.scope=s1"
    reqs = server.pop()
    assert [(r.method, r.path, r.query.get("labelSelector"), r.query.get("gracePeriodSeconds")) for r in reqs] == [
        ("GET", f"{CORE}/pods", selector, None),
        ("DELETE", f"{CORE}/pods/{left.name}", None, "0"),
        ("DELETE", f"{CORE}/secrets", selector, None),
        ("DELETE", f"{NET}/networkpolicies", selector, None),
    ]
    remaining = {k for k in server.objects}
    assert ("pods", handle.ref) in remaining and ("pods", "foreign") in remaining
    assert ("secrets", f"{left.name}-tls") not in remaining and ("networkpolicies", left.name) not in remaining
    assert ("secrets", f"{handle.ref}-tls") in remaining and ("networkpolicies", handle.ref) in remaining


def test_egress_lets_a_claimed_worker_reach_the_proxy_port_alone(
        server: FakeApiServer, ca: WorkerCA, monkeypatch: pytest.MonkeyPatch) -> None:
    backend, creds = make_backend(server, ca)
    handle = start(backend, server, creds, monkeypatch)
    server.pop()
    monkeypatch.delenv("MLBRIDGE_POD_IP", raising=False)
    with pytest.raises(ConfigError, match="MLBRIDGE_POD_IP from the downward API"):
        asyncio.run(backend.open_egress())
    monkeypatch.setenv("MLBRIDGE_POD_IP", "10.0.0.9")
    assert asyncio.run(backend.open_egress()) == "10.0.0.9"
    asyncio.run(backend.guard_egress(41234))
    assert asyncio.run(backend.connect_egress(handle)) == "10.1.2.3"
    (req,) = server.pop()
    assert (req.method, req.path, req.content_type) == ("PATCH", f"{NET}/networkpolicies/{handle.ref}", MERGE_PATCH)
    assert req.body == {"spec": {"egress": [{
        "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlbridge-orchestrator"}}}],
        "ports": [{"protocol": "TCP", "port": 41234}]}]}}


def test_log_tail_reads_the_runtime_container(server: FakeApiServer, ca: WorkerCA,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    backend, creds = make_backend(server, ca)
    handle = start(backend, server, creds, monkeypatch)
    server.pop()
    assert backend.log_tail(handle, 5) == "line 1\nline 2\n"
    (req,) = server.pop()
    assert (req.method, req.path, req.query) == ("GET", f"{CORE}/pods/{handle.ref}/log",
                                                 {"container": "runtime", "tailLines": "5"})


def test_refusals_are_config_errors_that_say_what_to_grant(server: FakeApiServer, ca: WorkerCA,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    backend, creds = make_backend(server, ca)
    monkeypatch.setattr(backend.ca, "issue", lambda worker_id, **_: creds)
    server.fail[("POST", "secrets")] = (403, 'secrets is forbidden: User "system:serviceaccount:mlbridge:x" '
                                             'cannot create resource "secrets"')
    with pytest.raises(ConfigError, match=r"refused to create Secret .*cannot create resource.*rbac.yaml"):
        asyncio.run(backend.start(spec()))
    server.fail = {("GET", "pods"): (403, "pods is forbidden")}
    cfg = Config(backend="kubernetes", bridges={"mock": BridgeConfig(runtime="mock")})
    with pytest.raises(ConfigError, match="kubernetes backend cannot start: kubernetes refused to list pods"):
        asyncio.run(backend.prepare(cfg))
    server.fail = {("POST", "pods"): (403, 'pods "x" is forbidden: violates PodSecurity "restricted:latest"')}
    with pytest.raises(ConfigError, match="violates PodSecurity") as err:
        asyncio.run(backend.start(spec()))
    assert "rbac.yaml" not in str(err.value)
    server.fail = {("POST", "pods"): (500, "etcdserver: request timed out")}
    with pytest.raises(Unavailable, match="etcdserver"):
        asyncio.run(backend.start(spec()))
    assert server.objects == {}  # every failed start removed what it had created


def test_prepare_checks_images_networks_and_runtime_classes(server: FakeApiServer, ca: WorkerCA) -> None:
    backend, _ = make_backend(server, ca)
    ok = Config(backend="kubernetes", bridges={"mock": BridgeConfig(runtime="mock")})
    asyncio.run(backend.prepare(ok))
    (req,) = server.pop()
    assert (req.method, req.path, req.query["limit"]) == ("GET", f"{CORE}/pods", "1")
    bad = Config(backend="kubernetes", bridges={
        "mock": BridgeConfig(runtime="mock", network="bridge", runtime_class="runsc"),
        "dspy": BridgeConfig(runtime="dspy", image="mlbridge/dspy:0.1.0")})
    with pytest.raises(ConfigError) as err:
        asyncio.run(backend.prepare(bad))
    text = str(err.value)
    assert "'mlbridge/dspy:0.1.0' of bridge 'dspy' is not pinned by digest" in text
    assert "network 'bridge' is a docker setting" in text
    assert "runtime_class 'runsc' is a docker OCI runtime; set backend_options.runtime_class_name" in text


def test_from_config_reads_backend_options(tmp_path: Path) -> None:
    cfg = Config(backend="kubernetes", state_dir=tmp_path, backend_options={
        "namespace": "ml", "kubeconfig": str(tmp_path / "kubeconfig"), "images": {"mock": IMAGE},
        "runtime_class_name": "gvisor"})
    backend = KubernetesBackend.from_config(cfg)
    assert backend.settings.namespace == "ml" and backend.settings.runtime_class_name == "gvisor"
    assert backend.scope and len(backend.scope) == 12
    assert backend._ca_dir == tmp_path / "ca"
    with pytest.raises(ConfigError, match=r"backend_options.namespce: Extra inputs are not permitted"):
        KubernetesBackend.from_config(Config(backend="kubernetes", backend_options={"namespce": "x"}))
    with pytest.raises(ConfigError, match=r"backend_options.namespace: Value error, 'ML_1' is not a DNS label"):
        KubernetesBackend.from_config(Config(backend="kubernetes", backend_options={"namespace": "ML_1"}))
    with pytest.raises(ConfigError, match="must be pinned by digest.*mock: repo/mock:latest"):
        KubernetesBackend.from_config(Config(backend="kubernetes", backend_options={
            "images": {"mock": "repo/mock:latest"}}))
    dev = KubernetesBackend.from_config(Config(backend="kubernetes", backend_options={
        "images": {"mock": "repo/mock:latest"}, "allow_unpinned_images": True}))
    assert dev.settings.image_for("mock", None) == "repo/mock:latest"


def test_no_kubeconfig_outside_a_pod_says_what_to_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    backend = KubernetesBackend(load_settings({}), ca_dir=tmp_path / "ca")
    with pytest.raises(ConfigError, match="not running in a pod.*set backend_options.kubeconfig"):
        backend.api.read_pod("x")


def _rbac_rules() -> list[dict[str, Any]]:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "rbac.yaml").read_text()))
    (role,) = [d for d in docs if d["kind"] == "Role"]
    rules: list[dict[str, Any]] = role["rules"]
    return rules


def _permission(req: Request) -> tuple[str, str, str]:
    parts = req.path.strip("/").split("/")
    group, rest = ("", parts[4:]) if parts[0] == "api" else (parts[1], parts[5:])
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    verb = {"POST": "create", "PATCH": "patch", "PUT": "update"}.get(req.method)
    if req.method == "GET":
        verb = "get" if named else ("watch" if req.query.get("watch") == "true" else "list")
    elif req.method == "DELETE":
        verb = "delete" if named else "deletecollection"
    assert verb is not None
    return group, resource, verb


def test_the_role_grants_every_request_the_backend_makes(server: FakeApiServer, ca: WorkerCA,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    backend, creds = make_backend(server, ca)
    asyncio.run(backend.prepare(Config(backend="kubernetes", bridges={"mock": BridgeConfig(runtime="mock")})))
    handle = start(backend, server, creds, monkeypatch)
    asyncio.run(backend.mark_tenant(handle, "acme"))
    monkeypatch.setenv("MLBRIDGE_POD_IP", "10.0.0.9")
    asyncio.run(backend.open_egress())
    asyncio.run(backend.guard_egress(40000))
    asyncio.run(backend.connect_egress(handle))
    backend.log_tail(handle)
    asyncio.run(backend.list({}))
    asyncio.run(backend.exit_info(handle))
    server.watch_script[handle.ref] = [("DELETED", terminated(0, "Completed"))]
    asyncio.run(backend.stop(handle))
    asyncio.run(backend.reap("someone-else"))
    granted = {(g, r, v) for rule in _rbac_rules() for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    used = {_permission(r) for r in server.requests}
    assert used <= granted, sorted(used - granted)
    # ...and nothing is granted that the backend does not use.
    assert granted == used, sorted(granted - used)


def test_a_cancelled_start_removes_what_it_created(server: FakeApiServer, ca: WorkerCA,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    backend, creds = make_backend(server, ca)
    monkeypatch.setattr(backend.ca, "issue", lambda worker_id, **_: creds)

    async def cancel_soon() -> None:
        task = asyncio.ensure_future(backend.start(spec()))
        while ("pods", "mlbridge-mock-0123456789") not in server.objects:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())
    deadline = time.monotonic() + 5
    while server.objects and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.objects == {}
