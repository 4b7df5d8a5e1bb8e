"""Asynchronous successive halving that pauses and promotes (ASHA, Li et al. 2020).

Optuna has no PAUSED state and a finished trial cannot change, so every Optuna trial stays
honest: a configuration that reaches a rung outside the top 1/eta of that rung ends its trial
there as PRUNED (it did stop at that step; samplers read it by its intermediate values), marked
paused, its slot's checkpoint kept. When later results put it in the top 1/eta, a worker
enqueues, exactly once, a WAITING continuation: the same slot and params and the curve so far.
Whoever claims it resumes from the slot's checkpoint (the engine restores epoch, optimizer,
schedule and RNG), and only a continuation that trains to ``max_epochs`` ends COMPLETE.

The decision at a rung (made as the engine reports the rung's epoch, through the pruner seam):
continue if the configuration is in the top ``floor(n / eta)`` of the ``n`` configurations that
reached the rung, else pause. Paused trials are promoted, highest rung first, whenever a worker
looks for work, and their continuations are claimed before fresh slots. When nothing else is
left, the best paused configuration of the highest rung is promoted so that the budget ends
with a configuration trained to ``max_epochs``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import (
    PAUSED,
    PAUSED_AT_RUNG,
    PROMOTED,
    PROMOTED_FROM,
    PROMOTED_RUNG,
    RESUMED_AT_RUNG,
    SAMPLER,
    SLOT,
)
from hpsearch.search.spec._scheduler import Schedule
from hpsearch.storage import hot_path_of
from hpsearch.storage._optuna_internals import storage_of, study_id_of, trial_id_of

log = logging.getLogger("hpsearch.worker")


def paused_rung(trial: FrozenTrial) -> int | None:
    """The rung a trial is paused at, or None. A retry of a worker killed while pausing copies
    the attribute with the dead trial's number: it names another trial and is not a pause."""
    mark = trial.system_attrs.get(PAUSED)
    if trial.state != TrialState.PRUNED or not isinstance(mark, list) or len(mark) != 2:
        return None
    return int(mark[1]) if mark[0] == trial.number else None


def promoted_from(trial: FrozenTrial) -> int | None:
    """The paused trial a continuation (or its retry) resumes."""
    number = trial.system_attrs.get(PROMOTED_FROM)
    return None if number is None else int(number)


def proposer(trial: FrozenTrial) -> dict[str, str]:
    """The user attribute naming the sampler that proposed ``trial``'s params (the auto
    sampler records it), for a continuation that goes on with the same params: enqueued, it is
    proposed by no sampler, and without it ``export`` of a promoted best would name none."""
    name = trial.user_attrs.get(SAMPLER)
    return {SAMPLER: name} if name is not None else {}


def _configuration(trial: FrozenTrial) -> int:
    """Configurations are slots: a paused trial, its continuations and their retries share one."""
    slot = trial.system_attrs.get(SLOT)
    return int(slot) if slot is not None else -1 - trial.number


def rung_values(trials: Iterable[FrozenTrial], step: int) -> dict[int, float]:
    """Each configuration's value at the report ``step`` (an epoch index), by slot."""
    values: dict[int, float] = {}
    for trial in trials:
        value = trial.intermediate_values.get(step)
        if value is not None and math.isfinite(value):
            values[_configuration(trial)] = value
    return values


def in_top(value: float, others: Sequence[float], eta: int, *, maximize: bool) -> bool:
    """Whether ``value`` is among the top ``floor(n / eta)`` of ``others`` (which holds it)."""
    better = sum(1 for v in others if (v > value if maximize else v < value))
    return better < len(others) // eta


class AshaPruner(optuna.pruners.BasePruner):
    """The decision at a rung, taken where the engine reports: True pauses the trial.

    The mark is written before the trial ends, so the worker (and, on a retry, nobody) reads it
    as a pause; a NaN loss or an interrupt after a rung is never taken for one.
    """

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        rung = None if step is None else self.schedule.rung_at(step)
        if step is None or rung is None or trial.system_attrs.get(PROMOTED_RUNG) == rung:
            return False  # a continuation resumes past the rung it was promoted from
        value = trial.intermediate_values[step]
        values = rung_values(study.get_trials(deepcopy=False), step)
        values[_configuration(trial)] = value
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        if math.isfinite(value) and in_top(
            value, list(values.values()), self.schedule.reduction_factor, maximize=maximize
        ):
            if PAUSED_AT_RUNG in trial.user_attrs:
                # The retry of a worker killed as it paused: this time the configuration goes on.
                storage_of(study).set_trial_user_attr(trial_id_of(trial), PAUSED_AT_RUNG, None)
            return False
        storage = storage_of(study)
        storage.set_trial_system_attr(trial_id_of(trial), PAUSED, [trial.number, rung])
        storage.set_trial_user_attr(trial_id_of(trial), PAUSED_AT_RUNG, rung)
        return True


