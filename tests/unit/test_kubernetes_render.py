"""What the kubernetes backend sends, checked without a cluster.

Every object comes from :func:`render_worker` (and the patches from the
functions the backend calls), the very code path of
:meth:`KubernetesBackend.start`. Each is validated against the official
Kubernetes OpenAPI schema of the newest release ``kubernetes-validate``
ships, in strict mode (an unknown field is an error), and the worker pod
against the Pod Security Standards "restricted" profile, whose checker
(:mod:`orchestrator.backends.kubernetes.pss`) is shown, rule by rule, to catch
each violation.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from cryptography import x509

from orchestrator.backends.base import WorkerSpec
from orchestrator.backends.kubernetes.pss import violations
from orchestrator.backends.kubernetes.render import (
    TLS_MOUNT,
    cpu_quantity,
    egress_patch,
    owner_patch,
    parse_quantity,
    render_worker,
    resource_name,
    tenant_label_value,
    tenant_patch,
)
from orchestrator.backends.kubernetes.settings import KubernetesSettings, load_settings
from orchestrator.backends.tls import WorkerCA, WorkerCredentials
from orchestrator.config import BridgeConfig
from runtimes.wire.errors import ConfigError

IMAGE = "registry.example.com/mlbridge/mock@sha256:" + "0123456789abcdef" * 4
MIB = 1024 * 1024
#: The newest Kubernetes release whose schema kubernetes-validate ships (at least 1.33).
K8S_VERSION = kubernetes_validate.latest_version()


def test_the_schema_is_a_current_release() -> None:
    major, minor = (int(x) for x in K8S_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 33), K8S_VERSION


def validate(obj: dict[str, Any]) -> None:
    """Strict: unknown fields, wrong types and missing required fields all fail."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> WorkerCredentials:
    return WorkerCA(tmp_path_factory.mktemp("ca")).issue("mock-0123456789")


def spec(**cfg: Any) -> WorkerSpec:
    return WorkerSpec(worker_id="mock-0123456789", bridge="mock", orchestrator_id="orch00000001",
                      config=BridgeConfig(runtime="mock", **cfg), max_message_bytes=4 * MIB)


def settings(**options: Any) -> KubernetesSettings:
    return load_settings({"images": {"mock": IMAGE}, **options})


VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "defaults": ({}, {}),
    "gvisor, gpus, pull secrets, user namespaces": (
        {"limits": {"cpus": 2.5, "memory": "8g", "gpus": ["0", "1"], "tmpfs_size": "1g"},
         "env": {"HF_HUB_OFFLINE": "1"}, "cancel_grace_s": 7.5},
        {"runtime_class_name": "gvisor", "image_pull_secrets": ["regcred"], "user_namespaces": True,
         "node_selector": {"mlbridge.io/pool": "gpu"}, "worker_service_account": "mlbridge-worker",
         "ephemeral_storage": "1Gi"}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_object_validates_against_the_kubernetes_schema(variant: str, creds: WorkerCredentials) -> None:
    cfg, options = VARIANTS[variant]
    s = settings(**options)
    objects = render_worker(spec(**cfg), s, image=IMAGE, credentials=creds, scope="abc123")
    for obj in (objects.secret, objects.network_policy, objects.pod):
        validate(obj)
    # The patches, applied to what they patch, still validate.
    with_egress = copy.deepcopy(objects.network_policy)
    with_egress["spec"].update(egress_patch(s, 40123)["spec"])
    validate(with_egress)
    claimed = copy.deepcopy(objects.pod)
    claimed["metadata"]["labels"].update(tenant_patch("team a/b")["metadata"]["labels"])
    claimed["metadata"]["annotations"] = tenant_patch("team a/b")["metadata"]["annotations"]
    validate(claimed)
    owned = copy.deepcopy(objects.secret)
    owned["metadata"].update(owner_patch({"metadata": {"name": objects.name, "uid": "1234"}})["metadata"])
    validate(owned)
    assert violations(objects.pod) == []


def test_the_validator_is_strict(creds: WorkerCredentials) -> None:
    good = render_worker(spec(), settings(), image=IMAGE, credentials=creds).pod
    bad = copy.deepcopy(good)
    bad["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)
    bad = copy.deepcopy(good)
    bad["spec"]["terminationGracePeriodSeconds"] = "3"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)


def test_the_worker_pod_is_hardened(creds: WorkerCredentials) -> None:
    pod = render_worker(spec(limits={"cpus": 1.5, "memory": "512m", "tmpfs_size": "64m"}), settings(),
                        image=IMAGE, credentials=creds, scope="abc123").pod
    ps = pod["spec"]
    assert ps["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                     "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    assert ps["automountServiceAccountToken"] is False and ps["enableServiceLinks"] is False
    assert not ps["hostNetwork"] and not ps["hostPID"] and not ps["hostIPC"]
    assert ps["restartPolicy"] == "Never" and ps["hostname"] == "worker"
    assert "runtimeClassName" not in ps and "hostUsers" not in ps
    (c,) = ps["containers"]
    assert c["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "allowPrivilegeEscalation": False,
        "privileged": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}
    # Requests are the limits: Guaranteed QoS.
    assert c["resources"]["requests"] == c["resources"]["limits"] == {
        "cpu": "1500m", "memory": str(512 * MIB), "ephemeral-storage": "256Mi"}
    assert c["ports"] == [{"name": "runtime", "containerPort": 7443, "protocol": "TCP"}]
    assert c["image"] == IMAGE
    assert {v["name"]: {k: x for k, x in v.items() if k != "name"} for v in ps["volumes"]} == {
        "tmp": {"emptyDir": {"medium": "Memory", "sizeLimit": str(64 * MIB)}},
        "tls": {"secret": {"secretName": f"{pod['metadata']['name']}-tls", "defaultMode": 0o400, "optional": False}},
    }
    assert {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]} == {"/tmp": False, TLS_MOUNT: True}
    assert not any("hostPath" in v for v in ps["volumes"])


def test_env_names_the_bridge_listen_address_and_tls_dir_and_carries_no_secret(creds: WorkerCredentials) -> None:
    objects = render_worker(spec(env={"MLBRIDGE_LISTEN": "0.0.0.0:1", "FOO": "bar"}), settings(), image=IMAGE,
                            credentials=creds)
    env = {e["name"]: e["value"] for e in objects.pod["spec"]["containers"][0]["env"]}
    assert env == {"FOO": "bar", "MLBRIDGE_BRIDGE": "runtimes.mock:MockBridge",
                   "MLBRIDGE_MAX_MESSAGE_BYTES": str(4 * MIB), "MLBRIDGE_LISTEN": "0.0.0.0:7443",
                   "MLBRIDGE_TLS_DIR": TLS_MOUNT}
    pem = {v for f in creds.files.values() for v in (f.decode(),)}
    text = str(objects.pod)
    assert not any(p in text for p in pem) and "PRIVATE KEY" not in text
    with pytest.raises(ConfigError, match="invalid environment variable 'BAD-NAME'"):
        render_worker(spec(env={"BAD-NAME": "x"}), settings(), image=IMAGE, credentials=creds)


def test_the_secret_holds_the_tls_files_immutably(creds: WorkerCredentials) -> None:
    objects = render_worker(spec(), settings(), image=IMAGE, credentials=creds, scope="abc123")
    secret = objects.secret
    assert secret["type"] == "Opaque" and secret["immutable"] is True
    assert secret["metadata"]["name"] == f"{objects.name}-tls"
    assert secret["metadata"]["labels"] == objects.pod["metadata"]["labels"]
    files = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert files == creds.files
    cert = x509.load_pem_x509_certificate(files["worker.crt"])
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert names == [creds.server_name]


def test_labels_are_dockers_plus_scope(creds: WorkerCredentials) -> None:
    pod = render_worker(spec(), settings(), image=IMAGE, credentials=creds, scope="abc123").pod
    assert pod["metadata"]["labels"] == {
        "app.kubernetes.io/name": "mlbridge-worker", "app.kubernetes.io/managed-by": "mlbridge",
        "io.mlbridge.scope": "abc123", "io.mlbridge.orchestrator": "orch00000001",
        "io.mlbridge.bridge": "mock", "io.mlbridge.worker": "mock-0123456789"}
    bad = spec()
    bad.bridge = "my/bridge"
    with pytest.raises(ConfigError, match="label io.mlbridge.bridge 'my/bridge' is not a valid Kubernetes label"):
        render_worker(bad, settings(), image=IMAGE, credentials=creds)


def test_gpus_and_runtime_class(creds: WorkerCredentials) -> None:
    pod = render_worker(spec(limits={"gpus": ["0", "1"]}), settings(runtime_class_name="gvisor"), image=IMAGE,
                        credentials=creds).pod
    res = pod["spec"]["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "2"
    assert pod["spec"]["runtimeClassName"] == "gvisor"


def test_termination_grace_follows_the_bridges_cancel_grace(creds: WorkerCredentials) -> None:
    assert render_worker(spec(cancel_grace_s=7.2), settings(), image=IMAGE, credentials=creds) \
        .pod["spec"]["terminationGracePeriodSeconds"] == 8
    assert render_worker(spec(cancel_grace_s=0.2), settings(), image=IMAGE, credentials=creds) \
        .pod["spec"]["terminationGracePeriodSeconds"] == 1


def test_network_policy_admits_the_orchestrator_only_and_lets_nothing_out(creds: WorkerCredentials) -> None:
    s = settings(orchestrator_selector={"app": "orch", "tier": "control"})
    policy = render_worker(spec(), s, image=IMAGE, credentials=creds).network_policy
    assert policy["spec"] == {
        "podSelector": {"matchLabels": {"io.mlbridge.worker": "mock-0123456789"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "orch", "tier": "control"}}}],
                     "ports": [{"protocol": "TCP", "port": 7443}]}],
        "egress": [],
    }
    # A tenant with an allowlist: the proxy's pods (the orchestrator's, unless set apart) on its port alone.
    assert egress_patch(s, 40123) == {"spec": {"egress": [
        {"to": [{"podSelector": {"matchLabels": {"app": "orch", "tier": "control"}}}],
         "ports": [{"protocol": "TCP", "port": 40123}]}]}}
    apart = settings(egress_proxy_selector={"app": "proxy"})
    assert egress_patch(apart, 3128)["spec"]["egress"][0]["to"] == [{"podSelector": {"matchLabels": {"app": "proxy"}}}]
    assert egress_patch(s, None) == {"spec": {"egress": []}}


