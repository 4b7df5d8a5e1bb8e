"""The Python API: what the ``hpsearch`` commands do, as functions that return Python objects.

Safe to call from a notebook, a ``python -c`` string or a script without a main guard: workers
are spawned processes that never re-run the caller's code (``runtime._launch``). Errors are
``hpsearch.HpsearchError`` with the same one-line messages as the CLI.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import optuna

from hpsearch.attrs import ERROR
from hpsearch.errors import HpsearchError
from hpsearch.search._study import create_study, load_study, study_summaries
from hpsearch.search.results._export import export_document
from hpsearch.search.results._status import status_document
from hpsearch.search.runtime._budget import budget_state
from hpsearch.search.runtime._launch import NodeGroup, node_group
from hpsearch.search.spec import StudySpec, load_spec_file
from hpsearch.storage import redact_url, resolve_storage_url

StudyFile = str | os.PathLike[str]


def _spec(study_file: StudyFile | StudySpec) -> StudySpec:
    return (
        study_file if isinstance(study_file, StudySpec) else load_spec_file(os.fspath(study_file))
    )


def create(study_file: StudyFile | StudySpec, *, storage: str | None = None) -> optuna.Study:
    """Create the study a study file describes (the same file again is a no-op); return it.

    ``storage`` is a database URL; by default ``$HPSEARCH_STORAGE``, else ``sqlite:///hpsearch.db``.
    """
    spec = _spec(study_file)
    url = resolve_storage_url(storage)
    create_study(spec, url)
    return load_study(spec.name, url).study


def load(study: str, *, storage: str | None = None) -> optuna.Study:
    """The Optuna study ``study``, with the sampler and pruner its study file names."""
    return load_study(study, resolve_storage_url(storage)).study


def budget_used(study: optuna.Study, n_trials: int) -> bool:
    """Every slot of the budget ended and nothing is queued or running: no worker has work."""
    state = budget_state(study.get_trials(deepcopy=False), n_trials)
    return state.used >= n_trials and state.finished


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
    """
    spec = _spec(study_file)
    if spec.resources.nodes_per_trial > 1:
        raise HpsearchError(
            f"Study {spec.name!r} has [resources] nodes_per_trial = "
            f"{spec.resources.nodes_per_trial}: its trials span machines, which `run` (one "
            "machine) cannot start; create it with `hpsearch create`, then start `hpsearch "
            "worker --node-rank R --rendezvous HOST:PORT` on each node (README: Trials across nodes)."
        )
    url = resolve_storage_url(storage)
    result = create_study(spec, url)
    if progress:
        verb = "created" if result.created else "resuming"
        print(f"{verb} study {spec.name!r} in {redact_url(url)}", file=sys.stderr)
    loaded = load_study(spec.name, url)
    if budget_used(loaded.study, spec.n_trials):
        if progress:
            print(
                f"the budget of {spec.n_trials} trial(s) is used: no worker started",
                file=sys.stderr,
            )
        return loaded.study
    _run_workers(
        spec.name,
        url,
        spec=spec,
        workers=workers,
        default_workers=spec.resources.workers,
        gpus=gpus,
        devices_per_trial=devices_per_trial,
        timeout=timeout,
        progress=progress,
    )
    return loaded.study


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
    _run_workers(
        study,
        url,
        spec=loaded.spec,
        workers=workers,
        default_workers=1,
        gpus=gpus,
        devices_per_trial=devices_per_trial,
        timeout=timeout,
        progress=progress,
        group=group,
    )
    return loaded.study


def _run_workers(
    study: str,
    url: str,
    *,
    spec: StudySpec,
    workers: int | None,
    default_workers: int,
    gpus: str | None,
    devices_per_trial: int | None,
    timeout: float | None,
    progress: bool,
    group: NodeGroup | None = None,
) -> None:
    from hpsearch.search.runtime._node import node_assignments, run_node

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
    code = run_node(
        study,
        url,
        assignments=assignments,
        timeout=timeout if timeout is not None else spec.timeout,
        show_progress=progress,
        group=group,
    )
    if code != 0:
        raise WorkersFailed(code)
    _check_some_trial_completed(study, url)


def _check_some_trial_completed(study: str, url: str) -> None:
    """A study whose every finished trial failed did not search anything: say so, in one line,
    with the error, rather than a summary that advises running more workers."""
    loaded = load_study(study, url)
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


def status(study: str, *, storage: str | None = None) -> dict[str, Any]:
    """The status document (the schema of ``hpsearch status --json``)."""
    loaded = load_study(study, resolve_storage_url(storage))
    return status_document(loaded.study, loaded.spec)


def export(study: str, *, storage: str | None = None, top: int | None = None) -> dict[str, Any]:
    """The export document: the best configuration (or the Pareto front), as ``hpsearch export``
    writes it; ``top`` also lists the K best trials."""
    loaded = load_study(study, resolve_storage_url(storage))
    return export_document(loaded.study, loaded.spec, top=top)


def studies(*, storage: str | None = None) -> list[dict[str, Any]]:
    """One row per study in the storage: name, objective, budget, trials by state, best value."""
    return study_summaries(resolve_storage_url(storage))
