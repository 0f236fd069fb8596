"""Docker SDK errors -> mlbridge errors, at the docker backend's boundary.

Nothing from ``docker.errors`` or ``requests`` leaves the backend: an
unreachable engine is a :class:`ConfigError` that says how to start one, and
an engine that refuses something is :class:`Unavailable` with its message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import requests
from docker import errors as derr
from docker.constants import DEFAULT_UNIX_SOCKET

from runtimes.wire.errors import ConfigError, MLBridgeError, Unavailable

__all__ = ["ENGINE_HINT", "check_engine_socket", "engine_unreachable", "translate", "translated"]

ENGINE_HINT = "start it with `scripts/docker-engine.sh up` (or point DOCKER_HOST at a running engine)"


class EngineUnreachable(ConfigError):
    """The engine does not answer: a setup problem at start, a transient one once it has answered
    (:meth:`~orchestrator.backends.docker.DockerBackend.start` then says ``UNAVAILABLE``)."""


def engine_unreachable(exc: BaseException) -> ConfigError:
    cause = str(exc)
    if "Permission denied" in cause or "PermissionError" in cause:
        return EngineUnreachable(f"cannot reach the Docker engine: permission denied on its socket ({cause}); "
                           "run as root or as a member of the docker group")
    return EngineUnreachable(f"cannot reach the Docker engine ({cause}): {ENGINE_HINT}")


def check_engine_socket() -> None:
    """Fail fast, and clearly, when the engine's unix socket does not exist."""
    base_url = os.environ.get("DOCKER_HOST") or DEFAULT_UNIX_SOCKET
    for prefix in ("unix://", "http+unix://"):
        if base_url.startswith(prefix):
            path = base_url[len(prefix):]
            if not os.path.exists(path):
                raise ConfigError(f"cannot reach the Docker engine: no socket at {path}: {ENGINE_HINT}")


def translate(exc: BaseException, action: str) -> MLBridgeError:
    """The mlbridge error for a docker SDK / transport error raised while doing ``action``."""
    if isinstance(exc, MLBridgeError):
        return exc
    if isinstance(exc, requests.exceptions.ConnectionError):
        return engine_unreachable(exc)
    if isinstance(exc, requests.exceptions.Timeout):
        return Unavailable(f"the Docker engine did not answer in time while trying to {action}")
    if isinstance(exc, derr.APIError):
        what = exc.explanation or str(exc)
        return Unavailable(f"docker could not {action}: {what}", details={"http_status": exc.status_code})
    if isinstance(exc, derr.DockerException):
        text = str(exc)
        if "Error while fetching server API version" in text or "Connection" in text:
            return engine_unreachable(exc)
        return Unavailable(f"docker could not {action}: {text}")
    return Unavailable(f"docker could not {action}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def translated(action: str) -> Iterator[None]:
    try:
        yield
    except MLBridgeError:
        raise
    except (derr.DockerException, requests.exceptions.RequestException) as exc:
        raise translate(exc, action) from exc
