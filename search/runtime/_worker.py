"""Worker processes: claim a slot, run the objective inside a heartbeat, tell the result.

The database is the only coordinator. The loop knows nothing about the backend, and its
``try/finally`` never leaves a trial RUNNING: a trial ends COMPLETE, PRUNED or FAIL, and an
interrupted one is handed back to the queue.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import CHECKPOINT, ERROR, SLOT, TRACEBACK, WORKER
from hpsearch.errors import HpsearchError
from hpsearch.objectives import Objective, ObjectiveError, interrupt, load_objective
from hpsearch.search._study import UID_ATTR, LoadedStudy, load_study
from hpsearch.search.results._multi_objective import objective_trial
from hpsearch.search.runtime._budget import budget_state, claim_slot, refill
from hpsearch.search.runtime._checkpoints import checkpoint_path, tidy
from hpsearch.search.runtime._launch import WorkerArgs
from hpsearch.search.runtime._preflight import warm_up
from hpsearch.search.runtime._ranks import RankGroup
from hpsearch.search.runtime._stop import install_worker_handlers
from hpsearch.search.spec._constraints import apply_constraints, measurements
from hpsearch.search.spec._space import suggest
from hpsearch.storage import StorageError, WorkerStorage
from hpsearch.storage._optuna_internals import (
    enter_optimize_loop,
    stop_requested,
    storage_of,
    trial_id_of,
)

log = logging.getLogger("hpsearch.worker")
# How long a stopping worker waits for its objective to reach a safe point before interrupting it.
STOP_BOUND_SECONDS = 30.0


class Heartbeat:
    """Records the trial's heartbeat every interval on a thread, so a dead worker is noticed."""

    def __init__(self, storage: WorkerStorage, trial_id: int, *, beat_now: bool = True) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._beat_now = beat_now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        interval = self._storage.get_heartbeat_interval()
        if interval is not None:
            if self._beat_now:
                self._storage.record_heartbeat(self._trial_id)
            self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
            self._thread.start()
        return self

    def _beat(self, interval: int) -> None:
        while not self._stop.wait(interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as err:  # a missed beat is not fatal; the next one may succeed
                log.warning("heartbeat for trial id %d failed: %s", self._trial_id, err)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


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
    else:
        raw = list(result) if isinstance(result, Sequence) else [result]
    if len(raw) != n_directions:
        raise ValueError(f"objective returned {len(raw)} value(s) for {n_directions} direction(s)")
    values = [float(v) for v in raw]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"objective returned a non-finite value: {values}")
    return values


def _record_error(study: optuna.Study, trial_id: int, err: BaseException) -> None:
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    summary = f"{type(err).__name__}: {err}".splitlines()[0][:500]
    storage_of(study).set_trial_user_attr(trial_id, ERROR, summary)
    storage_of(study).set_trial_user_attr(trial_id, TRACEBACK, "".join(lines)[-4000:])


def run_trial(
    loaded: LoadedStudy,
    claimed: FrozenTrial,
    objective: Objective,
    *,
    log_trials: bool,
) -> TrialState:
    """Run one claimed trial to a finished state."""
    study, spec, trial_id = loaded.study, loaded.spec, trial_id_of(claimed)
    state, values = TrialState.FAIL, None
    started = time.monotonic()
    # Our RDB storage wrote the first heartbeat with the claim.
    first_beat_done = hasattr(loaded.storage, "claim_trial")
    with Heartbeat(loaded.storage, trial_id, beat_now=not first_beat_done):
        trial = objective_trial(study, trial_id)
        try:
            refill(study, claimed, spec.n_trials)
            params = suggest(trial, spec.space)
            result = objective(trial, {**spec.training, **params})
            values = _as_values(result, spec.metrics)
            measured = measurements(result, spec.metrics, values)
            apply_constraints(trial, spec.constraints, measured)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except StorageError:
            # The database stayed away: not the objective's fault. The worker stops; the trial
            # is reaped after its grace period and retried, uncounted.
            raise
        except BaseException as err:
            if storage_of(study).get_trial(trial_id).state.is_finished():
                # Failed and re-queued elsewhere while this worker could not reach the database.
                log.warning("trial %d was taken over by another worker; dropping it", trial.number)
                if isinstance(err, Exception):
                    return TrialState.FAIL
                raise
            if isinstance(err, Exception) and not interrupt.STOP.is_set():
                # One bad trial never kills the worker.
                _record_error(study, trial_id, err)
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
                frozen = study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                retry = loaded.storage.get_heartbeat_stale_trial_callback()
                if retry is not None:
                    retry(study, frozen)
                if isinstance(err, Exception):
                    raise interrupt.TrialInterrupted("stop requested") from err
                raise
        frozen = study.tell(trial, values=values, state=state, skip_if_finished=True)
    tidy(study, frozen, spec.resources.keep_checkpoints)
    if log_trials:
        shown = (
            ""
            if frozen.values is None
            else " ".join(f"{m}={v:.6g}" for m, v in zip(spec.metrics, frozen.values, strict=True))
        )
        log.info(
            "trial %d %s %s in %.1fs",
            frozen.number,
            state.name.lower(),
            shown,
            time.monotonic() - started,
        )
    return state


