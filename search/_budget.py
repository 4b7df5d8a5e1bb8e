"""The global trial budget as a queue of WAITING trials ("slots") in the study itself.

Optuna's only atomic claim is a WAITING -> RUNNING transition: exactly one process wins it, on
every storage. So the budget is a queue: ``n_trials`` slot trials are enqueued, workers only ever
claim WAITING trials (never create new ones), and a study can never run more than its budget,
however many workers on however many nodes race for the last slot.

Enqueuing all slots up front would make every storage read pay for thousands of unfinished rows,
so slots come in batches: the first slot of a batch carries the range of the next batch, and the
one worker that claims it enqueues that range. A stale trial's retry copies its system attributes
(Optuna's ``RetryHeartbeatStaleTrialCallback``), so the retry inherits the slot and the duty.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

SLOT = "hpsearch:slot"
REFILL = "hpsearch:refill"
ERROR = "error"  # user attribute set when the objective raised; such a trial used its slot
CHECKPOINT = "checkpoint"  # user attribute: the trial's checkpoint file
BATCH = 64


def _slot_trial(slot: int, n_trials: int) -> FrozenTrial:
    attrs: dict[str, object] = {SLOT: slot}
    if slot % BATCH == 0 and slot + BATCH < n_trials:
        attrs[REFILL] = [slot + BATCH, min(slot + 2 * BATCH, n_trials)]
    return optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=attrs)


def enqueue_slots(study: optuna.Study, slots: Iterable[int], n_trials: int) -> None:
    for slot in slots:
        study.add_trial(_slot_trial(slot, n_trials))


def enqueue_first_batch(study: optuna.Study, n_trials: int) -> None:
    enqueue_slots(study, range(min(BATCH, n_trials)), n_trials)


def refill(study: optuna.Study, claimed: FrozenTrial, n_trials: int) -> None:
    """Enqueue the next batch if ``claimed`` carries that duty and nobody did it yet."""
    next_range = claimed.system_attrs.get(REFILL)
    if not next_range:
        return
    start, stop = next_range
    # A previous holder of this duty may have died half-way through the batch.
    existing = {t.system_attrs.get(SLOT) for t in study.get_trials(deepcopy=False)}
    enqueue_slots(study, [s for s in range(start, stop) if s not in existing], n_trials)


def claim_slot(study: optuna.Study) -> int | None:
    """Atomically take one WAITING trial and return its trial id, or None if none is left."""
    # The study's own storage (Optuna's cache over RDBStorage), so that cached reads see the claim.
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return int(trial._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker claimed and finished it in between
    return None


@dataclass(frozen=True)
class BudgetState:
    n_trials: int
    complete: int
    pruned: int
    failed: int  # the objective raised: the slot is used
    running: int
    waiting: int
    lost: int  # failed without an error: a dead worker's trial, re-queued as a retry
    enqueued: int  # slots put in the queue so far

    @property
    def used(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def finished(self) -> bool:
        """Nothing to claim and nothing running that could still enqueue or come back.

        A batch is enqueued by a RUNNING trial, so ``running == 0`` also means none is coming.
        """
        return self.waiting == 0 and self.running == 0


def budget_state(trials: Iterable[FrozenTrial], n_trials: int) -> BudgetState:
    counts = dict.fromkeys(("complete", "pruned", "failed", "running", "waiting", "lost"), 0)
    slots: set[int] = set()
    for trial in trials:
        slot = trial.system_attrs.get(SLOT)
        if slot is not None:
            slots.add(int(slot))
        if trial.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif trial.state == TrialState.PRUNED:
            counts["pruned"] += 1
        elif trial.state == TrialState.FAIL:
            counts["failed" if ERROR in trial.user_attrs else "lost"] += 1
        elif trial.state == TrialState.RUNNING:
            counts["running"] += 1
        elif trial.state == TrialState.WAITING:
            counts["waiting"] += 1
    return BudgetState(n_trials=n_trials, enqueued=len(slots), **counts)
