"""The DSPy bridge's resource types: signature, lm, program, dataset, optimization.

References between resources (a program's signature and lm, an
optimization's program and trainset) are resource ids in the same worker,
resolved when the referring resource is created.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Generator
from typing import Any

from runtimes.core import CallContext, InvalidArgument, Resource
from runtimes.wire import metadata as meta
from runtimes.wire.errors import AlreadyExists, ConfigError

from . import optimize, programs
from .base import DSPyBase
from .lms import LM_SCHEMA, LMSpec
from .signatures import SIGNATURE_SCHEMA, build_signature, is_inline, signature_info

# A streaming execute: yields chunks, returns the final result.
Stream = Generator[dict[str, Any], None, dict[str, Any]]


class DSPyResource(Resource):
    bridge: DSPyBase


class SignatureResource(DSPyResource):
    type_name = "signature"
    retry_safe = True
    description = "A DSPy signature from 'question -> answer' or from inputs/outputs field lists"
    config_schema = SIGNATURE_SCHEMA

    def create(self, ctx: CallContext) -> None:
        self.signature = build_signature(self.config)

    def info(self) -> dict[str, Any]:
        return signature_info(self.signature) if hasattr(self, "signature") else {}


class LMResource(DSPyResource):
    type_name = "lm"
    description = ("An LM configuration (model, temperature, max_tokens, api_key_secret); "
                   "provider 'dummy' runs offline on scripted answers")
    config_schema = LM_SCHEMA

    def create(self, ctx: CallContext) -> None:
        self.spec = LMSpec(self.config)
        self.lm = self.bridge.instrument(self.spec.build(self.bridge.secrets))

    def info(self) -> dict[str, Any]:
        return self.spec.info() if hasattr(self, "spec") else {}


class DatasetResource(DSPyResource):
    type_name = "dataset"
    description = "Training examples: {examples: [{field: value}], inputs: [input field names]}"
    config_schema = {
        "type": "object",
        "properties": {"examples": {"type": "array"}, "inputs": {"type": "array"}},
        "required": ["examples", "inputs"],
        "additionalProperties": False,
    }

    def create(self, ctx: CallContext) -> None:
        import dspy  # type: ignore[import-untyped]

        examples, inputs = self.config["examples"], self.config["inputs"]
        if not inputs or not all(isinstance(k, str) and k for k in inputs):
            raise InvalidArgument("dataset 'inputs' must be a non-empty list of field names")
        if not examples:
            raise InvalidArgument("dataset 'examples' must not be empty")
        for i, ex in enumerate(examples):
            if not isinstance(ex, dict):
                raise InvalidArgument(f"dataset example {i} must be an object of field -> value")
            missing = [k for k in inputs if k not in ex]
            if missing:
                raise InvalidArgument(f"dataset example {i} lacks input field(s): {', '.join(missing)}")
            if len(ex) == len(inputs):
                raise InvalidArgument(f"dataset example {i} has no label (non-input) field")
        self.examples = [dspy.Example(**ex).with_inputs(*inputs) for ex in examples]

    def info(self) -> dict[str, Any]:
        fields = sorted({k for ex in self.config["examples"] for k in ex})
        return {"size": len(self.config["examples"]), "inputs": list(self.config["inputs"]), "fields": fields}


class ProgramResource(DSPyResource):
    type_name = "program"
    description = ("A DSPy module (Predict, ChainOfThought) over a signature; execute with "
                   "the input fields, returns the output fields; streams tokens")
    config_schema = {
        "type": "object",
        "properties": {
            "signature": {"type": ["string", "object"],
                          "description": "signature resource id, or inline 'a -> b' / field lists"},
            "module": {"type": "string", "enum": list(programs.MODULES)},
            "lm": {"type": "string", "description": "lm resource id; default: dspy:configure_lm's"},
            "state": {"type": "object", "description": "learned state (demos) from an optimization"},
        },
        "required": ["signature"],
        "additionalProperties": False,
    }

    def create(self, ctx: CallContext) -> None:
        spec = self.config["signature"]
        if is_inline(spec):
            self.signature = build_signature(spec)
        else:
            self.signature = self.bridge.resources.get_as(spec, SignatureResource, "signature").signature
        self.module_name = self.config.get("module", "Predict")
        self.module = programs.build_module(self.module_name, self.signature)
        lm_id = self.config.get("lm")
        self.lm_resource = self.bridge.resources.get_as(lm_id, LMResource, "lm") if lm_id is not None else None
        if "state" in self.config:
            programs.load_state(self.module, self.config["state"])
        self.optimized_from = ""

    def current_lm(self) -> Any:
        if self.lm_resource is not None:
            return self.lm_resource.lm
        lm = self.bridge.default_lm
        if lm is None:
            raise ConfigError(
                f"program {self.resource_id!r} has no 'lm' and the bridge has no default LM; "
                f"create it with an lm resource id or call dspy:configure_lm first"
            )
        return lm

    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> Stream:
        programs.check_inputs(self.signature, inputs)
        lm = self.current_lm()
        ctx.check()
        self.bridge.count("executions")
        if ctx.streaming:
            return (yield from programs.stream(self.module, self.signature, lm, inputs))
        return programs.outputs_of(programs.run(self.module, lm, inputs), self.signature)

    def info(self) -> dict[str, Any]:
        if not hasattr(self, "module"):
            return {}
        out: dict[str, Any] = {
            "module": self.module_name,
            "signature": signature_info(self.signature),
            "lm": self.config.get("lm") or "default",
            "demos": {name: len(p.demos) for name, p in self.module.named_predictors()},
        }
        if self.optimized_from:
            out["optimized_from"] = self.optimized_from
        return out


class OptimizationResource(DSPyResource):
    type_name = "optimization"
    description = ("Compile a program on a dataset (BootstrapFewShot, LabeledFewShot) with a named "
                   "metric; execute streams progress and creates a new program resource")
    config_schema = {
        "type": "object",
        "properties": {
            "program": {"type": "string"},
            "trainset": {"type": "string"},
            "optimizer": {"type": "string", "enum": list(optimize.OPTIMIZERS)},
            "metric": {"type": "string", "enum": list(optimize.METRICS)},
            "metric_fields": {"type": "array"},
            "optimizer_args": {"type": "object"},
        },
        "required": ["program", "trainset"],
        "additionalProperties": False,
    }

    def create(self, ctx: CallContext) -> None:
        cfg = self.config
        self.program = self.bridge.resources.get_as(cfg["program"], ProgramResource, "program")
        self.trainset = self.bridge.resources.get_as(cfg["trainset"], DatasetResource, "trainset")
        self.optimizer = cfg.get("optimizer", "BootstrapFewShot")
        self.metric = cfg.get("metric", "exact_match")
        self.args = cfg.get("optimizer_args", {})
        optimize.check_optimizer(self.optimizer, self.args, self.metric)
        fields = cfg.get("metric_fields")
        if fields is not None and (not fields or not all(f in self.program.signature.output_fields
                                                         for f in fields)):
            raise InvalidArgument(
                f"metric_fields must name output fields of the program: "
                f"{', '.join(self.program.signature.output_fields)}"
            )
        self.metric_fields = fields
        self.runs: list[str] = []

    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> Stream:
        unknown = sorted(set(inputs) - {"program_id"})
        if unknown:
            raise InvalidArgument(f"optimization inputs: unexpected field(s): {', '.join(unknown)}")
        new_id = inputs.get("program_id") or f"{self.resource_id}.compiled.{uuid.uuid4().hex[:12]}"
        if not isinstance(new_id, str):
            raise InvalidArgument("optimization input 'program_id' must be a string")
        if new_id in self.bridge.resources:  # before the (long) compile; add() checks again
            raise AlreadyExists(f"resource {new_id!r} already exists")
        trainset = self.trainset.examples
        metric = optimize.ProgressMetric(self.metric, self.metric_fields,
                                         list(self.program.signature.output_fields), len(trainset), ctx)
        ctx.progress(0, len(trainset), f"{self.optimizer} on {len(trainset)} examples")
        compiled = optimize.compile_program(self.optimizer, self.args, metric, self.program.module,
                                            trainset, self.program.current_lm())
        ctx.check()
        config = {k: v for k, v in self.program.config.items() if k != "state"}
        config["state"] = programs.dump_state(compiled)
        new = ProgramResource(self.bridge, new_id, config)
        new.create(ctx)
        new.optimized_from = self.resource_id
        self.bridge.resources.add(new)
        self.runs.append(new_id)
        self.bridge.count("optimizations")
        demos = new.info()["demos"]
        # Tell the orchestrator about the new program so it records (and can re-create) it.
        ctx.metadata[meta.CREATED_RESOURCES] = json.dumps(
            [{"resource_id": new_id, "type": ProgramResource.type_name, "config": config, "info": new.info()}])
        ctx.progress(len(trainset), len(trainset), f"compiled {new_id} with {sum(demos.values())} demo(s)")
        for name, count in demos.items():
            yield {"type": "demos", "predictor": name, "count": count}
        return {
            "program_id": new_id,
            "resource_type": ProgramResource.type_name,
            "config": config,
            "info": new.info(),
            "metric": {"name": self.metric, "calls": metric.calls, "passed": metric.passed},
        }

    def info(self) -> dict[str, Any]:
        return {
            "program": self.config["program"],
            "trainset": self.config["trainset"],
            "optimizer": self.config.get("optimizer", "BootstrapFewShot"),
            "metric": self.config.get("metric", "exact_match"),
            "runs": list(getattr(self, "runs", [])),
        }

