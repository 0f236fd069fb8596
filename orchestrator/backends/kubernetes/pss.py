"""The Pod Security Standards, "baseline" and "restricted", checked on a pod (or a pod template).

Rule by rule as https://kubernetes.io/docs/concepts/security/pod-security-standards/
states them (policy version ``latest``; Linux pods). The backend checks every
worker pod it renders before it sends it, and the tests check the
orchestrator's own Deployment; the namespace's ``pod-security.kubernetes.io/enforce:
restricted`` label makes the API server check the same again.

:func:`violations` returns one sentence per broken rule, naming the field;
an empty list means the pod meets the level.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

__all__ = ["BASELINE_CAPABILITIES", "RESTRICTED_VOLUMES", "SAFE_SYSCTLS", "violations"]

Level = Literal["baseline", "restricted"]

#: Baseline, "Capabilities": what a container may add.
BASELINE_CAPABILITIES = frozenset({"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                                   "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
#: Baseline, "Sysctls": the safe set.
SAFE_SYSCTLS = frozenset({"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                          "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                          "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                          "net.ipv4.tcp_keepalive_probes"})
#: Restricted, "Volume Types": the only volume sources allowed.
RESTRICTED_VOLUMES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                                "projected", "secret"})
_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
_APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
_APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
_SECCOMP_OK = frozenset({"RuntimeDefault", "Localhost"})
_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
_HANDLERS = ("httpGet", "tcpSocket")


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(spec.get(kind) or []):
            yield f"spec.{kind}[{i}]({c.get('name', '?')})", c


def _baseline(meta: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    out: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    # HostProcess
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("HostProcess: spec.securityContext.windowsOptions.hostProcess must be unset or false")
    # Host Namespaces
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"Host Namespaces: spec.{field} must be unset or false")
    # HostPath Volumes
    for i, vol in enumerate(spec.get("volumes") or []):
        if "hostPath" in vol:
            out.append(f"HostPath Volumes: spec.volumes[{i}]({vol.get('name', '?')}) is a hostPath")
    # Sysctls
    for s in pod_sc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            out.append(f"Sysctls: spec.securityContext.sysctls {s.get('name')!r} is not in the safe set")
    # AppArmor and SELinux, pod level
    out += _apparmor("spec.securityContext", pod_sc)
    out += _selinux("spec.securityContext", pod_sc)
    # Seccomp (baseline: never Unconfined)
    if (pod_sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        out.append("Seccomp: spec.securityContext.seccompProfile.type must not be Unconfined")
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith(_APPARMOR_ANNOTATION) and value != "runtime/default" and not value.startswith("localhost/"):
            out.append(f"AppArmor: annotation {key}={value!r} must be runtime/default or localhost/*")
    for where, c in _containers(spec):
        sc = c.get("securityContext") or {}
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"HostProcess: {where}.securityContext.windowsOptions.hostProcess must be unset or false")
        if sc.get("privileged"):
            out.append(f"Privileged Containers: {where}.securityContext.privileged must be unset or false")
        added = set((sc.get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES
        if added:
            out.append(f"Capabilities: {where} adds {', '.join(sorted(added))} (beyond the baseline set)")
        for i, port in enumerate(c.get("ports") or []):
            if port.get("hostPort"):
                out.append(f"Host Ports: {where}.ports[{i}].hostPort must be unset or 0")
        for probe in _PROBES:
            for handler in _HANDLERS:
                if ((c.get(probe) or {}).get(handler) or {}).get("host"):
                    out.append(f"Host Probes: {where}.{probe}.{handler}.host must be unset")
        for hook in ("postStart", "preStop"):
            for handler in _HANDLERS:
                if (((c.get("lifecycle") or {}).get(hook) or {}).get(handler) or {}).get("host"):
                    out.append(f"Host Lifecycle Hooks: {where}.lifecycle.{hook}.{handler}.host must be unset")
        out += _apparmor(f"{where}.securityContext", sc)
        out += _selinux(f"{where}.securityContext", sc)
        if sc.get("procMount", "Default") != "Default":
            out.append(f"/proc Mount Type: {where}.securityContext.procMount must be unset or Default")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"Seccomp: {where}.securityContext.seccompProfile.type must not be Unconfined")
    return out


def _apparmor(where: str, sc: dict[str, Any]) -> list[str]:
    profile = sc.get("appArmorProfile")
    if profile is not None and profile.get("type") not in _APPARMOR_TYPES:
        return [f"AppArmor: {where}.appArmorProfile.type must be RuntimeDefault or Localhost"]
    return []


def _selinux(where: str, sc: dict[str, Any]) -> list[str]:
    opts = sc.get("seLinuxOptions") or {}
    out = []
    if opts.get("type", "") not in _SELINUX_TYPES:
        out.append(f"SELinux: {where}.seLinuxOptions.type {opts.get('type')!r} is not a container type")
    for field in ("user", "role"):
        if opts.get(field):
            out.append(f"SELinux: {where}.seLinuxOptions.{field} must be unset")
    return out


def _restricted(spec: dict[str, Any]) -> list[str]:
    out: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    # Volume Types
    for i, vol in enumerate(spec.get("volumes") or []):
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"Volume Types: spec.volumes[{i}]({vol.get('name', '?')}) is {', '.join(sorted(kinds))}")
    pod_non_root = pod_sc.get("runAsNonRoot")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_non_root is False:
        out.append("Running as Non-root: spec.securityContext.runAsNonRoot must not be false")
    if pod_sc.get("runAsUser") == 0:
        out.append("Running as Non-root user: spec.securityContext.runAsUser must not be 0")
    if pod_seccomp is not None and pod_seccomp not in _SECCOMP_OK:
        out.append("Seccomp: spec.securityContext.seccompProfile.type must be RuntimeDefault or Localhost")
    for where, c in _containers(spec):
        sc = c.get("securityContext") or {}
        # Privilege Escalation: must be set to false.
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"Privilege Escalation: {where}.securityContext.allowPrivilegeEscalation must be false")
        # Running as Non-root: the container's value wins; unset at both levels is a violation.
        non_root = sc.get("runAsNonRoot", pod_non_root)
        if non_root is not True:
            out.append(f"Running as Non-root: {where} must run with runAsNonRoot: true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"Running as Non-root user: {where}.securityContext.runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in _SECCOMP_OK:
            out.append(f"Seccomp: {where} must have seccompProfile RuntimeDefault or Localhost (pod or container)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"Capabilities: {where}.securityContext.capabilities.drop must include ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            out.append(f"Capabilities: {where} may add only NET_BIND_SERVICE, not {', '.join(sorted(extra))}")
    return out


def violations(pod: dict[str, Any], level: Level = "restricted") -> list[str]:
    """The rules of ``level`` that ``pod`` breaks, one sentence each; [] when it meets the level.

    Args:
        pod: a Pod, or a pod template (``{"metadata": ..., "spec": ...}``), as JSON-shaped dicts.
        level: ``baseline``, or ``restricted`` (which includes baseline).
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    out = _baseline(meta, spec)
    if level == "restricted":
        out += _restricted(spec)
    return out
