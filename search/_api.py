"""The Python API: what the ``hpsearch`` commands do, as functions that return Python objects.

Safe to call from a notebook, a ``python -c`` string or a script without a main guard: workers
are spawned processes that never re-run the caller's code (``runtime._launch``). Errors are
``hpsearch.HpsearchError`` with the same one-line messages as the CLI.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import optuna

from hpsearch._optuna_warnings import ignore_our_experimental_warnings
from hpsearch.attrs import ERROR
from hpsearch.errors import HpsearchError
from hpsearch.search._study import LoadedStudy, create_study, load_study, study_summaries
from hpsearch.search.results._export import export_document
from hpsearch.search.results._status import status_document
from hpsearch.search.runtime._budget import budget_state
from hpsearch.search.runtime._compute import budget_reached
from hpsearch.search.runtime._devices import WorkerDevices
from hpsearch.search.runtime._launch import NodeGroup, node_group
from hpsearch.search.spec import StudySpec, load_spec_file
from hpsearch.storage import redact_url, resolve_storage_url

StudyFile = str | os.PathLike[str]
P = ParamSpec("P")
R = TypeVar("R")


def _api(function: Callable[P, R]) -> Callable[P, R]:
    """A public function: Optuna's experimental warnings for our own calls stay quiet (per
    call: a ``catch_warnings`` of the caller, such as pytest's, may have dropped the filter)."""

    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        ignore_our_experimental_warnings()
        return function(*args, **kwargs)

    return call


def _spec(study_file: StudyFile | StudySpec) -> StudySpec:
    return (
        study_file if isinstance(study_file, StudySpec) else load_spec_file(os.fspath(study_file))
    )


@_api
def create(study_file: StudyFile | StudySpec, *, storage: str | None = None) -> optuna.Study:
    """Create the study a study file describes (the same file again is a no-op); return it.

    ``storage`` is a database URL; by default ``$HPSEARCH_STORAGE``, else ``sqlite:///hpsearch.db``.
    """
    spec = _spec(study_file)
    url = resolve_storage_url(storage)
    create_study(spec, url)
    return load_study(spec.name, url).study


@_api
def load(study: str, *, storage: str | None = None) -> optuna.Study:
    """The Optuna study ``study``, with the sampler and pruner its study file names."""
    return load_study(study, resolve_storage_url(storage)).study


def budget_used(study: optuna.Study, n_trials: int) -> bool:
    """Every slot of the budget ended and nothing is queued or running: no worker has work."""
    state = budget_state(study.get_trials(deepcopy=False), n_trials)
    return state.used >= n_trials and state.finished


@_api
def run(
    study_file: StudyFile | StudySpec,
    *,
    storage: str | None = None,
    workers: int | None = None,
    gpus: str | None = None,
    devices_per_trial: int | None = None,
    timeout: float | None = None,
    progress: bool = True,
) -> optuna.Study:
    """Create or resume a study and run this machine's workers until its budget is used.

    Returns the Optuna study (``study.best_trial``, ``study.trials_dataframe()``, ...); raises
    ``HpsearchError`` when a worker failed. A study whose budget is used returns at once.
    ``progress=False``: no progress, and the workers log only warnings and errors (``-q``).
    """
    spec = _spec(study_file)
    if spec.resources.nodes_per_trial > 1:
        raise HpsearchError(
            f"Study {spec.name!r} has [resources] nodes_per_trial = "
            f"{spec.resources.nodes_per_trial}: its trials span machines, which `run` (one "
            "machine) cannot start; create it with `hpsearch create`, then start `hpsearch "
            "worker --node-rank R --rendezvous HOST:PORT` on each node (docs/deploy.md: Trials across nodes)."
        )
    url = resolve_storage_url(storage)
    from hpsearch.search.runtime._node import NodeWorkers

    # The workers start first: a spawned worker's imports (torch's seconds among them) overlap
    # the study's creation and the node's checks; they touch the database only once let in.
    assignments = _assignments(spec, workers, gpus, devices_per_trial, spec.resources.workers)
    with NodeWorkers(
        spec.name,
        url,
        assignments=assignments,
        spec=spec,
        timeout=timeout if timeout is not None else spec.timeout,
        show_progress=progress,
    ) as node:
        result = create_study(spec, url)
        if progress:
            verb = "created" if result.created else "resuming"
            print(f"{verb} study {spec.name!r} in {redact_url(url)}", file=sys.stderr)
            if result.raised:
                print(result.raised_line(url), file=sys.stderr)
        # The study is loaded once, on the database create_study opened.
        loaded = load_study(spec.name, url, storage=result.storage)
        if budget_used(loaded.study, spec.n_trials):
            if progress:
                print(
                    f"the budget of {spec.n_trials} trial(s) is used: no worker started (raise "
                    "[budget] n_trials in the file to go on)",
                    file=sys.stderr,
                )
            return loaded.study
        unit = budget_reached(loaded.study.get_trials(deepcopy=False), spec)
        if unit is not None:
            if progress:
                print(
                    f"the study's {unit} budget is spent: no worker started (raise [budget] "
                    f"{unit} in the file to go on)",
                    file=sys.stderr,
                )
            return loaded.study
        _finish(loaded, node.run(loaded))
    return loaded.study


