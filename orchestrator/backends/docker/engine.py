"""Every call the docker backend makes to the Docker engine, and nothing else.

Blocking (the backend runs them in its thread pool), through docker-py's
public low-level ``APIClient`` only. Docker SDK and transport errors never
leave this module: each method translates them (:mod:`.errors`) into
:class:`~runtimes.wire.errors.ConfigError` (engine unreachable) or
:class:`~runtimes.wire.errors.Unavailable` (the engine refused, with its HTTP
status in ``details``), and answers None or False where "not there" is an
ordinary answer.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import docker
import requests
from docker import errors as derr

from runtimes.wire.errors import MLBridgeError, Unavailable

from .errors import check_engine_socket, engine_unreachable, translated

__all__ = ["Engine"]


class Engine:
    """A lazily connected Docker engine client.

    Args:
        client: a ``docker.DockerClient``; by default one from the environment
            (``DOCKER_HOST`` etc.), created on first use.
        max_pool_size: HTTP connections kept to the engine.
    """

    def __init__(self, client: docker.DockerClient | None = None, *, max_pool_size: int = 32) -> None:
        self._client = client
        self._pool = max_pool_size
        self._lock = threading.Lock()

    @property
    def api(self) -> docker.APIClient:
        """The low-level client, connected on first use (one round trip for the API version)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    check_engine_socket()
                    with translated("connect to the engine"):
                        try:
                            self._client = docker.from_env(max_pool_size=self._pool)
                        except derr.DockerException as exc:
                            raise engine_unreachable(exc) from exc
        return self._client.api

    # -- engine and images ------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        with translated("read engine info"):
            return dict(self.api.info())

    def image_id(self, ref: str) -> str | None:
        """The id of image ``ref``; None when the engine has no such image."""
        with translated(f"inspect image {ref}"):
            try:
                info: dict[str, Any] = self.api.inspect_image(ref)  # type: ignore[no-untyped-call]
                return str(info["Id"])
            except derr.ImageNotFound:
                return None

    # -- containers ---------------------------------------------------------------------
    def create_and_start(self, create: dict[str, Any], host: dict[str, Any], action: str) -> str:
        """Create and start a container; return its id. A container that fails to start is removed."""
        with translated(action):
            api = self.api
            host_config = api.create_host_config(**host)
            cid = str(api.create_container(host_config=host_config, **create)["Id"])
            try:
                api.start(cid)
            except BaseException:
                with contextlib.suppress(Exception):
                    api.remove_container(cid, force=True, v=True)
                raise
            return cid

    def inspect(self, cid: str) -> dict[str, Any] | None:
        """``docker inspect`` of a container; None once it is removed."""
        with translated(f"inspect container {cid[:12]}"):
            try:
                return dict(self.api.inspect_container(cid))
            except derr.NotFound:
                return None

    def stop(self, cid: str, *, kill: bool, timeout: int) -> None:
        """SIGKILL, or SIGTERM then SIGKILL after ``timeout`` s; a container already gone or exited is fine."""
        with translated(f"stop container {cid[:12]}"):
            try:
                if kill:
                    self.api.kill(cid)
                else:
                    self.api.stop(cid, timeout=timeout)
            except derr.NotFound:
                pass
            except derr.APIError as exc:
                if exc.status_code != 409:  # 409: it exited meanwhile
                    raise

    def remove(self, cid: str) -> bool:
        """Force-remove a container and its anonymous volumes; False when it was already gone."""
        with translated(f"remove container {cid[:12]}"):
            try:
                self.api.remove_container(cid, force=True, v=True)
            except derr.NotFound:
                return False
            return True

    def rename(self, cid: str, name: str) -> None:
        with translated(f"rename container {cid[:12]}"):
            self.api.rename(cid, name)

    def update_resources(self, cid: str, body: dict[str, Any]) -> None:
        """``POST /containers/{id}/update`` with Engine API fields (``NanoCpus``, ``Memory``, ``PidsLimit``).

        docker-py's ``update_container`` cannot change ``PidsLimit``, so this
        speaks the documented Engine API through the client's own HTTP session.
        """
        api = self.api
        url = f"{api.base_url}/v{api.api_version}/containers/{cid}/update"
        with translated(f"update the limits of container {cid[:12]}"):
            resp = api.post(url, json=body)
            if resp.status_code >= 400:
                try:
                    message = resp.json().get("message", resp.text)
                except ValueError:
                    message = resp.text
                raise Unavailable(f"docker could not update the limits of container {cid[:12]}: {message}",
                                  details={"http_status": resp.status_code})

    def stats(self, cid: str) -> dict[str, Any]:
        """One stats sample (``docker stats --no-stream``)."""
        with translated(f"read stats of container {cid[:12]}"):
            return dict(self.api.stats(cid, stream=False, one_shot=True))

    def containers(self, label_filters: list[str]) -> list[dict[str, Any]]:
        """Every container (running or not) carrying all of ``label_filters`` (``key`` or ``key=value``)."""
        with translated("list containers"):
            return list(self.api.containers(all=True, filters={"label": label_filters}))

    def logs(self, cid: str, tail: int) -> str:
        """The last ``tail`` lines of a container's output; "" when they cannot be read."""
        try:
            raw = self.api.logs(cid, stdout=True, stderr=True, tail=tail)
        except (derr.DockerException, requests.exceptions.RequestException, MLBridgeError):
            return ""
        return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)

    # -- networks ---------------------------------------------------------------------------
    def inspect_network(self, name: str) -> dict[str, Any] | None:
        with translated(f"inspect network {name}"):
            try:
                return dict(self.api.inspect_network(name))
            except derr.NotFound:
                return None

    def create_network(self, name: str, *, internal: bool, options: dict[str, str],
                       labels: dict[str, str]) -> None:
        """Create a bridge network; one created meanwhile under that name is fine."""
        with translated(f"create network {name}"):
            try:
                self.api.create_network(name, driver="bridge", internal=internal, options=options,
                                        labels=labels, check_duplicate=True)
            except derr.APIError as exc:
                if exc.status_code != 409:
                    raise

    def connect(self, cid: str, network: str) -> None:
        with translated(f"connect container {cid[:12]} to network {network[:12]}"):
            self.api.connect_container_to_network(cid, network)

    def disconnect(self, cid: str, network: str, *, force: bool = False) -> None:
        with translated(f"disconnect container {cid[:12]} from network {network[:12]}"):
            self.api.disconnect_container_from_network(cid, network, force=force)

    def remove_network(self, network: str) -> bool:
        """Remove a network; False when it was already gone."""
        with translated(f"remove network {network[:12]}"):
            try:
                self.api.remove_network(network)
            except derr.NotFound:
                return False
            return True

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
