"""The worker loop: claim a slot, run the objective inside a heartbeat, tell the result.

The database is the only coordinator. The loop knows nothing about the backend, and its
``try/finally`` never leaves a trial RUNNING: a trial ends COMPLETE, PRUNED or FAIL, and an
interrupted one is handed back to the queue.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import CHECKPOINT, ERROR, SLOT, TRACEBACK, WORKER
from hpsearch.errors import GroupLost, HpsearchError
from hpsearch.objectives import Objective, interrupt, load_objective
from hpsearch.objectives.command import is_command
from hpsearch.objectives.context import TrialContext, trial_context
from hpsearch.search._study import UID_ATTR, LoadedStudy, load_study
from hpsearch.search.results._multi_objective import objective_trial, pruned_reason
from hpsearch.search.runtime._budget import (
    budget_state,
    claim_slot,
    refill,
    repair_queue,
    requeue_lost_retries,
    slot_seed,
    unqueued_retries,
)
from hpsearch.search.runtime._checkpoints import (
    CheckpointSync,
    checkpoint_path,
    checkpoint_sync,
    tidy,
)
from hpsearch.search.runtime._compute import ComputeBudget, ComputeMeter, budget_stop_reason
from hpsearch.search.runtime._heartbeat import Heartbeat, Reaper
from hpsearch.search.runtime._pbt import PbtPruner, continue_members, take_exploited_weights
from hpsearch.search.runtime._preflight import warm_up
from hpsearch.search.runtime._scheduler import (
    AshaPruner,
    paused_rung,
    promote,
    promoted_from,
)
from hpsearch.search.runtime._warm_start import warm_started
from hpsearch.search.runtime._worker_args import WorkerArgs, parse_rendezvous
from hpsearch.search.spec._constraints import apply_constraints, measurements
from hpsearch.search.spec._scheduler import PbtSchedule, Schedule
from hpsearch.search.spec._space import suggest
from hpsearch.storage import StorageError, close_storage, hot_path_of
from hpsearch.storage._optuna_internals import (
    enter_optimize_loop,
    reseed_sampler,
    stop_requested,
    storage_of,
    trial_id_of,
)

if TYPE_CHECKING:
    # torch.distributed: imported only by workers whose trials span several ranks.
    from hpsearch.search.runtime._ranks import RankGroup, Rendezvous
    from hpsearch.search.runtime._tracking import Tracking

log = logging.getLogger("hpsearch.worker")


def _as_values(result: Any, metrics: Sequence[str]) -> list[float]:
    n_directions = len(metrics)
    if isinstance(result, Mapping):
        # A mapping is read by the study's metric names; its other entries serve constraints.
        missing = [m for m in metrics if m not in result]
        if missing:
            raise ValueError(
                f"objective returned no {missing[0]!r}; it returned "
                f"{', '.join(map(str, result))}: name those in [study] metrics"
            )
        raw = [result[m] for m in metrics]
    elif isinstance(result, str | bytes):  # a Sequence, but never a list of values
        raise TypeError(
            f"objective returned a {type(result).__name__} ({str(result)[:40]!r}); return a "
            f"float, {n_directions} float(s) in a list, or a mapping of {', '.join(metrics)}"
        )
    else:
        raw = list(result) if isinstance(result, Sequence) else [result]
    if len(raw) != n_directions:
        raise ValueError(f"objective returned {len(raw)} value(s) for {n_directions} direction(s)")
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        raise TypeError(
            f"objective returned {raw!r}: not a number; return a float per metric "
            f"({', '.join(metrics)})"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"objective returned a non-finite value: {values}")
    return values


def _record_error(study: optuna.Study, trial_id: int, err: BaseException) -> str:
    """Store the objective's error on its trial; return its one-line summary."""
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    text = str(err).strip()
    summary = (f"{type(err).__name__}: {text}" if text else type(err).__name__).splitlines()[0]
    storage_of(study).set_trial_user_attr(trial_id, ERROR, summary[:500])
    storage_of(study).set_trial_user_attr(trial_id, TRACEBACK, "".join(lines)[-4000:])
    return summary[:500]