@_api
def worker(
    study: str,
    *,
    storage: str | None = None,
    workers: int | None = None,
    gpus: str | None = None,
    devices_per_trial: int | None = None,
    timeout: float | None = None,
    progress: bool = True,
    nodes_per_trial: int | None = None,
    node_rank: int | None = None,
    rendezvous: str | None = None,
) -> optuna.Study:
    """Join an existing study with this machine's workers (one per GPU group, else one) until its
    budget is used; other machines may run workers on the same storage at the same time.

    ``nodes_per_trial`` > 1 (default the study's): this machine is node ``node_rank`` of trial
    groups whose ranks meet at ``rendezvous`` (``HOST:PORT`` of node 0); one worker per node.
    """
    url = resolve_storage_url(storage)
    loaded = load_study(study, url)
    group = node_group(
        nodes_per_trial or loaded.spec.resources.nodes_per_trial,
        node_rank=node_rank,
        rendezvous=rendezvous,
        workers=workers,
    )
    from hpsearch.search.runtime._node import NodeWorkers

    assignments = _assignments(loaded.spec, workers, gpus, devices_per_trial, 1, group=group)
    with NodeWorkers(
        study,
        url,
        assignments=assignments,
        spec=loaded.spec,
        timeout=timeout if timeout is not None else loaded.spec.timeout,
        show_progress=progress,
        group=group,
    ) as node:
        _finish(loaded, node.run(loaded))
    return loaded.study


def _assignments(
    spec: StudySpec,
    workers: int | None,
    gpus: str | None,
    devices_per_trial: int | None,
    default_workers: int,
    *,
    group: NodeGroup | None = None,
) -> list[WorkerDevices]:
    """This node's workers and their devices, from the options and the study's resources."""
    from hpsearch.search.runtime._node import node_assignments

    assignments = node_assignments(
        gpus=gpus,
        devices_per_trial=devices_per_trial,
        workers=workers,
        spec_ranks=spec.resources.devices_per_trial,
        default_workers=default_workers,
    )
    if group is not None and len(assignments) > 1:
        if devices_per_trial is not None:
            raise HpsearchError(
                f"--devices-per-trial {devices_per_trial} splits this node's devices into "
                f"{len(assignments)} workers, and a node of trials that span nodes runs one: "
                "leave --devices-per-trial out (the node's devices all join the group), or "
                "start one `hpsearch worker` per group with its own --gpus and --rendezvous."
            )
        # One worker per node of a group: every device of the node joins the trial group.
        assignments = node_assignments(
            gpus=gpus,
            devices_per_trial=sum(len(a.gpus) for a in assignments) or None,
            workers=1,
            spec_ranks=spec.resources.devices_per_trial,
            default_workers=1,
        )
    return assignments


def _finish(loaded: LoadedStudy, code: int) -> None:
    """After the workers ended: their failure, or a study whose every trial failed, is an error."""
    if code != 0:
        raise WorkersFailed(code)
    _check_some_trial_completed(loaded)


def _check_some_trial_completed(loaded: LoadedStudy) -> None:
    """A study whose every finished trial failed did not search anything: say so, in one line,
    with the error, rather than a summary that advises running more workers."""
    study = loaded.spec.name
    trials = loaded.study.get_trials(deepcopy=False)
    state = budget_state(trials, loaded.spec.n_trials)
    if state.complete or state.pruned or not state.failed:
        return
    errors = [t.user_attrs.get(ERROR) for t in trials if ERROR in t.user_attrs]
    raise HpsearchError(
        f"no trial of {study!r} completed: {state.failed} failed, the last with {errors[-1]}; "
        f"fix the objective (`hpsearch status --study {study}` lists the failed trials) and "
        "run again."
    )


class WorkersFailed(HpsearchError):
    """A worker process ended with an error; its own lines on stderr say which."""

    def __init__(self, code: int) -> None:
        super().__init__(
            f"a worker process exited with code {code}; its error is above. Fix it and run the "
            "same command again: the study resumes where it stopped."
        )
        self.code = code


@_api
def status(study: str, *, storage: str | None = None) -> dict[str, Any]:
    """The status document (the schema of ``hpsearch status --json``)."""
    loaded = load_study(study, resolve_storage_url(storage))
    return status_document(loaded.study, loaded.spec)


@_api
def export(study: str, *, storage: str | None = None, top: int | None = None) -> dict[str, Any]:
    """The export document: the best configuration (or the Pareto front), as ``hpsearch export``
    writes it; ``top`` also lists the K best trials."""
    loaded = load_study(study, resolve_storage_url(storage))
    return export_document(loaded.study, loaded.spec, top=top)


@_api
def studies(*, storage: str | None = None) -> list[dict[str, Any]]:
    """One row per study in the storage: name, objective, budget, trials by state, best value."""
    return study_summaries(resolve_storage_url(storage))
