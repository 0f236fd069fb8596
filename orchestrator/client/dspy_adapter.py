"""The DSPy adapter: DSPy's vocabulary over the resource API.

``mb.get_adapter("dspy")`` returns a :class:`DSPyAdapter`::

    dspy = mb.get_adapter("dspy")
    dspy.configure_lm(provider="dummy", answers=[{"answer": "4"}])
    qa = dspy.create_program("question -> answer")
    dspy.execute_program(qa, question="2+2?")          # {"answer": "4"}
    tuned = dspy.optimize(qa, [{"question": "1+1?", "answer": "2"}],
                          on_progress=lambda step, total, msg: print(step, total, msg))
    dspy.execute_program(tuned["program_id"], question="3+3?")

Every method is a thin call of the public API (``CreateResource``,
``ExecuteResource``, ``ExecuteResourceStream``, ``Call``), so it is also the
reference for what a client in another language sends. This replaces the
DSPex legacy commands (``create_program`` and friends).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from runtimes.wire.errors import InvalidArgument, InvalidResult, NotFound

from ._common import Event
from .adapters import Adapter, Client

__all__ = ["DSPyAdapter"]

# Secret name configure_lm(api_key=...) stores a key under, unless told another.
DEFAULT_KEY_SECRET = "DSPY_API_KEY"


class DSPyAdapter(Adapter):
    """DSPy signatures, LMs, programs, datasets and optimizers of one ``dspy`` bridge."""

    def __init__(self, client: Client, bridge: str, description: dict[str, Any]) -> None:
        super().__init__(client, bridge, description)
        self.namespace = str(description.get("bridge") or bridge)

    def _call(self, op: str, args: dict[str, Any], **kw: Any) -> Any:
        return self.client.call(self.bridge, f"{self.namespace}:{op}", args, **kw)

    # -- LMs --------------------------------------------------------------------
    def set_secret(self, name: str, value: str) -> None:
        """Give this tenant's worker a secret (e.g. a provider key) to name in LM configs.

        The value travels as an attachment and lives only in the worker's
        memory: it is never stored, and a replaced worker does not have it.
        Operators should rather put keys in the tenant's secrets (policy file).
        """
        self._call("set_secret", {"name": name}, attachments={"value": value.encode()})

    def create_lm(self, model: str | None = None, *, resource_id: str | None = None, **config: Any) -> str:
        """Create an ``lm`` resource (``model``, ``provider``, ``temperature``, ``api_key_secret``, ...)."""
        if model is not None:
            config["model"] = model
        return self.client.create_resource(self.bridge, "lm", config, resource_id=resource_id)

    def configure_lm(self, model: str | None = None, *, lm: str | None = None, api_key: str | None = None,
                     api_key_secret: str | None = None, **config: Any) -> dict[str, Any]:
        """Set the worker's default LM, from an ``lm`` resource id or from a config.

        Args:
            model: ``provider/model``; or use ``provider="dummy", answers=[...]`` offline.
            lm: an ``lm`` resource id instead of a config.
            api_key: a key to hand to the worker with :meth:`set_secret` (under
                ``api_key_secret``, default ``DSPY_API_KEY``); never stored.
            api_key_secret: the tenant secret holding the key.
            **config: further LM config fields (``temperature``, ``max_tokens``, ...).

        Returns:
            ``{"default_lm": <safe summary>}``.
        """
        if lm is not None:
            if model is not None or api_key is not None or api_key_secret is not None or config:
                raise InvalidArgument("configure_lm takes either lm=<resource id> or an LM config, not both")
            return self._call("configure_lm", {"lm": lm})  # type: ignore[no-any-return]
        if model is not None:
            config["model"] = model
        if api_key is not None:
            api_key_secret = api_key_secret or DEFAULT_KEY_SECRET
            self.set_secret(api_key_secret, api_key)
        if api_key_secret is not None:
            config["api_key_secret"] = api_key_secret
        return self._call("configure_lm", config)  # type: ignore[no-any-return]

    # -- signatures and programs -------------------------------------------------
    def create_signature(self, signature: str | dict[str, Any], *, instructions: str | None = None,
                         resource_id: str | None = None) -> str:
        """Create a ``signature`` resource from ``"a -> b"`` or ``{inputs, outputs}``."""
        config = {"signature": signature} if isinstance(signature, str) else dict(signature)
        if instructions is not None:
            config["instructions"] = instructions
        return self.client.create_resource(self.bridge, "signature", config, resource_id=resource_id)

    def create_program(self, signature: str | dict[str, Any], *, module: str = "Predict", lm: str | None = None,
                       state: dict[str, Any] | None = None, resource_id: str | None = None) -> str:
        """Create a ``program``: ``signature`` is a signature resource id or inline; ``lm`` an lm resource id."""
        config: dict[str, Any] = {"signature": signature, "module": module}
        if lm is not None:
            config["lm"] = lm
        if state is not None:
            config["state"] = state
        return self.client.create_resource(self.bridge, "program", config, resource_id=resource_id)

    def execute_program(self, program_id: str, inputs: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Run a program on its input fields; returns its output fields."""
        return self.client.execute_resource(program_id, {**(inputs or {}), **fields})  # type: ignore[no-any-return]

    def stream_program(self, program_id: str, inputs: dict[str, Any] | None = None, **fields: Any) -> Iterator[Event]:
        """Run a program streaming token chunks, then one result event with the outputs."""
        return self.client.stream_resource(program_id, {**(inputs or {}), **fields})

    def programs(self) -> list[dict[str, Any]]:
        """This tenant's programs on this bridge (id, info)."""
        return self.client.list_resources(self.bridge, "program")

    # -- datasets and optimisation ----------------------------------------------------
    def create_dataset(self, examples: list[dict[str, Any]], inputs: list[str], *,
                       resource_id: str | None = None) -> str:
        """Create a ``dataset`` of examples (``inputs`` names their input fields)."""
        return self.client.create_resource(self.bridge, "dataset", {"examples": examples, "inputs": inputs},
                                           resource_id=resource_id)

    def optimize_stream(self, program_id: str, trainset: str | list[dict[str, Any]], *,
                        inputs: list[str] | None = None, optimizer: str = "BootstrapFewShot",
                        metric: str = "exact_match", metric_fields: list[str] | None = None,
                        optimizer_args: dict[str, Any] | None = None, new_program_id: str | None = None,
                        resource_id: str | None = None) -> Iterator[Event]:
        """Compile ``program_id`` on ``trainset``, yielding progress events, then the result event.

        ``trainset`` is a dataset id or a list of examples (then ``inputs``
        names their input fields, by default the program's). The result
        (``program_id``, ``info``, ``metric``) names a new program resource.
        """
        if not isinstance(trainset, str):
            if inputs is None:
                inputs = self._program_inputs(program_id)
            trainset = self.create_dataset(trainset, inputs)
        config: dict[str, Any] = {"program": program_id, "trainset": trainset, "optimizer": optimizer,
                                  "metric": metric, "optimizer_args": optimizer_args or {}}
        if metric_fields is not None:
            config["metric_fields"] = metric_fields
        opt = self.client.create_resource(self.bridge, "optimization", config, resource_id=resource_id)
        return self.client.stream_resource(opt, {"program_id": new_program_id} if new_program_id else {})

    def optimize(self, program_id: str, trainset: str | list[dict[str, Any]], *,
                 on_progress: Callable[[int, int, str], None] | None = None, **kw: Any) -> dict[str, Any]:
        """:meth:`optimize_stream` to the end; ``on_progress(step, total, message)`` sees each step.

        Returns:
            The result: ``{"program_id": <new program>, "info", "metric", ...}``.
        """
        for ev in self.optimize_stream(program_id, trainset, **kw):
            if ev.kind == "progress" and on_progress is not None:
                on_progress(ev.step, ev.total, ev.message)
            elif ev.kind == "result":
                return ev.data  # type: ignore[no-any-return]
        raise InvalidResult("the optimization stream ended without a result")

    def stats(self) -> dict[str, Any]:
        """Default LM, resources by type, executions and optimizations of this tenant's worker."""
        return self._call("stats", {})  # type: ignore[no-any-return]

    def _program_inputs(self, program_id: str) -> list[str]:
        for r in self.programs():
            if r["resource_id"] == program_id:
                return list(r["info"].get("signature", {}).get("inputs", []))
        raise NotFound(f"program {program_id!r} not found; pass inputs= for the training examples")
