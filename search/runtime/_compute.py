"""Compute budgets: epochs and device-hours, beside the trial budget; the first reached ends a study.

What is spent is read from what trials record, so every worker on every node sees the same sum:

- **epochs**: the evaluations a trial reported itself (``trial.report``, one per epoch). A trial
  resumed from a checkpoint (a retry, a paused configuration's continuation, a PBT member) first
  reports the checkpoint's last epoch again, so that a decision a kill interrupted is made; that
  report is not counted when the epoch's first report is in its curve already (the trial that
  trained it counted it), so a restored epoch is never counted twice. The count is stored with
  the trial's number (attribute ``EPOCHS``): a retry copies its parent's attributes, and the
  number tells the copy from its own count.
- **device-seconds**: each trial's wall time (start to end, or to now while it runs) times its
  devices. A dead worker's trial counts until it is reaped (its grace period), so lost work is
  included, and over-counted rather than under-counted.

A worker checks before it claims a slot, and a running trial at each report: once a budget is
spent, ``should_prune`` answers True and the trial ends PRUNED with its last reported value and
the user attribute ``budget_stop`` naming the budget. The overshoot is thus at most one
evaluation interval per running trial (an objective that never asks ``should_prune`` is stopped
by ``TrialPruned`` at its next report instead).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from hpsearch.attrs import BUDGET_STOP, EPOCHS, RESUMED_FROM_EPOCH, WORKER
from hpsearch.search.results._multi_objective import MultiObjectiveTrial
from hpsearch.search.spec._study_file import StudySpec
from hpsearch.storage._optuna_internals import storage_of

UNITS = ("epochs", "device_hours")


def trial_epochs(trial: FrozenTrial) -> int:
    """The epochs this trial trained itself (none of those its checkpoint restored)."""
    value = trial.system_attrs.get(EPOCHS)
    if isinstance(value, list) and len(value) == 2 and value[0] == trial.number:
        return int(value[1])
    return 0


def trial_devices(trial: FrozenTrial) -> int:
    """The devices a trial holds: its group's world size (every node's ranks), else 1."""
    info = trial.user_attrs.get(WORKER)
    size = info.get("world_size") if isinstance(info, dict) else None
    return size if isinstance(size, int) and size >= 1 else 1


def trial_device_seconds(trial: FrozenTrial, now: dt.datetime) -> float:
    if trial.datetime_start is None:
        return 0.0  # never claimed
    end = trial.datetime_complete or now  # RUNNING: so far
    return max(0.0, (end - trial.datetime_start).total_seconds()) * trial_devices(trial)


@dataclass(frozen=True)
class Spent:
    epochs: int
    device_seconds: float

    @property
    def device_hours(self) -> float:
        return self.device_seconds / 3600


@dataclass(frozen=True)
class ComputeBudget:
    epochs: int | None
    device_hours: float | None

    @classmethod
    def of(cls, spec: StudySpec) -> ComputeBudget | None:
        """The study's compute budget; None when it has only a trial budget."""
        budget = cls(spec.budget_epochs, spec.budget_device_hours)
        return None if budget.epochs is None and budget.device_hours is None else budget

    def reached(self, spent: Spent) -> str | None:
        """The unit of the budget that is spent ("epochs", "device_hours"), or None."""
        if self.epochs is not None and spent.epochs >= self.epochs:
            return "epochs"
        if self.device_hours is not None and spent.device_hours >= self.device_hours:
            return "device_hours"
        return None

    def document(self, spent: Spent) -> dict[str, dict[str, float]]:
        """Spent and remaining in each unit the study uses (status, export, the report)."""
        doc: dict[str, dict[str, float]] = {}
        if self.epochs is not None:
            doc["epochs"] = {
                "limit": self.epochs,
                "spent": spent.epochs,
                "remaining": max(0, self.epochs - spent.epochs),
            }
        if self.device_hours is not None:
            doc["device_hours"] = {
                "limit": self.device_hours,
                "spent": round(spent.device_hours, 6),
                "remaining": round(max(0.0, self.device_hours - spent.device_hours), 6),
            }
        return doc


def spent(trials: Iterable[FrozenTrial], now: dt.datetime | None = None) -> Spent:
    now = now or dt.datetime.now()
    epochs, seconds = 0, 0.0
    for trial in trials:
        epochs += trial_epochs(trial)
        seconds += trial_device_seconds(trial, now)
    return Spent(epochs, seconds)