def test_names_fit_dns_labels_and_stay_unique() -> None:
    assert resource_name(spec()) == "mlbridge-mock-0123456789"
    odd = spec()
    odd.worker_id = "My_Bridge-" + "x" * 80
    other = spec()
    other.worker_id = "my-bridge-" + "x" * 80
    a, b = resource_name(odd), resource_name(other)
    assert a != b and len(a) <= 63 and len(b) <= 63
    assert all(c.isalnum() and c.islower() or c.isdigit() or c == "-" for c in a)
    assert tenant_label_value("acme") == "acme"
    assert tenant_label_value("a/b") != tenant_label_value("a:b")
    assert len(tenant_label_value("t" * 100)) <= 63


def test_quantities() -> None:
    assert cpu_quantity(0.25) == "250m" and cpu_quantity(0.0001) == "1m" and cpu_quantity(2) == "2000m"
    assert parse_quantity("512Mi") == 512 * MIB and parse_quantity("1500m") == 1.5 and parse_quantity("2") == 2
    assert parse_quantity("1G") == 10**9
    with pytest.raises(ValueError):
        parse_quantity("lots")


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"backend_options.orchestrator_selector: .*empty selector would admit"):
        load_settings({"orchestrator_selector": {}})
    with pytest.raises(ConfigError, match=r"backend_options.orchestrator_selector: .*'bad key!' is not a valid"):
        load_settings({"orchestrator_selector": {"bad key!": "x"}})
    with pytest.raises(ConfigError, match=r"backend_options.ephemeral_storage: .*not a Kubernetes quantity"):
        load_settings({"ephemeral_storage": "lots"})
    with pytest.raises(ConfigError, match=r"backend_options.runtime_class_name: .*'Not Valid' is not a RuntimeClass"):
        load_settings({"runtime_class_name": "Not Valid"})
    s = load_settings({})
    with pytest.raises(ConfigError, match=r"bridge 'mock' has no image.*backend_options.images.mock"):
        s.image_for("mock", None)
    with pytest.raises(ConfigError, match="not pinned by digest"):
        s.image_for("mock", "mlbridge/mock:0.1.0")
    assert s.image_for("mock", IMAGE) == IMAGE
    with pytest.raises(ConfigError, match="not pinned"):  # a digest of the wrong length is no digest
        s.image_for("mock", "repo/mock@sha256:abc")


