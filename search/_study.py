"""Create and load hpsearch studies: plain Optuna studies with the spec in their user attributes."""

from __future__ import annotations

import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import optuna

from hpsearch import attrs
from hpsearch.errors import HpsearchError
from hpsearch.search.runtime._budget import (
    enqueue_first_batch,
    raise_budget_slots,
    reap_stale_trials,
)
from hpsearch.search.spec._constraints import is_feasible
from hpsearch.search.spec._note import save_spec_note
from hpsearch.search.spec._samplers import build_pruner, build_sampler
from hpsearch.search.spec._study_file import (
    NODE_RESOURCES,
    StudySpec,
    budget_change,
    spec_differences,
    study_resource_differences,
)
from hpsearch.storage import (
    MissingSchemaError,
    StorageSettings,
    WorkerStorage,
    apply_worker_settings,
    create_schema,
    open_storage,
    open_worker_storage,
    redact_url,
    translate_errors,
)
from hpsearch.storage._optuna_internals import study_id_of

SPEC_ATTR = attrs.SPEC
# A name for this study that no earlier study of the same name shares (checkpoint folders use it).
UID_ATTR = attrs.UID


def settings_from(spec: StudySpec) -> StorageSettings:
    resources = spec.resources
    return StorageSettings(
        heartbeat_interval=resources.heartbeat_interval,
        grace_period=resources.grace_period,
        max_retry=resources.max_retry,
        outage_timeout=resources.db_timeout,
    )


@dataclass(frozen=True)
class CreateResult:
    spec: StudySpec
    created: bool  # False: the same spec was already there (a no-op), or its budget raised
    # The open database: `run` loads the study on it rather than opening the database again.
    storage: optuna.storages.RDBStorage
    raised: tuple[str, ...] = ()  # "n_trials 100 -> 200": what a raise of the budget changed

    def raised_line(self, url: str) -> str:
        return (
            f"raised the budget of study {self.spec.name!r} in {redact_url(url)}: "
            f"{', '.join(self.raised)}"
        )


def create_study(spec: StudySpec, url: str) -> CreateResult:
    """Create the study, or accept an identical existing one; refuse a different spec.

    A spec that differs from the stored one only in a wider [budget] raises the stored budget
    (while no trial runs): a search that has not converged goes on in the same study.
    This is the only place that creates the database schema.
    """
    if spec.warm_start:  # refused before anything is written
        from hpsearch.search.runtime._warm_start import earlier_trials

        earlier_trials(spec, url)
    storage = create_schema(url, settings=settings_from(spec))
    with translate_errors(url):
        try:
            study = optuna.create_study(
                study_name=spec.name,
                storage=storage,
                directions=spec.directions,  # type: ignore[arg-type]  # validated names
            )
        except optuna.exceptions.DuplicatedStudyError:
            existing = _stored_spec(storage, spec.name, url)
            change = budget_change(existing, spec)
            diffs = spec_differences(existing.identity(), spec.identity())
            if diffs and change is None:
                raise HpsearchError(
                    f"Study {spec.name!r} already exists in {redact_url(url)} with a different spec "
                    f"({'; '.join(diffs[:5])}); rename the study in the file, or delete the old one "
                    f"with `optuna delete-study --study-name {spec.name} --storage URL`."
                ) from None
            changed = study_resource_differences(existing, spec)
            if changed:
                raise HpsearchError(
                    f"Study {spec.name!r} already exists in {redact_url(url)} with [resources] "
                    f"{'; '.join(changed)}: these settings are the study's, read by every "
                    f"worker on every node, and stay as stored (only {' and '.join(NODE_RESOURCES)} "
                    "are this machine's); put the stored values back in the study file, or give "
                    "the study a new [study].name."
                ) from None
            if change is not None and change.lowered:
                raise HpsearchError(
                    f"Study {spec.name!r} in {redact_url(url)} has a wider [budget] than the "
                    f"file ({'; '.join(change.lowered)}): a budget can be raised, never lowered; "
                    "put the stored values back in the file, or give the study a new "
                    "[study].name."
                ) from None
            if change is not None:
                raised = _raise_budget(storage, existing, spec, url)
                return CreateResult(raised, False, storage, raised=tuple(change.raised))
            return CreateResult(existing, created=False, storage=storage)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(spec.metrics)
            study.set_user_attr(SPEC_ATTR, spec.data)
            uid = uuid.uuid4().hex[:12]
            study.set_user_attr(UID_ATTR, uid)
            tracking = spec.tracking or {}
            if "mlflow" in tracking:  # the study's run, parent of its configurations' runs
                from hpsearch.search.runtime._tracking import PARENT_RUN, start_study_run

                study.set_user_attr(PARENT_RUN, start_study_run(spec, uid))
            if "wandb" in tracking:  # refused here, not in every worker
                from hpsearch.search.runtime._tracking import require_wandb

                require_wandb()
            save_spec_note(study, spec)
            enqueue_first_batch(study, storage, spec.n_trials)
        except BaseException:
            # Leave no half-made study behind.
            optuna.delete_study(study_name=spec.name, storage=storage)
            raise
    return CreateResult(spec, created=True, storage=storage)