def budget_reached(trials: Iterable[FrozenTrial], spec: StudySpec) -> str | None:
    """The unit of the study's compute budget that is spent, or None (also without one)."""
    budget = ComputeBudget.of(spec)
    return None if budget is None else budget.reached(spent(trials))


def compute_document(trials: Iterable[FrozenTrial], spec: StudySpec) -> dict[str, Any]:
    budget = ComputeBudget.of(spec)
    return {} if budget is None else budget.document(spent(trials))


class ComputeMeter:
    """A worker's view of its study's compute budget, read at each claim and each report.

    A finished trial never changes: its share is parsed once and kept, so a read parses only the
    unfinished trials (Optuna's cache already re-reads only those from the database).
    """

    def __init__(self, study: optuna.Study, budget: ComputeBudget) -> None:
        self.study, self.budget = study, budget
        self._finished: dict[int, tuple[int, float]] = {}

    def spent(self) -> Spent:
        now = dt.datetime.now()
        epochs, seconds = 0, 0.0
        for trial in self.study.get_trials(deepcopy=False):
            share = self._finished.get(trial.number)
            if share is None:
                share = trial_epochs(trial), trial_device_seconds(trial, now)
                if trial.state.is_finished():
                    self._finished[trial.number] = share
            epochs += share[0]
            seconds += share[1]
        return Spent(epochs, seconds)

    def reached(self) -> str | None:
        return self.budget.reached(self.spent())

    def trial(self, study: optuna.Study, trial_id: int) -> optuna.Trial:
        """The trial an objective sees, counting its epochs and stopping it once spent."""
        metered = _MeteredMultiObjectiveTrial if len(study.directions) > 1 else _Metered
        return metered(study, trial_id, self)


class _Watch:
    def __init__(self, meter: ComputeMeter, trial_id: int, number: int) -> None:
        self.meter, self.trial_id, self.number = meter, trial_id, number
        self.epochs = 0
        self.stopped: str | None = None  # the budget found spent at a report
        self.recorded = False
        self.restored: int | None = None  # the epoch of the checkpoint the trial resumed from

    def reported(self, *, again: bool) -> None:
        """A report; ``again``: the restored epoch's, whose training was counted already."""
        if not again:
            self.epochs += 1
            if self.meter.budget.epochs is not None:
                storage_of(self.meter.study).set_trial_system_attr(
                    self.trial_id, EPOCHS, [self.number, self.epochs]
                )
        if self.stopped is not None:
            # The objective trained on without asking should_prune (or despite its answer).
            self.stop()
            raise optuna.TrialPruned(self.reason)
        self.stopped = self.meter.reached()

    def stop(self) -> None:
        if self.recorded:
            return
        self.recorded = True
        storage_of(self.meter.study).set_trial_user_attr(self.trial_id, BUDGET_STOP, self.stopped)

    @property
    def reason(self) -> str:
        return f"stopped: the study's {self.stopped} budget is spent"


class _Metered(optuna.Trial):
    def __init__(self, study: optuna.Study, trial_id: int, meter: ComputeMeter) -> None:
        super().__init__(study, trial_id)
        self.watch = _Watch(meter, trial_id, self.number)

    def set_user_attr(self, key: str, value: Any) -> None:
        super().set_user_attr(key, value)
        if key == RESUMED_FROM_EPOCH and isinstance(value, int) and value >= 1:
            # Every resuming objective says so just before it reports that epoch again.
            self.watch.restored = value - 1

    def report(self, value: float, step: int) -> None:
        # Only the first report after the resume can be the restored epoch's again.
        again = step == self.watch.restored and self._has_report(step)
        self.watch.restored = None
        super().report(value, step)
        self.watch.reported(again=again)

    def _has_report(self, step: int) -> bool:
        return int(step) in self._cached_frozen_trial.intermediate_values

    def should_prune(self) -> bool:
        if self.watch.stopped is not None:
            self.watch.stop()
            return True
        return super().should_prune()


class _MeteredMultiObjectiveTrial(_Metered, MultiObjectiveTrial):
    def _has_report(self, step: int) -> bool:
        return int(step) in self._curve


def budget_stop_reason(trial: optuna.Trial) -> str | None:
    """Why a metered trial was stopped by a compute budget; None if it was not."""
    if isinstance(trial, _Metered) and trial.watch.stopped is not None:
        return trial.watch.reason
    return None