def work(args: WorkerArgs) -> None:
    """One worker's loop: until the budget is used up, the deadline passes, or it is interrupted."""
    loaded = load_study(args.study, args.url, seed_offset=args.seed_offset)
    study, spec = loaded.study, loaded.spec
    group: RankGroup | None = None

    def runner() -> Objective:
        nonlocal group
        if args.devices_per_trial == 1:
            return load_objective(spec.objective)
        if group is not None:
            group.close()
        group = RankGroup(
            world_size=args.devices_per_trial,
            objective=spec.objective,
            threads=args.threads,
            timeout=spec.resources.dist_timeout,
        )
        return group.run

    objective = runner()
    warm_up(spec)
    uid = str(study.user_attrs.get(UID_ATTR, "study"))
    where = {"host": socket.gethostname(), "pid": os.getpid(), "devices": args.devices}

    def claim_attrs(system_attrs: Mapping[str, Any]) -> dict[str, Any]:
        """What a claimed trial records: where it runs, and its slot's checkpoint file."""
        attrs: dict[str, Any] = {WORKER: where}
        slot = system_attrs.get(SLOT)
        if slot is not None:
            attrs[CHECKPOINT] = checkpoint_path(spec, int(slot), uid)
        return attrs

    # Fill Optuna's trial cache once, up front: later reads fetch only new and unfinished trials.
    study.get_trials(deepcopy=False)
    reap_every = loaded.storage.get_heartbeat_interval() or 10
    last_reap = 0.0
    # This loop is an optimize loop in Optuna's sense: samplers may call study.stop() from
    # after_trial (the grid sampler does once its grid is exhausted), which Optuna only allows
    # inside Study.optimize. Mark the loop as one, as Study.optimize does, and honour the flag.
    enter_optimize_loop(study)
    try:
        while args.deadline is None or time.time() < args.deadline:
            if interrupt.STOP.is_set():
                return
            if stop_requested(study):
                log.info("the sampler stopped the study (its search space is exhausted)")
                return
            if time.monotonic() - last_reap >= reap_every:
                # Fail trials whose worker died; the retry callback puts them back in the queue.
                optuna.storages.fail_stale_trials(study)
                last_reap = time.monotonic()
            claimed = claim_slot(study, loaded.storage, claim_attrs)
            if claimed is None:
                if budget_state(study.get_trials(deepcopy=False), spec.n_trials).finished:
                    return
                time.sleep(0.5)  # others still run trials that may come back, or a batch is coming
                continue
            run_trial(loaded, claimed, objective, log_trials=args.log_trials)
            if group is not None and not group.in_step:
                log.warning("restarting the %d ranks after a failed trial", args.devices_per_trial)
                objective = runner()
    finally:
        if group is not None:
            group.close()


def _configure_process(args: WorkerArgs) -> None:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s [worker {args.index} pid %(process)d] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    import torch

    torch.set_num_threads(args.threads)


def worker_main(args: WorkerArgs) -> None:
    """Entry point of a spawned worker process.

    Exits 0 when done or stopped by a signal (its trial handed back), 2 on a user error.
    """
    _configure_process(args)
    install_worker_handlers(bound=STOP_BOUND_SECONDS)
    try:
        work(args)
    except (HpsearchError, StorageError, ObjectiveError) as err:
        print(f"hpsearch worker {args.index}: {err}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, interrupt.TrialInterrupted):
        if not interrupt.STOP.is_set():
            raise
    if interrupt.STOP.is_set():
        log.warning("stopped; the running trial went back to the queue")
