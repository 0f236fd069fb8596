"""Running ``Trainer`` under a call: per-step progress with the loss, cancel and deadline, checkpoint cap.

``Trainer`` reports the loss only every ``logging_steps``; a client watching
a run wants it every optimizer step. :class:`StepTrainer` records the loss
each ``training_step`` returns (already divided by the gradient accumulation
steps, so the sum over an optimizer step's micro-batches is that step's
loss) and :class:`CallCallback` sends it as one progress event per step.

Stopping: the callback sets ``control.should_training_stop`` when the call
is cancelled or past its deadline, at every step and micro-batch boundary,
and ``training_step`` refuses to start another forward pass, so a cancel
takes effect within one step; the caller then raises the call's own
``Cancelled`` / ``DeadlineExceeded`` (``ctx.check()``).

Checkpoints: :class:`CheckpointCap` keeps the run's checkpoint directories
under ``max_checkpoint_bytes``, deleting the oldest first; a single
checkpoint over the cap is deleted and the run fails with
RESOURCE_EXHAUSTED naming the figures.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core import CallContext
from ..wire.errors import QuotaExceeded

__all__ = ["CheckpointCap", "make_callback", "make_trainer", "tree_bytes"]

MiB = 1 << 20


def tree_bytes(root: Path) -> int:
    """The bytes of the regular files under ``root`` (0 when it does not exist)."""
    if not root.exists():
        return 0
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


class CheckpointCap:
    """Keeps the ``checkpoint-N`` directories under ``output_dir`` within ``max_bytes`` in all."""

    def __init__(self, output_dir: Path, max_bytes: int) -> None:
        self.output_dir, self.max_bytes = output_dir, max_bytes
        self.deleted: list[str] = []

    def checkpoints(self) -> list[Path]:
        """The checkpoint directories, oldest (lowest step) first."""
        found = [p for p in self.output_dir.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
        return sorted(found, key=lambda p: int(p.name[11:]))

    def enforce(self) -> None:
        """Delete the oldest checkpoints until the rest fit; refuse a newest one that alone does not.

        Raises:
            QuotaExceeded: the newest checkpoint alone is over the cap (it is deleted first).
        """
        kept = self.checkpoints()
        sizes = {p: tree_bytes(p) for p in kept}
        while kept and sum(sizes[p] for p in kept) > self.max_bytes:
            victim = kept.pop(0)
            shutil.rmtree(victim, ignore_errors=True)
            self.deleted.append(victim.name)
            if not kept:
                raise QuotaExceeded(
                    f"checkpoint {victim.name} takes {sizes[victim] / MiB:.2f} MiB, over the run's "
                    f"max_checkpoint_bytes of {self.max_bytes / MiB:.2f} MiB; it was deleted. Raise "
                    f"max_checkpoint_bytes, set args.save_only_model (no optimizer state), or leave save_steps "
                    f"out", details={"quota": "max_checkpoint_bytes", "checkpoint_bytes": sizes[victim],
                                     "max_checkpoint_bytes": self.max_bytes})

    def summary(self) -> dict[str, Any]:
        kept = self.checkpoints()
        return {"kept": [p.name for p in kept], "deleted": list(self.deleted),
                "bytes": sum(tree_bytes(p) for p in kept), "max_bytes": self.max_bytes}


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a diverged loss is reported as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _should_stop(ctx: CallContext) -> bool:
    left = ctx.remaining()
    return ctx.cancelled or (left is not None and left <= 0)


def make_trainer(**kwargs: Any) -> Any:
    """A :class:`StepTrainer` (the class is built on first use, so importing this module stays cheap)."""
    return _trainer_class()(**kwargs)


_TRAINER: list[type] = []


def _trainer_class() -> type:
    if _TRAINER:
        return _TRAINER[0]
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class StepTrainer(Trainer):
        """A Trainer that records each micro-batch's loss and stops between forward passes when asked."""

        def __init__(self, *, ctx: CallContext, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.ctx = ctx
            self.step_loss = 0.0
            # Nothing is printed: progress goes to the client as events.
            self.remove_callback(PrinterCallback)
            self.remove_callback(ProgressCallback)

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            self.ctx.check()  # cancel or deadline: do not start another forward pass
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.step_loss += float(loss.item())
            return loss

    _TRAINER.append(StepTrainer)
    return StepTrainer


def make_callback(ctx: CallContext, trainer_ref: Callable[[], Any], cap: CheckpointCap | None,
                  losses: list[float]) -> Any:
    """The callback that reports each step to ``ctx``, stops on cancel or deadline, and caps checkpoints.

    Args:
        trainer_ref: returns the trainer (made after the callback), whose ``step_loss`` it reads and resets.
        losses: each optimizer step's loss is appended here.
    """
    from transformers import TrainerCallback

    class CallCallback(TrainerCallback):
        lr: float | None = None

        def _stop(self, control: Any) -> Any:
            if _should_stop(ctx):
                control.should_training_stop = True
            return control

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            scheduler = trainer_ref().lr_scheduler  # the rate this step uses (on_step_end sees the next one)
            self.lr = scheduler.get_last_lr()[0] if scheduler is not None else None
            return self._stop(control)

        def on_substep_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            return self._stop(control)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            trainer = trainer_ref()
            loss, trainer.step_loss = trainer.step_loss, 0.0
            losses.append(loss)
            ctx.progress(state.global_step, state.max_steps, json.dumps({
                "step": state.global_step, "loss": _finite(loss),
                "epoch": round(float(state.epoch or 0), 4), "learning_rate": self.lr}))
            return self._stop(control)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kw: Any) -> Any:
            # Trainer's own log records (every logging_steps, evaluations, the summary) as stream chunks.
            entry = {k: _finite(v) for k, v in (logs or {}).items() if isinstance(v, (int, float, str))}
            ctx.emit({"type": "log", "step": state.global_step, **entry})
            return control

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if cap is not None:
                cap.enforce()
            return control

    return CallCallback()
