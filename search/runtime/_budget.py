"""The global trial budget as a queue of WAITING trials ("slots") in the study itself.

Optuna's only atomic claim is a WAITING -> RUNNING transition: exactly one process wins it, on
every storage. So the budget is a queue: ``n_trials`` slot trials are enqueued, workers only ever
claim WAITING trials (never create new ones), and a study can never run more than its budget,
however many workers on however many nodes race for the last slot.

Enqueuing all slots up front would make every storage read pay for thousands of unfinished rows,
so slots come in batches: the first slot of a batch carries the range of the next batch, and the
one worker that claims it enqueues that range. A stale trial's retry copies its system attributes
(Optuna's ``RetryHeartbeatStaleTrialCallback``), so the retry inherits the slot and the duty.

A raised budget (``raise_budget_slots``) enqueues the slots after the old last one: the rest of
the old last batch as a batch of its own, then the first whole batch, whose first slot carries
the duty for the next. Whoever enqueues reads the budget as stored now, not as it was when the
worker started, so a duty taken before a raise still carries the queue to the new end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import (
    ENQUEUED,
    ERROR,
    PROMOTED_FROM,
    REFILL,
    REQUEUED,
    RETRY_HISTORY,
    RETRY_OF,
    SLOT,
    SPEC,
    WORKER,
)
from hpsearch.search.runtime._scheduler import paused_rung, paused_trials
from hpsearch.storage import hot_path_of
from hpsearch.storage._hot_path import RetryTemplates
from hpsearch.storage._optuna_internals import (
    add_claimed_trial_to_cache,
    storage_of,
    study_id_of,
    trial_id_of,
)

log = logging.getLogger("hpsearch.worker")


def worker_of(trial: FrozenTrial) -> dict[str, object]:
    """Where a trial ran: host, pid and devices (the worker's GPUs, or "cpu"); None if unknown."""
    info = trial.user_attrs.get(WORKER)
    info = info if isinstance(info, dict) else {}
    return {key: info.get(key) for key in ("host", "pid", "devices")}


# Slots per batch. Optuna's cache re-reads every unfinished trial on each read (the sampler
# reads once or twice per trial), so queued slots cost every trial something: keep few queued.
BATCH = 8
CLAIM_CANDIDATES = 8  # WAITING trials a claim tries before it looks again


def _slot_trial(slot: int, n_trials: int) -> FrozenTrial:
    attrs: dict[str, object] = {SLOT: slot}
    if slot % BATCH == 0 and slot + BATCH < n_trials:
        attrs[REFILL] = [slot + BATCH, min(slot + 2 * BATCH, n_trials)]
    return optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=attrs)


def enqueue_batch(study: optuna.Study, storage: object, start: int, n_trials: int) -> bool:
    """Put the slots of the batch that starts at ``start`` in the queue, unless they are there.

    A batch ends where the window of ``BATCH`` slots it starts in ends (or at ``n_trials``): it
    is a whole window, or the rest of one after a raised budget. Our RDB storage adds the batch
    in one transaction, at most once however often it is asked (a retry after a lost
    acknowledgement, two workers repairing the queue at once). Other storages add the batch's
    missing slots one by one. Returns whether anything was added.
    """
    slots = range(start, min(start - start % BATCH + BATCH, n_trials))
    if not slots:
        return False
    fast = hot_path_of(storage)
    if fast is not None:
        trials = [_slot_trial(slot, n_trials) for slot in slots]
        return fast.enqueue_once(study_id_of(study), f"{ENQUEUED}{start}", trials)
    # A previous holder of this duty may have died half-way through the batch.
    existing = {t.system_attrs.get(SLOT) for t in study.get_trials(deepcopy=False)}
    missing = [slot for slot in slots if slot not in existing]
    for slot in missing:
        study.add_trial(_slot_trial(slot, n_trials))
    return bool(missing)


def enqueue_first_batch(study: optuna.Study, storage: object, n_trials: int) -> None:
    enqueue_batch(study, storage, 0, n_trials)


def stored_n_trials(study: optuna.Study) -> int:
    """The study's trial budget as stored now: ``create`` may have raised it since the caller
    loaded the spec."""
    spec = storage_of(study).get_study_user_attrs(study_id_of(study))[SPEC]
    return int(spec["budget"]["n_trials"])


def refill(study: optuna.Study, storage: object, claimed: FrozenTrial, n_trials: int) -> None:
    """Enqueue the next batch if ``claimed`` carries that duty and nobody did it yet.

    ``n_trials``: the budget as the worker loaded it. A budget is only ever raised, and a raise
    changes a batch (its end, or its duty to refill) only near the loaded end: only there is
    the budget read as stored now, so the queue's hot path reads nothing more.
    """
    next_range = claimed.system_attrs.get(REFILL)
    if next_range:
        start = int(next_range[0])
        if start + 2 * BATCH >= n_trials:
            n_trials = max(n_trials, stored_n_trials(study))
        enqueue_batch(study, storage, start, n_trials)


