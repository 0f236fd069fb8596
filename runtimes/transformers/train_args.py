"""Which ``TrainingArguments`` a client may set, in what ranges, and the ones mlbridge fixes.

``TrainingArguments`` has well over a hundred fields, and some of them reach
outside the sandbox's intent (``push_to_hub``, ``hub_token``, ``report_to``
integrations, ``deepspeed`` configs read from paths, dataloader worker
processes, ``torch_compile``). A client names only the fields of
:data:`ALLOWED`, each checked against its range before anything trains; the
rest are fixed here: output under the run's private directory, no
reporting, no hub, no progress bars, no dataloader processes, checkpoints
only when ``save_steps`` asks for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import InvalidArgument

__all__ = ["ALLOWED", "Rule", "build_training_args", "check_args"]

_BIG = 10_000_000
_SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class Rule:
    """One allowed argument: its JSON kind, its bounds (``open_low``: strictly above ``low``), or its choices."""

    kind: str  # "int" | "number" | "bool" | "choice"
    low: float = 0
    high: float = 0
    open_low: bool = False
    choices: tuple[str, ...] = ()

    def check(self, name: str, value: Any) -> None:
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise InvalidArgument(f"training arg {name} must be true or false, got {value!r}")
            return
        if self.kind == "choice":
            if value not in self.choices:
                raise InvalidArgument(f"training arg {name} must be one of {', '.join(self.choices)}, got {value!r}")
            return
        wrong_kind = self.kind == "int" and not isinstance(value, int)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or wrong_kind:
            raise InvalidArgument(f"training arg {name} must be {'an integer' if self.kind == 'int' else 'a number'}"
                                  f", got {value!r}")
        number = float(value)
        low_ok = number > self.low if self.open_low else number >= self.low
        if not (low_ok and number <= self.high):
            bracket = "(" if self.open_low else "["
            raise InvalidArgument(f"training arg {name} must be in {bracket}{self.low:g}, {self.high:g}], "
                                  f"got {value!r}")


#: The ``TrainingArguments`` fields a client may set, and their ranges.
ALLOWED: dict[str, Rule] = {
    "num_train_epochs": Rule("number", 0, 1000, open_low=True),
    "max_steps": Rule("int", 1, _BIG),
    "learning_rate": Rule("number", 0, 1, open_low=True),
    "per_device_train_batch_size": Rule("int", 1, 4096),
    "per_device_eval_batch_size": Rule("int", 1, 4096),
    "gradient_accumulation_steps": Rule("int", 1, 1024),
    "seed": Rule("int", 0, _SEED_MAX),
    "data_seed": Rule("int", 0, _SEED_MAX),
    "logging_steps": Rule("int", 1, _BIG),
    "save_steps": Rule("int", 1, _BIG),
    "save_total_limit": Rule("int", 1, 1000),
    "save_only_model": Rule("bool"),
    "eval_steps": Rule("int", 1, _BIG),
    "weight_decay": Rule("number", 0, 1),
    "warmup_steps": Rule("int", 0, _BIG),
    "lr_scheduler_type": Rule("choice", choices=("linear", "cosine", "cosine_with_restarts", "polynomial",
                                                 "constant", "constant_with_warmup", "inverse_sqrt")),
    "optim": Rule("choice", choices=("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop")),
    "adam_beta1": Rule("number", 0, 0.999999),
    "adam_beta2": Rule("number", 0, 0.999999),
    "adam_epsilon": Rule("number", 0, 1, open_low=True),
    "max_grad_norm": Rule("number", 0, 1e6),
    "label_smoothing_factor": Rule("number", 0, 0.999999),
    "gradient_checkpointing": Rule("bool"),
}


def check_args(args: Any) -> dict[str, Any]:
    """The client's ``args`` object, every key allowed and every value in range.

    Raises:
        InvalidArgument: not an object, a key outside :data:`ALLOWED`, or a value out of range.
    """
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise InvalidArgument("training 'args' must be an object of TrainingArguments fields")
    unknown = sorted(set(args) - set(ALLOWED))
    if unknown:
        raise InvalidArgument(f"training args {', '.join(unknown)} are not allowed; allowed: "
                              f"{', '.join(sorted(ALLOWED))}")
    for name, value in args.items():
        ALLOWED[name].check(name, value)
    if "save_total_limit" in args and "save_steps" not in args:
        raise InvalidArgument("training arg save_total_limit needs save_steps (checkpoints are off without it)")
    return dict(args)


def build_training_args(args: Mapping[str, Any], output_dir: Path, *, use_cpu: bool, evaluate: bool) -> Any:
    """``TrainingArguments`` from checked client ``args`` plus the fields mlbridge fixes.

    Args:
        output_dir: the run's private directory (checkpoints land here).
        use_cpu: train on the CPU (the model's device is the CPU).
        evaluate: a test split exists, so ``eval_steps`` may schedule evaluations.
    """
    from transformers import TrainingArguments

    fixed: dict[str, Any] = {
        "output_dir": str(output_dir),
        "report_to": "none",
        "push_to_hub": False,
        "use_cpu": use_cpu,
        "disable_tqdm": True,
        "log_level": "error",
        "logging_strategy": "steps",
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": not use_cpu,
        "save_strategy": "steps" if "save_steps" in args else "no",
        "eval_strategy": "steps" if evaluate and "eval_steps" in args else "no",
    }
    merged = {"num_train_epochs": 1.0, "seed": 0, **args, **fixed}
    try:
        return TrainingArguments(**merged)
    except ValueError as exc:  # a combination TrainingArguments refuses
        raise InvalidArgument(f"training args refused by transformers: {exc}") from None