def _raise_budget(
    storage: optuna.storages.RDBStorage, existing: StudySpec, given: StudySpec, url: str
) -> StudySpec:
    """Store ``given``'s wider [budget] on the study and queue the slots it adds.

    Only while no trial runs: a running worker keeps the compute budgets it loaded. (The
    ``timeout`` is each run's, and may change at any time.)
    The spec is stored before the slots are queued: a raise cut short between the two leaves
    slots missing, which the workers' queue repair adds, never slots beyond the budget.
    """
    study = optuna.load_study(study_name=given.name, storage=storage)
    reap_stale_trials(study, storage)  # a dead worker's trial does not hold the raise up
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    limits = [{**spec.data["budget"], "timeout": None} for spec in (existing, given)]
    if running and limits[0] != limits[1]:  # a new timeout alone is each run's own
        raise HpsearchError(
            f"Study {given.name!r} in {redact_url(url)} has {len(running)} running trial(s): "
            "its [budget] can be raised only while none runs; wait for the workers to end "
            "(or stop them with Ctrl-C; a killed worker's trial ends once its heartbeat is "
            f"grace_period = {existing.resources.grace_period:g} s old), then run this again."
        )
    raised = StudySpec({**existing.data, "budget": given.data["budget"]})
    study.set_user_attr(SPEC_ATTR, raised.data)
    save_spec_note(study, raised)
    raise_budget_slots(study, storage, existing.n_trials, raised.n_trials)
    return raised


def _stored_spec(storage: optuna.storages.BaseStorage, name: str, url: str) -> StudySpec:
    study_id = storage.get_study_id_from_name(name)
    # A study created a moment ago by another process may not have its spec yet.
    for _ in range(50):
        data = storage.get_study_user_attrs(study_id).get(SPEC_ATTR)
        if data is not None:
            return StudySpec(data)
        time.sleep(0.1)
    raise HpsearchError(
        f"Study {name!r} in {redact_url(url)} was not created by hpsearch (it has no spec); "
        "choose another name in [study].name."
    )


@dataclass(frozen=True)
class LoadedStudy:
    study: optuna.Study
    spec: StudySpec
    storage: WorkerStorage  # the database, or an `hpsearch proxy` (grpc://HOST:PORT) before it


def load_study(
    name: str, url: str, *, storage: WorkerStorage | None = None, schema_checked: bool = False
) -> LoadedStudy:
    """Load an existing hpsearch study with the sampler and pruner its spec names.

    A worker reseeds the sampler for each trial from the study's seed and the trial's slot
    (runtime/_budget.py ``slot_seed``), so the seed here matters only outside workers.
    ``storage``: the database of ``url`` already open (``create_study``'s); by default it is
    opened here (``schema_checked``: as ``open_storage``).
    """
    try:
        if storage is None:
            storage = open_worker_storage(url, schema_checked=schema_checked)
    except MissingSchemaError:
        raise HpsearchError(
            f"Study {name!r} not found in {redact_url(url)} (the storage holds no studies); "
            "create it with `hpsearch create STUDY.toml`."
        ) from None
    with translate_errors(url):
        try:
            storage.get_study_id_from_name(name)
        except KeyError:
            names = sorted(s.study_name for s in storage.get_all_studies())
            known = (
                f"existing studies: {', '.join(names)}" if names else "the storage holds no studies"
            )
            raise HpsearchError(
                f"Study {name!r} not found in {redact_url(url)} ({known}); "
                "create it with `hpsearch create STUDY.toml`."
            ) from None
        spec = _stored_spec(storage, name, url)
    # The heartbeat and retry settings are the study's own.
    apply_worker_settings(storage, settings_from(spec))
    sampler = build_sampler(spec, seed=spec.sampler.seed)
    pruner = build_pruner(spec)
    with translate_errors(url):
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    return LoadedStudy(study, spec, storage)


def study_summaries(url: str) -> list[dict[str, Any]]:
    """One row per study: name, objective, directions, trials by state, best value."""
    from hpsearch.search.runtime._budget import budget_state

    try:
        storage = open_storage(url)
    except MissingSchemaError:
        return []
    rows: list[dict[str, Any]] = []
    with translate_errors(url):
        for frozen in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
            spec_data = frozen.user_attrs.get(SPEC_ATTR)
            trials = storage.get_all_trials(study_id_of(frozen), deepcopy=False)
            n_trials = spec_data["budget"]["n_trials"] if spec_data else len(trials)
            state = budget_state(trials, n_trials)
            best: Any = None
            if len(frozen.directions) == 1:
                # Among feasible trials, as Optuna's best_trial chooses.
                done = [
                    t
                    for t in trials
                    if t.state == optuna.trial.TrialState.COMPLETE and is_feasible(t)
                ]
                if done:
                    pick = (
                        max if frozen.directions[0] == optuna.study.StudyDirection.MAXIMIZE else min
                    )
                    best = pick(t.value for t in done if t.value is not None)
            rows.append(
                {
                    "study": frozen.study_name,
                    "objective": spec_data["study"]["objective"] if spec_data else None,
                    "directions": [d.name.lower() for d in frozen.directions],
                    "budget": n_trials,
                    "used": state.used,  # slots whose configuration ended, as the budget counts
                    "complete": state.complete,
                    "pruned": state.pruned,
                    "failed": state.failed,
                    "running": state.running,
                    "waiting": state.waiting,
                    "paused": state.paused,  # at a rung (ASHA) or between intervals (PBT)
                    "best_value": best,
                }
            )
    return rows
