"""What a worker pod's status means: its address, whether it can still start, how it ended.

Pure functions over the Pod as the API server returns it (JSON-shaped dicts).

OOM detection. The runtime container runs ``tini``, which runs the Python
runtime; when the kernel OOM-kills a process in the container's memory
cgroup, the container runtime (containerd, CRI-O) records it and the kubelet
reports the container's terminated state with ``reason: OOMKilled`` (and exit
code 137). That flag with a SIGKILL exit mlbridge did not ask for is an OOM
death; a 137 mlbridge caused (it deleted the pod) is reported as such.
"""

from __future__ import annotations

import signal
from typing import Any

from ..base import ExitInfo
from .render import CONTAINER_NAME, parse_quantity

__all__ = ["FATAL_WAITING", "container_status", "exit_info_from_pod", "last_words", "pod_ip", "pod_row",
           "start_failure"]

_SIGKILL_EXIT = 128 + signal.SIGKILL
#: Waiting reasons after which the container will not start without someone changing something.
FATAL_WAITING = frozenset({"InvalidImageName", "ErrImageNeverPull", "ImagePullBackOff", "CreateContainerConfigError",
                           "CreateContainerError", "RunContainerError"})


def container_status(pod: dict[str, Any]) -> dict[str, Any]:
    """The runtime container's status ({} before the kubelet reported one)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER_NAME:
            return dict(cs)
    return {}


def last_words(pod: dict[str, Any], lines: int = 10) -> str:
    """The end of the terminated container's message: its log's tail (``FallbackToLogsOnError``), "" if none."""
    term = (container_status(pod).get("state") or {}).get("terminated") or {}
    text = str(term.get("message") or "").strip()
    return "\n".join(text.splitlines()[-lines:])


def pod_ip(pod: dict[str, Any]) -> str | None:
    """The pod's IP once its sandbox has one (IPv4 or IPv6 as the cluster gives it)."""
    status = pod.get("status") or {}
    return status.get("podIP") or None


def _memory_limit(pod: dict[str, Any]) -> int | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == CONTAINER_NAME:
            raw = ((c.get("resources") or {}).get("limits") or {}).get("memory")
            if raw is not None:
                try:
                    return int(parse_quantity(raw))
                except ValueError:
                    return None
    return None


def start_failure(pod: dict[str, Any]) -> str | None:
    """Why the worker will not start (a bad image, a bad config), or None while it may still."""
    waiting = (container_status(pod).get("state") or {}).get("waiting") or {}
    reason = str(waiting.get("reason") or "")
    if reason in FATAL_WAITING:
        message = str(waiting.get("message") or "").strip()
        return f"{reason}: {message}" if message else reason
    return None


def exit_info_from_pod(pod: dict[str, Any], stopped_by_us: str | None = None) -> ExitInfo | None:
    """How the worker ended, from its Pod; None while it runs (or may still start).

    Args:
        pod: the Pod as the API server returned it.
        stopped_by_us: ``"stop"`` or ``"kill"`` when mlbridge deleted it, else None.
    """
    status = pod.get("status") or {}
    limit = _memory_limit(pod)
    state = container_status(pod).get("state") or {}
    term = state.get("terminated")
    if term is None:
        phase = status.get("phase")
        if phase in ("Failed", "Succeeded"):
            why = ": ".join(str(x) for x in (status.get("reason"), status.get("message")) if x)
            return ExitInfo(exit_code=None, reason=f"pod {phase.lower()}" + (f" ({why})" if why else ""),
                            memory_limit=limit)
        failure = start_failure(pod)
        if failure is not None:
            return ExitInfo(exit_code=None, reason=f"could not run: {failure}", memory_limit=limit)
        return None
    code = term.get("exitCode")
    reason_k8s = str(term.get("reason") or "")
    if reason_k8s == "OOMKilled" and stopped_by_us != "kill":
        return ExitInfo(exit_code=code, oom_killed=True, memory_limit=limit)
    if reason_k8s in ("ContainerCannotRun", "StartError"):
        return ExitInfo(exit_code=code, reason=f"could not run: {term.get('message') or reason_k8s}",
                        memory_limit=limit)
    reason = ""
    if stopped_by_us:
        reason = f"{'killed' if stopped_by_us == 'kill' else 'stopped'} by mlbridge (exit code {code})"
    elif code == _SIGKILL_EXIT:
        reason = "killed by SIGKILL from outside mlbridge (an eviction, or a pod deleted by someone else)"
    elif isinstance(code, int) and code > 128:
        try:
            reason = f"killed by signal {signal.Signals(code - 128).name}"
        except ValueError:
            reason = ""
    if reason_k8s == "OOMKilled":
        reason += "; an out-of-memory kill happened in the container"
    return ExitInfo(exit_code=code, reason=reason, memory_limit=limit)


def pod_row(pod: dict[str, Any]) -> dict[str, Any]:
    """A pod as :meth:`~orchestrator.backends.base.Backend.list` reports workers (docker's keys)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    cs = container_status(pod)
    state = cs.get("state") or {}
    detail = next(iter(state), "")
    return {
        "id": meta.get("uid", ""),
        "name": meta.get("name", ""),
        "labels": dict(meta.get("labels") or {}),
        "state": str(status.get("phase", "")).lower(),
        "status": detail if not (state.get(detail) or {}).get("reason") else f"{detail}: {state[detail]['reason']}",
        "image": cs.get("imageID") or next((c.get("image", "") for c in (pod.get("spec") or {}).get("containers")
                                            or []), ""),
        "ip": status.get("podIP", ""),
    }