# -- the Pod Security Standards checker, rule by rule ------------------------------------------

def _pod(creds: WorkerCredentials) -> dict[str, Any]:
    return render_worker(spec(), settings(), image=IMAGE, credentials=creds).pod


def _c(pod: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = pod["spec"]["containers"][0]
    return c


BREAKS: dict[str, tuple[str, str, Callable[[dict[str, Any]], None]]] = {
    # name: (level the rule belongs to, text of the violation, how to break it)
    "hostProcess": ("baseline", "HostProcess",
                    lambda p: _c(p)["securityContext"].update(windowsOptions={"hostProcess": True})),
    "hostNetwork": ("baseline", "Host Namespaces: spec.hostNetwork", lambda p: p["spec"].update(hostNetwork=True)),
    "hostPID": ("baseline", "Host Namespaces: spec.hostPID", lambda p: p["spec"].update(hostPID=True)),
    "hostIPC": ("baseline", "Host Namespaces: spec.hostIPC", lambda p: p["spec"].update(hostIPC=True)),
    "privileged": ("baseline", "Privileged Containers",
                   lambda p: _c(p)["securityContext"].update(privileged=True)),
    "capabilities beyond baseline": ("baseline", "Capabilities: spec.containers[0](runtime) adds SYS_ADMIN",
                                     lambda p: _c(p)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"])),
    "hostPath": ("baseline", "HostPath Volumes",
                 lambda p: p["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}})),
    "hostPort": ("baseline", "Host Ports", lambda p: _c(p)["ports"][0].update(hostPort=7443)),
    "probe host": ("baseline", "Host Probes",
                   lambda p: _c(p).update(livenessProbe={"tcpSocket": {"port": 7443, "host": "10.0.0.1"}})),
    "apparmor unconfined": ("baseline", "AppArmor",
                            lambda p: _c(p)["securityContext"].update(appArmorProfile={"type": "Unconfined"})),
    "apparmor annotation": ("baseline", "AppArmor: annotation",
                            lambda p: p["metadata"].update(annotations={
                                "container.apparmor.security.beta.kubernetes.io/runtime": "unconfined"})),
    "selinux type": ("baseline", "SELinux",
                     lambda p: p["spec"]["securityContext"].update(seLinuxOptions={"type": "spc_t"})),
    "selinux user": ("baseline", "SELinux: spec.containers[0](runtime).securityContext.seLinuxOptions.user",
                     lambda p: _c(p)["securityContext"].update(seLinuxOptions={"user": "system_u"})),
    "procMount": ("baseline", "/proc Mount Type",
                  lambda p: _c(p)["securityContext"].update(procMount="Unmasked")),
    "seccomp unconfined": ("baseline", "Seccomp: spec.securityContext.seccompProfile.type must not be Unconfined",
                           lambda p: p["spec"]["securityContext"].update(seccompProfile={"type": "Unconfined"})),
    "unsafe sysctl": ("baseline", "Sysctls",
                      lambda p: p["spec"]["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}])),
    "volume type": ("restricted", "Volume Types",
                    lambda p: p["spec"]["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}})),
    "privilege escalation": ("restricted", "Privilege Escalation",
                             lambda p: _c(p)["securityContext"].pop("allowPrivilegeEscalation")),
    "non-root unset": ("restricted", "Running as Non-root",
                       lambda p: (p["spec"]["securityContext"].pop("runAsNonRoot"),
                                  _c(p)["securityContext"].pop("runAsNonRoot"))),
    "non-root false": ("restricted", "Running as Non-root",
                       lambda p: _c(p)["securityContext"].update(runAsNonRoot=False)),
    "uid 0": ("restricted", "Running as Non-root user", lambda p: _c(p)["securityContext"].update(runAsUser=0)),
    "seccomp unset": ("restricted", "Seccomp",
                      lambda p: (p["spec"]["securityContext"].pop("seccompProfile"),
                                 _c(p)["securityContext"].pop("seccompProfile"))),
    "drop not ALL": ("restricted", "capabilities.drop must include ALL",
                     lambda p: _c(p)["securityContext"].update(capabilities={"drop": ["NET_RAW"]})),
    "add beyond NET_BIND_SERVICE": ("restricted", "may add only NET_BIND_SERVICE, not CHOWN",
                                    lambda p: _c(p)["securityContext"]["capabilities"].update(add=["CHOWN"])),
    "init container": ("restricted", "spec.initContainers[0](init)",
                       lambda p: p["spec"].update(initContainers=[{"name": "init", "image": IMAGE}])),
}


@pytest.mark.parametrize("rule", list(BREAKS))
def test_the_pss_checker_catches(rule: str, creds: WorkerCredentials) -> None:
    level, text, breaker = BREAKS[rule]
    pod = _pod(creds)
    assert violations(pod) == []
    breaker(pod)
    found = violations(pod, "restricted")
    assert any(text in v for v in found), found
    in_baseline = violations(pod, "baseline")
    assert bool([v for v in in_baseline if text in v]) == (level == "baseline"), in_baseline


def test_allowed_values_pass(creds: WorkerCredentials) -> None:
    pod = _pod(creds)
    _c(pod)["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    _c(pod)["securityContext"]["appArmorProfile"] = {"type": "RuntimeDefault"}
    _c(pod)["securityContext"]["seLinuxOptions"] = {"type": "container_t", "level": "s0:c1,c2"}
    pod["spec"]["securityContext"]["sysctls"] = [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
    pod["spec"]["volumes"].append({"name": "p", "persistentVolumeClaim": {"claimName": "x"}})
    pod["spec"]["securityContext"]["seccompProfile"] = {"type": "Localhost", "localhostProfile": "p.json"}
    assert violations(pod) == []


def test_the_backend_refuses_to_send_a_pod_that_breaks_the_profile(creds: WorkerCredentials,
                                                                   tmp_path: Path) -> None:
    import asyncio

    from orchestrator.backends.kubernetes import KubernetesBackend
    from orchestrator.backends.kubernetes import backend as backend_module

    def leaky(*args: Any, **kwargs: Any) -> Any:
        objects = render_worker(*args, **kwargs)
        objects.pod["spec"]["hostNetwork"] = True
        return objects

    b = KubernetesBackend(settings(), ca_dir=tmp_path / "ca")
    mp = pytest.MonkeyPatch()
    mp.setattr(backend_module, "render_worker", leaky)
    try:
        with pytest.raises(ConfigError, match="would break the restricted Pod Security Standard: Host Namespaces"):
            asyncio.run(b.start(spec()))
    finally:
        mp.undo()
        asyncio.run(b.close())