# Numbers in an error message: decimals, exponents, hexadecimal addresses.
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


def error_kind(summary: str) -> str:
    """An error's summary with its numbers masked: the same mistake in trials whose values
    differ (a shape that follows the searched width, a trial number) reads as one error."""
    return _NUMBER.sub("N", summary)


@dataclass(frozen=True)
class Outcome:
    """How a trial ended, and the objective's error when it failed."""

    state: TrialState
    error: str | None = None


def run_trial(
    loaded: LoadedStudy,
    claimed: FrozenTrial,
    objective: Objective,
    *,
    log_trials: bool,
    study_uid: str,
    reap: Callable[[], None] = lambda: None,
    checkpoints: CheckpointSync | None = None,
    context: TrialContext | None = None,
    compute: ComputeMeter | None = None,
    tracking: Tracking | None = None,
) -> Outcome:
    """Run one claimed trial to a finished state.

    ``checkpoints`` keeps the trial's checkpoint file in step with an object store (s3://
    artifacts): fetched before the objective starts, uploaded on each heartbeat it changed by,
    and once more before the trial is told. ``compute``: the study's compute budget, which
    counts the trial's epochs and stops it at a report once spent. ``study_uid``: the study's
    uid, which names its checkpoints' folder.
    """
    study, spec, trial_id = loaded.study, loaded.spec, trial_id_of(claimed)
    state, values, error, reason = TrialState.FAIL, None, None, ""
    started = time.monotonic()
    # Our RDB storage wrote the first heartbeat with the claim.
    first_beat_done = hot_path_of(loaded.storage) is not None
    slot = claimed.system_attrs.get(SLOT)
    if spec.sampler.seed is not None and slot is not None:
        # Proposals follow the study's seed and the slot, never who claimed it: two workers
        # seeded alike (two commands on one host, a restarted worker) propose different points.
        # Optuna samples a trial's relative parameters as the trial object is made: seed first.
        reseed_sampler(study.sampler, slot_seed(spec.sampler.seed, int(slot)))
    sync = checkpoints if checkpoints is not None else CheckpointSync(None, "", "")

    def on_beat() -> None:
        sync.changed()  # the upload runs on the sync's own thread: it never delays a beat
        reap()

    with sync, Heartbeat(loaded.storage, trial_id, beat_now=not first_beat_done, on_beat=on_beat):
        # Inside the heartbeat: a long download never makes the trial look dead. A PBT member
        # that exploits takes the copy of its donor's checkpoint first (then it is fetched).
        if not take_exploited_weights(study, spec, study_uid, claimed, sync):
            sync.fetch()
        # Before the objective: a failure here is the database's, never the objective's.
        refill(study, loaded.storage, claimed, spec.n_trials)
        trial = (
            objective_trial(study, trial_id) if compute is None else compute.trial(study, trial_id)
        )
        try:
            params = suggest(trial, spec.space)
            if tracking is not None:
                tracking.started(claimed, {**spec.training, **params})
            with trial_context(context or TrialContext()):
                result = objective(trial, {**spec.training, **params})
            values = _as_values(result, spec.metrics)
            measured = measurements(result, spec.metrics, values)
            apply_constraints(trial, spec.constraints, measured)
            state = TrialState.COMPLETE
        except optuna.TrialPruned as pruned:
            state = TrialState.PRUNED
            # The engine says why (a NaN loss, the pruner at an epoch); a bare TrialPruned is
            # the pruner's decision at the last step reported (the log line says so).
            reason = budget_stop_reason(trial) or pruned_reason(trial, str(pruned).strip())
        except StorageError:
            # The database stayed away: not the objective's fault. The worker stops; the trial
            # is reaped after its grace period and retried, uncounted.
            raise
        except BaseException as err:
            # The objective's own failure: an exception, or sys.exit() called in it (which must
            # not end the worker and hand the trial back uncounted, again and again).
            failed = isinstance(err, Exception | SystemExit)
            if storage_of(study).get_trial(trial_id).state.is_finished():
                # Failed and re-queued elsewhere while this worker could not reach the database.
                log.warning("trial %d was taken over by another worker; dropping it", trial.number)
                if failed:
                    return Outcome(TrialState.FAIL)
                raise
            if failed and not interrupt.STOP.is_set():
                # One bad trial never kills the worker.
                error = _record_error(study, trial_id, err)
                log.warning(
                    "trial %d failed: %s: %s\n%s",
                    trial.number,
                    type(err).__name__,
                    err,
                    "".join(
                        traceback.format_exception(type(err), err, err.__traceback__)[-6:]
                    ).rstrip(),
                )
            else:
                # Interrupted (a stop signal, Ctrl-C, or a DDP rank ended by the same signal):
                # hand the trial back to the queue, unused; its retry resumes from the last
                # checkpoint with the values reported so far.
                sync.finish(trial)
                frozen = study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                retry = loaded.storage.get_heartbeat_stale_trial_callback()
                if retry is not None:
                    retry(study, frozen)
                # The retry is queued first: a tracker may block (W&B finishing its run over a
                # slow network) until the supervisor's kill -9 ends the grace period.
                if tracking is not None:
                    tracking.handed_back(frozen)
                if isinstance(err, Exception):
                    raise interrupt.TrialInterrupted("stop requested") from err
                raise
        sync.finish(trial)
        sync.forget_if_unwritten(
            trial, None if context is None else context.checkpoint, loaded.storage
        )
        frozen = study.tell(trial, values=values, state=state, skip_if_finished=True)
    rung = paused_rung(frozen)
    if tracking is not None:
        tracking.ended(frozen, paused=rung is not None)
    if rung is None:
        tidy(study, frozen, spec.resources.keep_checkpoints)
    # else its checkpoint stays: a promotion resumes the configuration from it
    if log_trials:
        took = time.monotonic() - started
        if rung is not None and isinstance(spec.scheduler, PbtSchedule):
            log.info(
                "%s ends its interval at epoch %d in %.1fs: it waits for the population",
                _label(frozen),
                rung + 1,
                took,
            )
        elif rung is not None:
            log.info(
                "%s paused at rung %d (epoch %d) in %.1fs",
                _label(frozen),
                rung,
                (frozen.last_step or 0) + 1,
                took,
            )
        elif state == TrialState.PRUNED:
            log.info("%s pruned in %.1fs: %s", _label(frozen), took, reason or _pruned_at(frozen))
        else:
            shown = (
                ""
                if frozen.values is None
                else " ".join(
                    f"{m}={v:.6g}" for m, v in zip(spec.metrics, frozen.values, strict=True)
                )
            )
            log.info("%s %s %s in %.1fs", _label(frozen), state.name.lower(), shown, took)
    return Outcome(state, error)