def raise_budget_slots(study: optuna.Study, storage: object, old_n: int, new_n: int) -> None:
    """Enqueue the slots ``old_n`` to ``new_n`` of a budget raised while no trial runs.

    Only once the old queue is whole: while a duty to enqueue an old batch is pending, the
    worker that takes it reads the raised budget and carries the queue on to its end.
    """
    slots = {t.system_attrs.get(SLOT) for t in study.get_trials(deepcopy=False)}
    if old_n - 1 not in slots:
        return
    enqueue_batch(study, storage, old_n, new_n)  # the rest of the old last window
    whole = old_n + (-old_n % BATCH)
    if whole != old_n:
        enqueue_batch(study, storage, whole, new_n)


def repair_queue(study: optuna.Study, storage: object, state: BudgetState) -> bool:
    """Enqueue the batches no worker enqueued: their duty went with a trial that failed for good
    (its worker died ``max_retry`` times before it could refill). Only on storages that enqueue
    at most once: elsewhere two workers repairing at once would overrun the budget.

    Returns whether slots were added (the caller claims again).
    """
    if hot_path_of(storage) is None:
        return False
    n_trials = max(state.n_trials, stored_n_trials(study))
    if state.enqueued >= n_trials:
        return False
    added = False
    for window in range(0, n_trials, BATCH):
        missing = [s for s in range(window, min(window + BATCH, n_trials)) if s not in state.slots]
        if missing:
            # A window is missing whole, or after a raise, the slots past the old budget.
            added = enqueue_batch(study, storage, missing[0], n_trials) or added
    if added:
        log.warning("re-queued budget slots that were never enqueued")
    return added


def unqueued_retries(
    trials: Iterable[FrozenTrial], storage: object
) -> list[tuple[FrozenTrial, FrozenTrial]]:
    """Failed trials whose retry is due but not in the study, each with that retry.

    A process fails a trial and queues its retry in two calls (Optuna's ``fail_stale_trials``
    fails every stale trial first, a worker stopped by SIGTERM tells FAIL first): killed in
    between, it takes the retry with it, and the study would end a configuration short. Only on
    storages that enqueue retries at most once, where a repair can never queue a second one.
    """
    if not isinstance(storage, RetryTemplates):
        return []
    trials = list(trials)
    retried = {history[-1] for t in trials if (history := t.system_attrs.get(RETRY_HISTORY))}
    return [
        (trial, retry)
        for trial in trials
        if trial.state == TrialState.FAIL
        and trial.number not in retried
        and (retry := _retry_due(trial, storage)) is not None
    ]


def _retry_due(trial: FrozenTrial, storage: RetryTemplates) -> FrozenTrial | None:
    """The retry a failed trial is owed, or None: the objective's own failure used its slot,
    and retries may be off or spent."""
    return None if ERROR in trial.user_attrs else storage.retry_of(trial)


def requeue_lost_retries(
    study: optuna.Study,
    storage: object,
    unqueued: Sequence[tuple[FrozenTrial, FrozenTrial]],
    grace_s: float,
) -> bool:
    """Queue the retries in ``unqueued`` of trials failed over ``grace_s`` ago: a live process
    queues its retry right after the failure (and, if it still does, finds it queued). Returns
    whether a retry was queued."""
    fast = hot_path_of(storage)
    if fast is None:
        return False
    # Optuna writes datetime_complete with the failing process's clock, naive local time.
    oldest = datetime.now() - timedelta(seconds=grace_s)
    added = False
    for trial, retry in unqueued:
        due = trial.datetime_complete is None or trial.datetime_complete < oldest
        if due and fast.requeue_once(study_id_of(study), trial, retry):
            log.warning(
                "trial %d failed without its retry (the process that failed it died): re-queued",
                trial.number,
            )
            added = True
    return added


ClaimAttrs = Callable[[Mapping[str, Any]], dict[str, Any]]  # system attrs -> user attrs to set


def claim_slot(
    study: optuna.Study, storage: object | None = None, attrs: ClaimAttrs | None = None
) -> FrozenTrial | None:
    """Atomically take one WAITING trial; the trial as claimed, or None if none is left.

    ``attrs``: the user attributes the claimed trial gets (where it runs, its checkpoint), from
    its system attributes (its slot). ``storage``: the study's backend; our RDB storage lists
    the WAITING ids with one query and claims in one transaction, which replaces a read of every
    unfinished trial and four writes: most of a trial's coordination cost otherwise.
    """
    attrs = attrs or (lambda _: {})
    fast = hot_path_of(storage)
    if fast is not None:
        for trial_id in fast.waiting_trial_ids(study_id_of(study), CLAIM_CANDIDATES):
            claimed = fast.claim_trial(trial_id, attrs)
            if claimed is not None:
                _add_to_cache(study, claimed)
                return claimed
        return None
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    # Retries of trials whose worker died and promoted configurations go first: their
    # checkpoints are waiting.
    waiting.sort(key=lambda t: (not {RETRY_OF, PROMOTED_FROM} & t.system_attrs.keys(), t.number))
    for trial in waiting:
        if _claim(study, trial_id_of(trial)):
            for key, value in attrs(trial.system_attrs).items():
                storage_of(study).set_trial_user_attr(trial_id_of(trial), key, value)
            return trial
    return None


