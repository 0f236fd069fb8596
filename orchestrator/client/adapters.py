"""Framework adapters: a bridge's own operations as Python methods.

``mb.get_adapter("mock").echo(x=1)`` calls ``mock:echo``. A framework can
register a richer adapter class under the ``mlbridge.adapters`` entry point
group (keyed by bridge name); otherwise a generic adapter is built from the
bridge's ``describe`` output.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import import_module, metadata
from typing import Any, Protocol

from runtimes.wire.errors import UnknownCommand

from ._common import Event


class Client(Protocol):
    """What adapters call on the client that made them (:class:`~orchestrator.client.MLBridge`)."""

    def call(self, bridge: str, command: str, args: dict[str, Any] | None = None, **kw: Any) -> Any: ...

    def create_resource(self, bridge: str, type: str, config: dict[str, Any] | None = None, *,
                        resource_id: str | None = None, attachments: dict[str, bytes] | None = None,
                        timeout: float | None = None) -> str: ...

    def execute_resource(self, resource_id: str, inputs: dict[str, Any] | None = None, **kw: Any) -> Any: ...

    def stream_resource(self, resource_id: str, inputs: dict[str, Any] | None = None, *,
                        call_id: str | None = None, timeout: float | None = None) -> Iterator[Event]: ...

    def list_resources(self, bridge: str | None = None, type: str | None = None) -> list[dict[str, Any]]: ...

ADAPTER_GROUP = "mlbridge.adapters"
# Adapters shipped with mlbridge, by the bridge's own name (an entry point of the same name wins).
BUILTIN: dict[str, str] = {"dspy": "orchestrator.client.dspy_adapter:DSPyAdapter",
                           "langchain": "orchestrator.client.langchain_adapter:LangChainAdapter",
                           "transformers": "orchestrator.client.transformers_adapter:TransformersAdapter"}


class Adapter:
    """Generic adapter: every ``<bridge>:<op>`` command is a method ``op(**args)``."""

    def __init__(self, client: Client, bridge: str, description: dict[str, Any]) -> None:
        self.client = client
        self.bridge = bridge
        self.description = description
        prefix = f"{description.get('bridge', bridge)}:"
        self.operations = sorted(c["name"][len(prefix):] for c in description.get("commands", [])
                                 if c["name"].startswith(prefix))
        self.resource_types = [t["name"] for t in description.get("resource_types", [])]

    def __getattr__(self, op: str) -> Any:
        if op.startswith("_") or op not in self.__dict__.get("operations", ()):
            raise AttributeError(f"bridge {self.bridge!r} has no operation {op!r}; "
                                 f"operations: {', '.join(self.__dict__.get('operations', ()))}")
        ns = self.description.get("bridge", self.bridge)

        def method(**args: Any) -> Any:
            return self.client.call(self.bridge, f"{ns}:{op}", args)

        method.__name__ = op
        return method

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.operations))

    def create(self, type: str, config: dict[str, Any] | None = None, **kw: Any) -> str:
        """Create a resource of one of this bridge's types."""
        if type not in self.resource_types:
            raise UnknownCommand(f"bridge {self.bridge!r} has no resource type {type!r}; "
                                 f"types: {', '.join(self.resource_types)}")
        return self.client.create_resource(self.bridge, type, config, **kw)


def adapter_for(client: Client, bridge: str, description: dict[str, Any]) -> Adapter:
    cls: type[Adapter] = Adapter
    found = [ep for ep in metadata.entry_points(group=ADAPTER_GROUP) if ep.name == bridge]
    target = BUILTIN.get(str(description.get("bridge") or bridge))
    if found:
        cls = found[0].load()
    elif target is not None:
        module, _, name = target.partition(":")
        cls = getattr(import_module(module), name)
    return cls(client, bridge, description)