def _label(trial: FrozenTrial) -> str:
    """``trial N``; a continuation names the paused trial it resumes, so that a configuration's
    log lines read as one story across its pauses."""
    resumed = promoted_from(trial)
    return f"trial {trial.number}" + ("" if resumed is None else f" (resumes trial {resumed})")


def _pruned_at(trial: FrozenTrial) -> str:
    steps = trial.intermediate_values
    return f"by the pruner at step {max(steps)}" if steps else "by the objective"


class ConsecutiveFailures:
    """Stops a worker whose trials keep failing with the same error (a typo in the objective,
    a missing file): each would otherwise use a slot, and the whole budget burns in minutes."""

    def __init__(self, limit: int, study: str) -> None:
        self.limit, self.study = limit, study
        self.error: str | None = None  # the latest of the run, as the objective raised it
        self.kind: str | None = None  # its numbers masked: what is compared
        self.count = 0

    def record(self, outcome: Outcome) -> None:
        if outcome.state != TrialState.FAIL or outcome.error is None:
            self.error, self.kind, self.count = None, None, 0
            return
        kind = error_kind(outcome.error)
        self.count = self.count + 1 if kind == self.kind else 1
        self.error, self.kind = outcome.error, kind
        if self.count >= self.limit:
            raise HpsearchError(
                f"stopped after {self.count} trials in a row failed with the same error: "
                f"{self.error}; fix the objective (`hpsearch status --study {self.study}` lists "
                "the failed trials), then start the workers again: the rest of the budget waits "
                "([resources] max_consecutive_failures sets the limit)."
            )


