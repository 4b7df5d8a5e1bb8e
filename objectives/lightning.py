"""PyTorch Lightning: a callback that gives a ``Trainer`` the service (``pip install
'hpsearch[lightning]'``).

::

    from hpsearch.objectives.lightning import HpsearchCallback

    def objective(trial, params):
        callback = HpsearchCallback(trial)
        trainer = lightning.Trainer(max_epochs=params["epochs"], callbacks=[callback])
        trainer.fit(Model(params), data, ckpt_path=callback.resume_from())
        return callback.value

After each validation the callback saves the Trainer's own checkpoint to the trial's slot
(atomically, every rank taking part as ``Trainer.save_checkpoint`` wants), then reports the
study's metric from ``trainer.callback_metrics`` and asks the pruner, through
``hpsearch.report``: every rank gets the same prune or stop decision, raised on every rank at
the same point, so pruning works under DDP. ``resume_from()`` names the checkpoint a retried or
promoted trial resumes from (Lightning's own ``ckpt_path``). Under torchrun (a command
objective), leave ``trial`` out: the callback connects to the worker once Lightning has formed
the process group.
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl

from hpsearch.objectives import reporting
from hpsearch.objectives.context import current_context


class HpsearchCallback(pl.Callback):
    def __init__(self, trial: Any = None, *, metric: str | None = None) -> None:
        """``metric``: the logged metric to track outside a worker (run by hand); in a worker
        the study's metric is reported."""
        self.trial, self.metric = trial, metric
        self.value: float | None = None  # the study's metric at the last validation
        self._last: tuple[int, float | None] | None = None  # the report its checkpoint keeps
        self._resumed: tuple[int, float | None] | None = None

    @staticmethod
    def resume_from() -> str | None:
        """The checkpoint a retried or promoted trial resumes from, for ``Trainer.fit(...,
        ckpt_path=...)``; None for a fresh trial (or outside a worker)."""
        path = current_context().checkpoint
        return path if path and os.path.isfile(path) else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.trial is None:
            from hpsearch.objectives.command import connect

            self.trial = connect()  # the process group exists now (torchrun, under Lightning)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._last is not None:
            checkpoint["hpsearch"] = {"step": self._last[0], "report": self._last[1]}

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        saved = checkpoint.get("hpsearch")
        if isinstance(saved, dict):
            self._resumed = (int(saved["step"]), saved["report"])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._resumed is not None:
            # A kill may have come between the checkpoint and the decision on its report: the
            # resumed trial reports it again and asks, as hpsearch.get_checkpoint does.
            step, value = self._resumed
            self._resumed = None
            reporting.report_again(self.trial, step, value)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        context = current_context()
        name = context.metrics[0] if context.metrics else self.metric
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if name is not None and name not in metrics:
            raise ValueError(
                f"HpsearchCallback: the study's metric {name!r} is not among the logged metrics "
                f"{sorted(metrics)}; log it with self.log({name!r}, ...) in validation_step"
            )
        step = trainer.current_epoch
        self.value = metrics[name] if name is not None else None
        self._last = (step, self.value)
        if context.checkpoint:  # before the report: a decision there finds it on disk
            partial = f"{context.checkpoint}.partial"
            if trainer.is_global_zero:
                os.makedirs(os.path.dirname(os.path.abspath(partial)), exist_ok=True)
            trainer.save_checkpoint(partial)  # every rank takes part, rank 0 writes
            if trainer.is_global_zero:
                os.replace(partial, context.checkpoint)
            trainer.strategy.barrier("hpsearch-checkpoint")
        if name is not None and self.value is not None:
            reporting.report(self.trial, {name: self.value}, step)
        else:
            reporting.safe_point(self.trial)
