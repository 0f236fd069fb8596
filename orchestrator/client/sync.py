"""The blocking Python client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from orchestrator.proto import mlbridge_pb2 as pb
from orchestrator.proto import mlbridge_pb2_grpc as pb_grpc

from . import _common as c
from .adapters import Adapter, adapter_for


class MLBridge:
    """Client of an mlbridge orchestrator.

    Use as a context manager::

        with MLBridge.connect("127.0.0.1:50051", token="...") as mb:
            rid = mb.create_resource("mock", "counter", {"start": 1})
            mb.execute_resource(rid, {"add": 2})   # {"value": 3}

    Every method raises a subclass of ``MLBridgeError`` on failure.
    """

    def __init__(self, channel: grpc.Channel, token: str | None = None, timeout: float | None = None) -> None:
        self._channel = channel
        self._stub = pb_grpc.MLBridgeStub(channel)
        self._md = c.metadata(token)
        self.timeout = timeout

    @classmethod
    def connect(cls, address: str = c.DEFAULT_ADDRESS, token: str | None = None, *, timeout: float | None = None,
                max_message_bytes: int = c.DEFAULT_MAX_MESSAGE_BYTES, tls_ca: str | None = None,
                tls_cert: str | None = None, tls_key: str | None = None) -> MLBridge:
        """Open a channel to ``host:port`` or ``unix:///path``.

        Args:
            address: the orchestrator's address.
            token: bearer token naming the tenant (when the server has a policy).
            timeout: default per-call timeout in seconds.
            max_message_bytes: message size cap, both directions.
            tls_ca: CA bundle (PEM) to verify the server; enables TLS.
            tls_cert, tls_key: client certificate and key (PEM) for mutual TLS.

        Raises:
            InvalidArgument: a TLS file cannot be read, or cert without key.
        """
        return cls(c.open_channel(grpc, address, max_message_bytes, tls_ca, tls_cert, tls_key), token, timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> MLBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, metadata=c.call_metadata(self._md),
                              timeout=c.transport_deadline(request, timeout or self.timeout))
        except grpc.RpcError as exc:
            raise c.translate(exc) from None

    def _stream(self, method: Any, request: Any, timeout: float | None) -> Iterator[c.Event]:
        try:
            for ev in method(request, metadata=c.call_metadata(self._md),
                                  timeout=c.transport_deadline(request, timeout or self.timeout)):
                yield c.event(ev)
        except grpc.RpcError as exc:
            raise c.translate(exc) from None

    # -- bridges -------------------------------------------------------------
    def list_bridges(self) -> list[dict[str, Any]]:
        """Configured bridges with their pool state."""
        return c.bridge_dicts(self._unary(self._stub.ListBridges, pb.ListBridgesRequest()))

    def describe(self, bridge: str = "") -> dict[str, Any]:
        """Capability discovery: commands, resource types, versions."""
        return c.describe_dict(self._unary(self._stub.DescribeBridge, pb.DescribeBridgeRequest(bridge=bridge)))

    def get_adapter(self, bridge: str) -> Adapter:
        """A framework adapter exposing that framework's own methods."""
        return adapter_for(self, bridge, self.describe(bridge))

    # -- resources -----------------------------------------------------------
    def create_resource(self, bridge: str, type: str, config: dict[str, Any] | None = None, *,
                        resource_id: str | None = None, attachments: dict[str, bytes] | None = None,
                        timeout: float | None = None) -> str:
        """Create a resource; returns its id."""
        req = pb.CreateResourceRequest(bridge=bridge, type=type, config_json=c.dumps(config, "config"),
                                       attachments=attachments or {}, resource_id=resource_id or "",
                                       timeout_ms=c.timeout_ms(timeout))
        return str(self._unary(self._stub.CreateResource, req, timeout).resource_id)

    def execute_resource(self, resource_id: str, inputs: dict[str, Any] | None = None, **kw: Any) -> Any:
        """Run a resource; returns its JSON result."""
        return self.execute_resource_detailed(resource_id, inputs, **kw).result

    def execute_resource_detailed(self, resource_id: str, inputs: dict[str, Any] | None = None, *,
                                  attachments: dict[str, bytes] | None = None, call_id: str | None = None,
                                  timeout: float | None = None) -> c.CallResult:
        req = pb.ExecuteResourceRequest(resource_id=resource_id, inputs_json=c.dumps(inputs, "inputs"),
                                        attachments=attachments or {}, call_id=c.call_id(call_id),
                                        timeout_ms=c.timeout_ms(timeout))
        return c.result(self._unary(self._stub.ExecuteResource, req, timeout))

    def stream_resource(self, resource_id: str, inputs: dict[str, Any] | None = None, *,
                        attachments: dict[str, bytes] | None = None, call_id: str | None = None,
                        timeout: float | None = None) -> Iterator[c.Event]:
        """Run a resource, yielding chunk and progress events, then one result event."""
        req = pb.ExecuteResourceRequest(resource_id=resource_id, inputs_json=c.dumps(inputs, "inputs"),
                                        attachments=attachments or {}, call_id=c.call_id(call_id),
                                        timeout_ms=c.timeout_ms(timeout))
        return self._stream(self._stub.ExecuteResourceStream, req, timeout)

    def list_resources(self, bridge: str | None = None, type: str | None = None) -> list[dict[str, Any]]:
        reply = self._unary(self._stub.ListResources, pb.ListResourcesRequest(bridge=bridge or "", type=type or ""))
        return [c.resource_dict(r) for r in reply.resources]

    def delete_resource(self, resource_id: str) -> bool:
        return bool(self._unary(self._stub.DeleteResource, pb.DeleteResourceRequest(resource_id=resource_id)).deleted)

    # -- commands --------------------------------------------------------------
    def call(self, bridge: str, command: str, args: dict[str, Any] | None = None, **kw: Any) -> Any:
        """Call any namespaced command, e.g. ``call("mock", "mock:echo", {"x": 1})``."""
        return self.call_detailed(bridge, command, args, **kw).result

    def call_detailed(self, bridge: str, command: str, args: dict[str, Any] | None = None, *,
                      attachments: dict[str, bytes] | None = None, call_id: str | None = None,
                      timeout: float | None = None) -> c.CallResult:
        req = pb.CallRequest(bridge=bridge, command=command, args_json=c.dumps(args, "args"),
                             attachments=attachments or {}, call_id=c.call_id(call_id),
                             timeout_ms=c.timeout_ms(timeout))
        # stacklevel 4: a DeprecationWarning points at the caller of call() (call_detailed is one deeper).
        return c.result(self._unary(self._stub.Call, req, timeout), stacklevel=4)

    def call_stream(self, bridge: str, command: str, args: dict[str, Any] | None = None, *,
                    attachments: dict[str, bytes] | None = None, call_id: str | None = None,
                    timeout: float | None = None) -> Iterator[c.Event]:
        req = pb.CallRequest(bridge=bridge, command=command, args_json=c.dumps(args, "args"),
                             attachments=attachments or {}, call_id=c.call_id(call_id),
                             timeout_ms=c.timeout_ms(timeout))
        return self._stream(self._stub.CallStream, req, timeout)

    def cancel(self, call_id: str) -> bool:
        """Cancel a running call by the id it was started with."""
        return bool(self._unary(self._stub.Cancel, pb.CancelRequest(call_id=call_id)).found)

    def answer(self, call_id: str, request_id: str, result: Any = None, *, error: str | None = None) -> bool:
        """Answer a ``request`` event of a streaming call (``error``: why it cannot be answered).

        Returns:
            Whether the call was still waiting for that answer.
        """
        req = c.answer_request(call_id, request_id, result, error)
        return bool(self._unary(self._stub.Answer, req).found)

    def stats(self, usage_tenant: str = "", usage_since: float | None = None) -> dict[str, Any]:
        """Orchestrator stats; ``stats["usage"]`` holds ``usage_tenant``'s usage ("": every tenant you may
        see) since Unix time ``usage_since`` (None: since records began), from servers that keep it."""
        return c.stats_dict(self._unary(self._stub.GetStats, c.stats_request(usage_tenant, usage_since)))