def _claim(study: optuna.Study, trial_id: int) -> bool:
    try:
        # Through the study's own storage (Optuna's cache), so that its reads see the claim.
        return bool(storage_of(study).set_trial_state_values(trial_id, state=TrialState.RUNNING))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # another worker claimed (and maybe finished) it in between


def _add_to_cache(study: optuna.Study, trial: FrozenTrial) -> None:
    """Make Optuna's trial cache know a trial claimed without reading it through the cache.

    The cache must know a trial before params can be set on it, and must re-read it while it
    runs; a full read of the unfinished trials would cost what the direct claim saved.
    """
    if not add_claimed_trial_to_cache(study, trial):
        study.get_trials(deepcopy=False)  # the general way: one read through the cache


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
    slots: frozenset[int] = field(default=frozenset(), repr=False)  # which ones
    paused: int = 0  # configurations paused at a rung by the scheduler, not promoted (yet)

    @property
    def used(self) -> int:
        return self.complete + self.pruned + self.failed + self.paused

    @property
    def finished(self) -> bool:
        """Nothing to claim and nothing running that could still enqueue or come back.

        A batch is enqueued by a RUNNING trial, so ``running == 0`` also means none is coming.
        """
        return self.waiting == 0 and self.running == 0


def budget_state(trials: Iterable[FrozenTrial], n_trials: int) -> BudgetState:
    trials = list(trials)
    counts = dict.fromkeys(
        ("complete", "pruned", "failed", "running", "waiting", "lost", "paused"), 0
    )
    slots: set[int] = set()
    # A promoted configuration's slot is counted by its continuation, never twice.
    paused = {t.number for t, _ in paused_trials(trials)}
    for trial in trials:
        slot = trial.system_attrs.get(SLOT)
        if slot is not None:
            slots.add(int(slot))
        if paused_rung(trial) is not None:
            counts["paused"] += trial.number in paused
            continue
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
    return BudgetState(n_trials=n_trials, enqueued=len(slots), slots=frozenset(slots), **counts)


def reap_stale_trials(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
    """Fail RUNNING trials whose heartbeat is older than the grace period; their retries are
    queued by the storage's retry callback. The retries that a process killed between a trial's
    failure and its retry took with it are queued too, once the failure is a grace period old
    (see ``unqueued_retries``). ``storage``: the study's, as opened (not Optuna's cache around
    it). Returns the failed trials' numbers.

    Reads the RUNNING and FAIL trials alone, through ``storage``: the proxy's reaper loads each
    study afresh every pass, and a fresh study's cache reads every trial of the study (seconds
    a pass on a study of a few thousand trials). Every trial is read only while a failed
    trial's retry may be lost (see ``_retry_may_be_lost``).
    """
    study_id = study_id_of(study)
    running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    optuna.storages.fail_stale_trials(study)
    failed = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.FAIL,))
    grace = getattr(storage, "grace_period", None)
    if grace is not None and _retry_may_be_lost(study_id, storage, failed):
        everything = storage.get_all_trials(study_id, deepcopy=False)
        requeue_lost_retries(study, storage, unqueued_retries(everything, storage), grace)
    numbers = {t.number for t in running}
    return sorted(t.number for t in failed if t.number in numbers)


def _retry_may_be_lost(
    study_id: int, storage: optuna.storages.BaseStorage, failed: Sequence[FrozenTrial]
) -> bool:
    """Whether a failed trial not of the objective's own may lack its retry: one with a retry
    left whose queueing left no mark (``REQUEUED``; our storage queues every retry with its
    mark, in one transaction). Cheap: the study's marks, not its trials."""
    if not isinstance(storage, RetryTemplates) or all(ERROR in t.user_attrs for t in failed):
        return False
    marks = storage.get_study_system_attrs(study_id)
    return any(
        f"{REQUEUED}{t.number}" not in marks and _retry_due(t, storage) is not None for t in failed
    )


def slot_seed(study_seed: int, slot: int) -> int:
    """The sampler seed of a budget slot: a seeded study proposes the same parameters for the
    same slot however many workers run it, and no two slots share a random stream."""
    import numpy as np

    return int(np.random.SeedSequence([study_seed, slot]).generate_state(1)[0])
