"""The transformers adapter: models, pipelines, generation and fine-tuning in transformers' own words.

``mb.get_adapter("transformers")`` returns a :class:`TransformersAdapter`::

    tf = mb.get_adapter("transformers")
    clf = tf.pipeline("text-classification", model="tiny-bert",
                      batching={"max_batch_size": 32, "max_batch_time_ms": 2})
    tf.run(clf, "this movie was great")          # [{"label": "POSITIVE", "score": 0.93}]

    gpt = tf.load_model("tiny-gpt2")             # a model resource: loaded once, shared by pipelines
    for piece in tf.generate(gpt, "Once upon", max_new_tokens=20, do_sample=False):
        print(piece, end="")                     # text chunks as tokens come; the last item is the result

    data = tf.create_dataset(rows=[{"text": "great", "label": "POSITIVE"}, ...])
    for ev in tf.train(tf.load_model("tiny-bert"), data, args={"max_steps": 10}, export={"name": "my-bert"}):
        print(ev.kind, ev.step, ev.total, ev.message)   # a progress event per step with its loss, then the result

Every method is a thin call of the public API (``CreateResource``,
``ExecuteResource``, ``ExecuteResourceStream``, ``Call``), so it is also the
reference for what a client in another language sends: the resource
configs and inputs are documented in docs/transformers.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, cast

from runtimes.wire.errors import InvalidResult
from runtimes.wire.metadata import BATCH_SIZE

from ._common import CallResult, Event
from .adapters import Adapter, Client

__all__ = ["TransformersAdapter"]


class DetailedClient(Client, Protocol):
    """What this adapter needs beyond :class:`Client`: reply metadata, and deleting."""

    def execute_resource_detailed(self, resource_id: str, inputs: dict[str, Any] | None = None, *,
                                  attachments: dict[str, bytes] | None = None, call_id: str | None = None,
                                  timeout: float | None = None) -> CallResult: ...

    def delete_resource(self, resource_id: str) -> bool: ...


def _config(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


class TransformersAdapter(Adapter):
    """Models, tokenizers, pipelines, datasets and training runs of one ``transformers`` bridge."""

    def __init__(self, client: Client, bridge: str, description: dict[str, Any]) -> None:
        super().__init__(client, bridge, description)
        self.namespace = str(description.get("bridge") or bridge)
        #: Model resources this adapter loaded: a pipeline given one of these ids as ``model`` uses it.
        self._models: set[str] = set()
        self._detailed = cast(DetailedClient, client)

    def _create(self, type_: str, config: dict[str, Any], resource_id: str | None,
                attachments: dict[str, bytes] | None = None, timeout: float | None = None) -> str:
        return self.client.create_resource(self.bridge, type_, config, resource_id=resource_id,
                                           attachments=attachments, timeout=timeout)

    # -- resources ---------------------------------------------------------------------------
    def load_model(self, name: str, *, hash: str | None = None, dtype: str | None = None,
                   device: str | None = None, kind: str | None = None, resource_id: str | None = None,
                   timeout: float | None = None) -> str:
        """A ``model`` resource from the model store; returns its id.

        ``dtype``: auto (default), float32, float16, bfloat16; ``device``:
        auto (default), cpu, cuda, cuda:N; ``kind``: the head to load
        (default from the model's config).
        """
        rid = self._create("model", _config(model=name, hash=hash, dtype=dtype, device=device, kind=kind),
                           resource_id, timeout=timeout)
        self._models.add(rid)
        return rid

    def load_tokenizer(self, name: str, *, hash: str | None = None, resource_id: str | None = None) -> str:
        """A ``tokenizer`` resource: the tokenizer saved with a store model; returns its id."""
        return self._create("tokenizer", _config(model=name, hash=hash), resource_id)

    def pipeline(self, task: str, model: str | None = None, *, model_resource: str | None = None,
                 tokenizer: str | None = None, batching: dict[str, Any] | None = None,
                 parameters: dict[str, Any] | None = None, hash: str | None = None, dtype: str | None = None,
                 device: str | None = None, resource_id: str | None = None, timeout: float | None = None) -> str:
        """A ``pipeline`` resource; returns its id.

        ``model`` is a store model's name, or the id of a model this adapter
        loaded (then it is shared, as ``model_resource``). ``tokenizer``: a
        tokenizer resource's id. ``batching``: ``{"max_batch_size", "max_batch_time_ms"}``
        turns on adaptive batching of concurrent calls. ``parameters``: defaults for every call.
        """
        if model is not None and model in self._models and model_resource is None:
            model, model_resource = None, model
        config = _config(task=task, model=model, model_resource=model_resource, tokenizer_resource=tokenizer,
                         batching=batching, parameters=parameters, hash=hash, dtype=dtype, device=device)
        return self._create("pipeline", config, resource_id, timeout=timeout)

    def create_dataset(self, rows: list[dict[str, Any]] | None = None, *, file: str | Path | bytes | None = None,
                       filename: str | None = None, format: str | None = None, resource_id: str | None = None,
                       **config: Any) -> str:
        """A ``dataset`` from ``rows``, or from ``file`` (a path, or bytes with ``filename``) sent as an attachment.

        ``config`` takes the dataset's other keys: ``text_column``,
        ``label_column``, ``split``, ``max_rows``, ``max_bytes``.
        """
        attachments = None
        if file is not None:
            if isinstance(file, bytes):
                name = filename or f"data.{format or 'jsonl'}"
                data = file
            else:
                name, data = filename or Path(file).name, Path(file).read_bytes()
            attachments = {name: data}
            config["attachment"] = name
        if rows is not None:
            config["rows"] = rows
        if format is not None:
            config["format"] = format
        return self._create("dataset", config, resource_id, attachments)

    def delete(self, resource_id: str) -> bool:
        """Delete a resource (a model's memory is freed when nothing else holds it)."""
        self._models.discard(resource_id)
        return self._detailed.delete_resource(resource_id)

    # -- running -----------------------------------------------------------------------------
    def run(self, resource_id: str, inputs: str | list[str], *, timeout: float | None = None,
            **parameters: Any) -> Any:
        """Run a pipeline (or model) on a text or a list of texts; the pipeline's output."""
        return self.run_detailed(resource_id, inputs, timeout=timeout, **parameters)[0]

    def run_detailed(self, resource_id: str, inputs: str | list[str], *, timeout: float | None = None,
                     **parameters: Any) -> tuple[Any, int]:
        """:meth:`run`, and how many calls the model invocation that answered it served (0: not batching)."""
        reply = self._detailed.execute_resource_detailed(resource_id, {"inputs": inputs, "parameters": parameters},
                                                         timeout=timeout)
        return reply.result["output"], int(reply.metadata.get(BATCH_SIZE, "0") or 0)

    def generate(self, resource_id: str, prompt: str, *, call_id: str | None = None, timeout: float | None = None,
                 **parameters: Any) -> Iterator[Any]:
        """Generate from a text-generation pipeline or a causal-LM model, streaming.

        Yields each new piece of text (a str) as the model produces it, then
        the final result (a dict: ``output`` and ``text``, the pieces joined).
        ``call_id`` lets another thread cancel it with ``mb.cancel(call_id)``.
        """
        events = self.client.stream_resource(resource_id, {"inputs": prompt, "parameters": parameters},
                                             call_id=call_id, timeout=timeout)
        for ev in events:
            if ev.kind == "chunk" and isinstance(ev.data, dict) and "text" in ev.data:
                yield ev.data["text"]
            elif ev.kind == "result":
                yield ev.data
                return
        raise InvalidResult("the generation stream ended without a result")

    def train(self, model: str, dataset: str, *, tokenizer: str | None = None, task: str | None = None,
              args: dict[str, Any] | None = None, export: str | dict[str, Any] | None = None,
              max_checkpoint_bytes: int | None = None, max_length: int | None = None,
              new_model: str | None = None, resource_id: str | None = None, call_id: str | None = None,
              timeout: float | None = None) -> Iterator[Event]:
        """Fine-tune model resource ``model`` on dataset resource ``dataset``: create a ``training_run`` and run it.

        Yields the run's events: a progress event per optimizer step (its
        message carries the loss), log chunks, then the result (``model_resource``:
        the fine-tuned model's id, ``steps``, ``final_loss``, ``losses``,
        ``export``). ``export`` (a name, or ``{"name": ...}``) also saves the
        result into the model store under that new name. ``call_id`` lets
        another thread cancel the run with ``mb.cancel(call_id)``.
        """
        if isinstance(export, str):
            export = {"name": export}
        config = _config(model_resource=model, dataset=dataset, tokenizer_resource=tokenizer, task=task, args=args,
                         export=export, max_checkpoint_bytes=max_checkpoint_bytes, max_length=max_length)
        run = self._create("training_run", config, resource_id)
        for ev in self.client.stream_resource(run, _config(model_resource=new_model), call_id=call_id,
                                              timeout=timeout):
            if ev.kind == "result" and isinstance(ev.data, dict) and ev.data.get("model_resource"):
                self._models.add(str(ev.data["model_resource"]))  # a pipeline may name it as its model
            yield ev

    # -- facts ---------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Resources by type, calls, generated tokens, memory and batching figures of this tenant's worker."""
        return self.client.call(self.bridge, f"{self.namespace}:stats", {})  # type: ignore[no-any-return]

    def devices(self) -> dict[str, Any]:
        """What the worker can place models on: torch threads, CPU limit, GPUs, the models it may load."""
        return self.client.call(self.bridge, f"{self.namespace}:devices", {})  # type: ignore[no-any-return]