def work(args: WorkerArgs, *, schema_checked: bool = False) -> None:
    """One worker's loop: until the budget is used up, the deadline passes, or it is interrupted.

    ``schema_checked``: the parent checked the schema's version before it let the worker in.
    """
    loaded = load_study(args.study, args.url, schema_checked=schema_checked)
    warm_started(loaded.study, loaded.spec, args.url)
    study, spec = loaded.study, loaded.spec
    group: RankGroup | None = None
    rendezvous: Rendezvous | None = None

    def runner() -> Objective:
        nonlocal group, rendezvous
        if args.devices_per_trial * args.nodes_per_trial == 1 or is_command(spec.objective):
            # A command starts its own ranks (torchrun --nproc-per-node {devices}).
            return load_objective(spec.objective)
        from hpsearch.search.runtime._ranks import RankGroup, Rendezvous

        if group is not None:
            group.close()
            group = None
        if rendezvous is None:
            address = parse_rendezvous(args.rendezvous) if args.rendezvous else None
            rendezvous = Rendezvous.host_store(address, spec.resources.dist_timeout)
        group = RankGroup(
            local_devices=args.devices_per_trial,
            nodes=args.nodes_per_trial,
            objective=spec.objective,
            threads=args.threads,
            timeout=spec.resources.dist_timeout,
            rendezvous=rendezvous,
        )
        return group.run

    objective = runner()
    warm_up(spec)
    schedule = spec.scheduler
    pbt = schedule if isinstance(schedule, PbtSchedule) else None
    asha = schedule if isinstance(schedule, Schedule) else None
    # The scheduler's decision at a rung or an interval's end is taken where the engine asks
    # the pruner.
    if asha is not None:
        study.pruner = AshaPruner(asha)
    elif pbt is not None:
        study.pruner = PbtPruner(pbt)

    def promote_now(*, last: bool) -> bool:
        """Enqueue the continuations the scheduler owes now; whether any was added."""
        if pbt is not None:
            return continue_members(study, loaded.storage, spec, uid, last=last)
        if asha is not None:
            return promote(study, loaded.storage, asha, last=last)
        return False

    def continuations_left() -> bool:
        """Whether configurations the sampler proposed still have continuations to run, once
        it stopped the study (a grid sampler whose grid is exhausted)."""
        trials = study.get_trials(deepcopy=False)
        idle = not any(t.state == TrialState.RUNNING for t in trials)
        return promote_now(last=idle) or any(
            t.state == TrialState.WAITING and promoted_from(t) is not None for t in trials
        )

    uid = str(study.user_attrs.get(UID_ATTR, "study"))
    where = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "devices": args.devices,
        # The devices a trial holds, every node's: what a device-hours budget counts.
        "world_size": args.devices_per_trial * args.nodes_per_trial,
    }

    def claim_attrs(system_attrs: Mapping[str, Any]) -> dict[str, Any]:
        """What a claimed trial records: where it runs, and its slot's checkpoint file."""
        attrs: dict[str, Any] = {WORKER: where}
        slot = system_attrs.get(SLOT)
        if slot is not None:
            attrs[CHECKPOINT] = checkpoint_path(spec, int(slot), uid)
        return attrs

    def context_of(claimed: FrozenTrial) -> TrialContext:
        """What the training engine learns of the trial: its checkpoint file, the metric."""
        slot = claimed.system_attrs.get(SLOT)
        return TrialContext(
            checkpoint=None if slot is None else checkpoint_path(spec, int(slot), uid),
            metrics=tuple(spec.metrics),
            directions=tuple(spec.directions),
            prunes=spec.pruner.name != "none" or schedule is not None,
            report_on_resume=True,
            live=() if pbt is None else pbt.explore,
            devices=args.devices_per_trial,
        )

    budget = ComputeBudget.of(spec)
    compute = None if budget is None else ComputeMeter(study, budget)
    tracking = None
    if spec.tracking is not None:
        from hpsearch.search.runtime._tracking import Tracking

        tracking = Tracking(study, spec)
    failures = ConsecutiveFailures(spec.resources.max_consecutive_failures, spec.name)
    # Fill Optuna's trial cache once, up front: later reads fetch only new and unfinished trials.
    study.get_trials(deepcopy=False)
    reap = Reaper(study, every=loaded.storage.get_heartbeat_interval() or 10)
    # The [budget] timeout counts from here: a worker slow to start (a loaded machine, a large
    # import) still gets its share of trials.
    deadline = None if args.timeout is None else time.time() + args.timeout
    # This loop is an optimize loop in Optuna's sense: samplers may call study.stop() from
    # after_trial (the grid sampler does once its grid is exhausted), which Optuna only allows
    # inside Study.optimize. Mark the loop as one, as Study.optimize does, and honour the flag.
    enter_optimize_loop(study)
    try:
        while True:
            if deadline is not None and time.time() >= deadline:
                log.warning(
                    "the timeout of %gs has passed: no further trial starts in this worker",
                    args.timeout,
                )
                return
            if interrupt.STOP.is_set():
                return
            if stop_requested(study) and not (schedule is not None and continuations_left()):
                log.info("the sampler stopped the study (its search space is exhausted)")
                return
            reap()
            spent = None if compute is None else compute.reached()
            if spent is not None:
                # No trial starts; wait for the running ones, which stop at their next report,
                # or are reaped if their worker died: what is spent then stays as shown.
                if budget_state(study.get_trials(deepcopy=False), spec.n_trials).running == 0:
                    log.info("the study's %s budget is spent: no further trial starts", spent)
                    return
                time.sleep(0.5)
                continue
            # Promotable configurations before fresh slots: their continuations are claimed
            # first.
            promote_now(last=False)
            claimed = claim_slot(study, loaded.storage, claim_attrs)
            if claimed is None:
                trials = study.get_trials(deepcopy=False)
                unqueued = unqueued_retries(trials, loaded.storage)
                if unqueued:
                    # Their retries are due: queued by the process that failed them within a
                    # moment, or by this worker once that process is past its grace period (a
                    # worker behind `hpsearch proxy` waits: the proxy's reaper queues them).
                    grace = spec.resources.grace_period
                    if not requeue_lost_retries(study, loaded.storage, unqueued, grace):
                        time.sleep(0.5)
                    continue
                state = budget_state(trials, spec.n_trials)
                if (
                    state.finished
                    and not repair_queue(study, loaded.storage, state)
                    and not promote_now(last=True)
                ):
                    if tracking is not None:
                        tracking.study_ended(study)
                    return
                time.sleep(0.5)  # others still run trials that may come back, or a batch is coming
                continue
            try:
                outcome = run_trial(
                    loaded,
                    claimed,
                    objective,
                    log_trials=args.log_trials,
                    reap=reap,
                    checkpoints=checkpoint_sync(spec, claimed.system_attrs.get(SLOT), uid),
                    study_uid=uid,
                    context=context_of(claimed),
                    compute=compute,
                    tracking=tracking,
                )
            except GroupLost as err:
                # Handed back by run_trial, uncounted: its retry resumes from the checkpoint.
                log.warning(
                    "trial %d lost a rank of its group (%s); it goes back to the queue and the "
                    "group re-forms",
                    claimed.number,
                    err,
                )
                objective = runner()
                continue
            failures.record(outcome)
            if group is not None and not group.in_step:
                log.warning("restarting the trial group's ranks after a failed trial")
                objective = runner()
    finally:
        if group is not None:
            group.close()
        close_storage(loaded.storage)