def paused_trials(trials: Sequence[FrozenTrial]) -> list[tuple[FrozenTrial, int]]:
    """The paused trials not promoted (yet), each with its rung."""
    promoted = {number for t in trials if (number := promoted_from(t)) is not None}
    return [
        (t, rung)
        for t in trials
        if (rung := paused_rung(t)) is not None and t.number not in promoted
    ]


def promote(study: optuna.Study, storage: object, schedule: Schedule, *, last: bool) -> bool:
    """Enqueue a continuation for each paused configuration now in the top 1/eta of its rung,
    highest rung first; ``last``: nothing else is left to run, so the best paused configuration
    of the highest rung goes on too. Returns whether anything was enqueued.
    """
    trials = study.get_trials(deepcopy=False)
    paused = [(rung, t) for t, rung in paused_trials(trials)]
    if not paused:
        return False
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    eta = schedule.reduction_factor
    added = False
    for rung in sorted({rung for rung, _ in paused}, reverse=True):
        values = rung_values(trials, schedule.rungs[rung] - 1)
        at_rung = [t for r, t in paused if r == rung]
        promotable = [
            t
            for t in at_rung
            if math.isfinite(_value(t))
            and in_top(_value(t), list(values.values()), eta, maximize=maximize)
        ]
        if not promotable and last and not added and not _any_finished(trials, schedule):
            # The budget is spent and nothing is running: finish the best configuration that
            # got furthest, or the study would end without one trained to max_epochs.
            finite = [t for t in at_rung if math.isfinite(_value(t))]
            promotable = [(max if maximize else min)(finite, key=_value)] if finite else []
        for trial in promotable:
            added = _enqueue_continuation(study, storage, trial, rung) or added
    return added


def _value(trial: FrozenTrial) -> float:
    """A paused trial's value at its rung: its last report."""
    step = trial.last_step
    return math.nan if step is None else trial.intermediate_values[step]


def _any_finished(trials: Iterable[FrozenTrial], schedule: Schedule) -> bool:
    """Whether some configuration reported its last epoch (trained to max_epochs)."""
    return any(schedule.max_epochs - 1 in t.intermediate_values for t in trials)


def enqueue_once(
    study: optuna.Study, storage: object, key: str, paused: FrozenTrial, continuation: FrozenTrial
) -> bool:
    """Add ``continuation`` of ``paused`` to the queue unless a worker did already; whether
    this call added it. On our RDB storage the study system attribute ``key`` is set in the same
    transaction, so exactly one of any number of racing workers adds it; elsewhere a re-read of
    the trials narrows the race."""
    fast = hot_path_of(storage)
    if fast is not None:
        return fast.enqueue_once(study_id_of(study), key, [continuation])
    if any(promoted_from(t) == paused.number for t in study.get_trials(deepcopy=False)):
        return False
    study.add_trial(continuation)
    return True


def _enqueue_continuation(
    study: optuna.Study, storage: object, paused: FrozenTrial, rung: int
) -> bool:
    """The paused trial's continuation, at most once per configuration and rung however many
    workers promote it at once (our RDB storage; elsewhere a re-read narrows the race)."""
    slot = _configuration(paused)
    continuation = optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=paused.params,
        distributions=paused.distributions,
        # The curve so far: the COMPLETE trial holds the configuration's whole curve.
        intermediate_values=paused.intermediate_values,
        user_attrs={RESUMED_AT_RUNG: rung, "promoted_from": paused.number, **proposer(paused)},
        system_attrs={
            SLOT: slot,
            PROMOTED_FROM: paused.number,
            PROMOTED_RUNG: rung,
            # Optuna's mark of an enqueued trial: samplers (grid) leave its params alone.
            "fixed_params": dict(paused.params),
        },
    )
    added = enqueue_once(study, storage, f"{PROMOTED}{slot}:{rung}", paused, continuation)
    if added:
        log.info("trial %d promoted from rung %d: its configuration resumes", paused.number, rung)
    return added
