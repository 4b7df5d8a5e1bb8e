"""Hugging Face ``Trainer``: a callback that gives it the service (``pip install
'hpsearch[transformers]'``).

::

    from hpsearch.objectives.transformers import HpsearchCallback, trial_output_dir

    def objective(trial, params):
        callback = HpsearchCallback(trial)
        args = TrainingArguments(output_dir=trial_output_dir("out"), eval_strategy="epoch",
                                 save_strategy="epoch", ...)
        trainer = Trainer(model, args, train_dataset=..., eval_dataset=..., callbacks=[callback])
        trainer.train(resume_from_checkpoint=callback.resume_from())
        return callback.value

The Trainer keeps its own checkpoints (``checkpoint-STEP`` folders: model, optimizer, scheduler,
random states, the log); in a worker they go in the trial's slot (``trial_output_dir``), where a
retried or promoted trial finds them and resumes through the Trainer's own
``resume_from_checkpoint``. The callback reports each evaluation of the study's metric (``loss``
or ``eval_loss`` names the Trainer's ``eval_loss``) once its checkpoint is saved, then asks the
pruner: every rank gets the same prune or stop decision, raised on every rank at the same point.
Under torchrun (a command objective) leave ``trial`` out: the callback connects to the worker
when training begins.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from hpsearch.objectives import reporting
from hpsearch.objectives.context import current_context


def trial_output_dir(default: str) -> str:
    """The Trainer's ``output_dir`` for this trial: the slot's checkpoint folder in a worker (a
    retry on any node finds the Trainer's checkpoints there), else ``default``."""
    return current_context().checkpoint or default


class HpsearchCallback(TrainerCallback):
    def __init__(self, trial: Any = None, *, metric: str | None = None) -> None:
        """``metric``: the evaluated metric to track outside a worker (run by hand); in a worker
        the study's metric is reported."""
        self.trial, self.metric = trial, metric
        self.value: float | None = None  # the study's metric at the last evaluation
        self._pending: tuple[int, float] | None = None  # evaluated; reported once saved

    @staticmethod
    def resume_from() -> str | None:
        """The Trainer checkpoint a retried or promoted trial resumes from, for
        ``trainer.train(resume_from_checkpoint=...)``; None for a fresh trial."""
        folder = current_context().checkpoint
        if not folder or not os.path.isdir(folder):
            return None
        last: str | None = get_last_checkpoint(folder)  # type: ignore[no-untyped-call]
        return last

    def _key(self, metrics: dict[str, Any]) -> str | None:
        context = current_context()
        name = context.metrics[0] if context.metrics else self.metric
        if name is None:
            return None
        for key in (name, f"eval_{name}"):
            if key in metrics:
                return key
        raise ValueError(
            f"HpsearchCallback: the study's metric {name!r} is not among the evaluated metrics "
            f"{sorted(metrics)}; compute it in compute_metrics, or set [study] metric to one of "
            "them"
        )

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if self.trial is None:
            from hpsearch.objectives.command import connect

            self.trial = connect()  # the process group exists now (torchrun, under the Trainer)
        evaluations = _evaluations(state.log_history)
        if evaluations:
            # Resumed from a checkpoint: its last evaluation is reported again and decided on
            # (a kill may have come between the checkpoint and the decision).
            key = self._key(evaluations[-1])
            if key is not None:
                reporting.report_again(self.trial, len(evaluations) - 1, evaluations[-1][key])

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        key = self._key(metrics or {})
        if key is None:
            return
        self.value = float((metrics or {})[key])
        self._pending = (len(_evaluations(state.log_history)) - 1, self.value)
        if current_context().checkpoint:
            control.should_save = True  # reported once this evaluation's checkpoint is saved
        else:
            self._report()  # nothing to save outside a worker

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self._report()

    def _report(self) -> None:
        if self._pending is None:
            return
        step, value = self._pending
        self._pending = None
        name = current_context().metrics[0] if current_context().metrics else "value"
        reporting.report(self.trial, {name: value}, step)


def _evaluations(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Trainer's evaluations so far, from its log (a resumed Trainer restores it)."""
    return [entry for entry in history if any(key.startswith("eval_") for key in entry)]
