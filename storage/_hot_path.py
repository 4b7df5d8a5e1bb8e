"""A worker's per-trial storage calls, written in SQLAlchemy Core.

Optuna's RDBStorage goes through the ORM: reading one trial builds a model object and fires a
lazy load per relation, and each write flushes a unit of work. For a trial of a few
milliseconds that Python work, not the database, is most of a worker's coordination cost. These
functions issue the same SQL on Optuna's own tables (its models' ``__table__``) without the ORM:
``ResilientRDBStorage`` runs them inside its outage retry. ``tests/test_storage_conformance.py``
runs Optuna's own storage test suite against the result on SQLite, PostgreSQL and MariaDB.

Every function takes a connection inside a transaction; the caller commits.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Connection, Table

from hpsearch.storage._optuna_internals import rdb_models

# An execution option: a transaction that only reads (on SQLite it begins DEFERRED, not
# IMMEDIATE; storage/_rdb.py).
READ_ONLY = "hpsearch_read_only"


@runtime_checkable
class RetryTemplates(Protocol):
    """A storage that tells a failed trial's retry (our RDB storage, an ``hpsearch proxy``
    client): both queue retries at most once per failed trial."""

    def retry_of(self, trial: FrozenTrial) -> FrozenTrial | None:
        """The WAITING retry of the failed ``trial``; None if it has no retry left."""
        ...


@runtime_checkable
class HotPath(RetryTemplates, Protocol):
    """A storage with the worker's fast path: the calls below in one transaction each.
    ``ResilientRDBStorage`` implements it; the worker runtime falls back to Optuna's own calls
    on any other storage (an ``hpsearch proxy``, a journal)."""

    def claim_trial(
        self, trial_id: int, user_attrs: Callable[[Mapping[str, Any]], Mapping[str, Any]]
    ) -> FrozenTrial | None:
        """Claim a WAITING trial (RUNNING, its user attributes, its first heartbeat); None if
        another worker was first."""
        ...

    def waiting_trial_ids(self, study_id: int, limit: int) -> list[int]:
        """The study's WAITING trial ids in claim order, at most ``limit``."""
        ...

    def enqueue_once(self, study_id: int, key: str, trials: Sequence[FrozenTrial]) -> bool:
        """Add ``trials`` and set the study system attribute ``key`` together, unless ``key``
        is set already; whether they were added."""
        ...

    def finish_with_user_attrs(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        """Write ``attrs`` on the trial in the transaction that finishes it."""
        ...

    def requeue_once(
        self, study_id: int, trial: FrozenTrial, retry: FrozenTrial | None = None
    ) -> bool:
        """Queue the failed ``trial``'s retry (``retry``, when the caller made it already)
        unless it is queued; whether this call did."""
        ...


def hot_path_of(storage: object) -> HotPath | None:
    """``storage`` when it has the fast path, else None."""
    return storage if isinstance(storage, HotPath) else None


@functools.cache
def _tables() -> dict[str, Table]:
    models = rdb_models()
    return {
        "trials": models.TrialModel.__table__,
        "params": models.TrialParamModel.__table__,
        "values": models.TrialValueModel.__table__,
        "intermediate": models.TrialIntermediateValueModel.__table__,
        "user": models.TrialUserAttributeModel.__table__,
        "system": models.TrialSystemAttributeModel.__table__,
        "heartbeats": models.TrialHeartbeatModel.__table__,
        "studies": models.StudyModel.__table__,
        "study_system": models.StudySystemAttributeModel.__table__,
    }


@functools.lru_cache(maxsize=256)
def _distribution(text: str) -> BaseDistribution:
    # A study has a handful of distinct distributions; parsing their JSON per read adds up.
    return optuna.distributions.json_to_distribution(text)


def utc_now() -> dt.datetime:
    """Now, as Optuna stores trial times: naive UTC."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _local(stored: dt.datetime | None) -> dt.datetime | None:
    """A stored naive-UTC time as Optuna hands it out: naive local time."""
    if stored is None:
        return None
    return stored.replace(tzinfo=dt.UTC).astimezone().replace(tzinfo=None)


@functools.cache
def _trial_reads() -> dict[str, sqlalchemy.Select[Any]]:
    """The statements that read one trial (``:trial_id``), built once: building a statement
    costs about what running it does."""
    t = _tables()
    trial_id: sqlalchemy.BindParameter[int] = sqlalchemy.bindparam("trial_id")

    def rows(table: Table, *columns: str, order: str) -> sqlalchemy.Select[Any]:
        return (
            sqlalchemy.select(*(table.c[c] for c in columns))
            .where(table.c.trial_id == trial_id)
            .order_by(table.c[order])
        )

    trials = t["trials"]
    return {
        "trial": sqlalchemy.select(
            trials.c.number, trials.c.state, trials.c.datetime_start, trials.c.datetime_complete
        ).where(trials.c.trial_id == trial_id),
        "values": rows(t["values"], "objective", "value", "value_type", order="objective"),
        "params": rows(
            t["params"], "param_name", "param_value", "distribution_json", order="param_id"
        ),
        "user": rows(t["user"], "key", "value_json", order="trial_user_attribute_id"),
        "system": rows(t["system"], "key", "value_json", order="trial_system_attribute_id"),
        "intermediate": rows(
            t["intermediate"],
            "step",
            "intermediate_value",
            "intermediate_value_type",
            order="step",
        ),
    }


def read_trial(connection: Connection, trial_id: int) -> FrozenTrial:
    """The trial as Optuna's ``RDBStorage.get_trial`` builds it; KeyError if there is none."""
    reads = _trial_reads()
    key = {"trial_id": trial_id}
    row = connection.execute(reads["trial"], key).one_or_none()
    if row is None:
        raise KeyError(f"No trial with trial_id {trial_id} exists.")

    def rows(what: str) -> Sequence[Any]:
        return connection.execute(reads[what], key).all()

    models = rdb_models()
    params = rows("params")
    distributions = {name: _distribution(text) for name, _, text in params}
    return FrozenTrial(
        number=row.number,
        state=row.state,
        value=None,
        values=[
            models.TrialValueModel.stored_repr_to_value(v, kind) for _, v, kind in rows("values")
        ]
        or None,
        datetime_start=_local(row.datetime_start),
        datetime_complete=_local(row.datetime_complete),
        params={name: distributions[name].to_external_repr(v) for name, v, _ in params},
        distributions=distributions,
        user_attrs=_attrs(rows("user")),
        system_attrs=_attrs(rows("system")),
        intermediate_values={
            step: models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(v, kind)
            for step, v, kind in rows("intermediate")
        },
        trial_id=trial_id,
    )


def _attrs(rows: Sequence[Any]) -> dict[str, Any]:
    return {key: json.loads(text) for key, text in rows}


def locked_state(connection: Connection, trial_id: int) -> tuple[TrialState, int]:
    """The trial's state and number, its row locked until the transaction ends (PostgreSQL,
    MySQL; SQLite's transactions hold the database's write lock from their start)."""
    trials = _tables()["trials"]
    row = connection.execute(
        sqlalchemy.select(trials.c.state, trials.c.number)
        .where(trials.c.trial_id == trial_id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise KeyError(f"No trial with trial_id {trial_id} exists.")
    return row.state, row.number


def _updatable(connection: Connection, trial_id: int) -> TrialState:
    """The trial's state, its row locked; UpdateFinishedTrialError if it is finished."""
    state, number = locked_state(connection, trial_id)
    if state.is_finished():
        raise optuna.exceptions.UpdateFinishedTrialError(
            f"Trial#{number} has already finished and can not be updated."
        )
    return state


def set_state_values(
    connection: Connection,
    trial_id: int,
    state: TrialState,
    values: Sequence[float] | None,
    user_attrs: Mapping[str, Any],
) -> bool:
    """Optuna's ``set_trial_state_values``, plus ``user_attrs`` written in the same transaction
    when the trial finishes."""
    current = _updatable(connection, trial_id)
    t = _tables()
    if values is not None:
        table = t["values"]
        models = rdb_models()
        # Read, then update or insert (never delete then insert): see set_attr on MySQL locks.
        stored_objectives = set(
            connection.execute(
                sqlalchemy.select(table.c.objective).where(table.c.trial_id == trial_id)
            ).scalars()
        )
        for objective, value in enumerate(values):
            stored, kind = models.TrialValueModel.value_to_stored_repr(value)
            if objective in stored_objectives:
                connection.execute(
                    table.update()
                    .where(table.c.trial_id == trial_id, table.c.objective == objective)
                    .values(value=stored, value_type=kind)
                )
            else:
                connection.execute(
                    table.insert().values(
                        trial_id=trial_id, objective=objective, value=stored, value_type=kind
                    )
                )
    if state == TrialState.RUNNING and current != TrialState.WAITING:
        return False
    changes: dict[str, Any] = {"state": state}
    if state == TrialState.RUNNING:
        changes["datetime_start"] = utc_now()
    if state.is_finished():
        changes["datetime_complete"] = utc_now()
        for key, value in user_attrs.items():
            set_attr(connection, "user", trial_id, key, value)
    trials = t["trials"]
    connection.execute(trials.update().where(trials.c.trial_id == trial_id).values(**changes))
    return True


def set_attr(connection: Connection, kind: str, trial_id: int, key: str, value: Any) -> None:
    """Set a user (``kind="user"``) or system attribute of a trial whose row the transaction
    holds. A plain read decides between update and insert: an update that matches nothing
    would take a gap lock on MySQL, and two workers' inserts into that gap deadlock."""
    table = _tables()[kind]
    text = json.dumps(value)
    where = sqlalchemy.and_(table.c.trial_id == trial_id, table.c.key == key)
    if connection.execute(sqlalchemy.select(table.c.key).where(where)).first() is None:
        connection.execute(table.insert().values(trial_id=trial_id, key=key, value_json=text))
    else:
        connection.execute(table.update().where(where).values(value_json=text))


def set_param(
    connection: Connection,
    trial_id: int,
    name: str,
    internal_value: float,
    distribution: BaseDistribution,
    previous: BaseDistribution | None,
) -> None:
    """Optuna's ``_set_trial_param``: the trial must be unfinished, and a parameter of the same
    name elsewhere in the study must have a compatible distribution."""
    _updatable(connection, trial_id)
    t = _tables()
    params, trials = t["params"], t["trials"]
    if previous is None:
        study = sqlalchemy.select(trials.c.study_id).where(trials.c.trial_id == trial_id)
        text = connection.execute(
            sqlalchemy.select(params.c.distribution_json)
            .join(trials, trials.c.trial_id == params.c.trial_id)
            .where(trials.c.study_id == study.scalar_subquery(), params.c.param_name == name)
            .limit(1)
        ).scalar_one_or_none()
        previous = None if text is None else _distribution(text)
    if previous is not None:
        optuna.distributions.check_distribution_compatibility(previous, distribution)
    connection.execute(
        params.insert().values(
            trial_id=trial_id,
            param_name=name,
            param_value=internal_value,
            distribution_json=optuna.distributions.distribution_to_json(distribution),
        )
    )


def claim(
    connection: Connection,
    trial_id: int,
    user_attrs: Mapping[str, Any],
    *,
    heartbeat: bool,
) -> bool:
    """Move a WAITING trial to RUNNING with ``user_attrs`` and, with ``heartbeat``, its first
    heartbeat. False (nothing written) if it was not WAITING: another worker claimed it."""
    t = _tables()
    trials = t["trials"]
    moved = connection.execute(
        trials.update()
        .where(trials.c.trial_id == trial_id, trials.c.state == TrialState.WAITING)
        .values(state=TrialState.RUNNING, datetime_start=utc_now())
    ).rowcount
    if not moved:
        return False
    for key, value in user_attrs.items():
        set_attr(connection, "user", trial_id, key, value)
    if heartbeat:
        connection.execute(
            t["heartbeats"].insert().values(trial_id=trial_id, heartbeat=sqlalchemy.func.now())
        )
    return True


def system_attrs(connection: Connection, trial_id: int) -> dict[str, Any]:
    system = _tables()["system"]
    return _attrs(
        connection.execute(
            sqlalchemy.select(system.c.key, system.c.value_json).where(
                system.c.trial_id == trial_id
            )
        ).all()
    )


def add_waiting_trials(
    connection: Connection, study_id: int, trials: Sequence[FrozenTrial]
) -> None:
    """Add WAITING trials made from ``trials`` (their params, attributes, intermediate values),
    numbered as Optuna numbers them: by how many of the study's trials have smaller ids."""
    t = _tables()
    table = t["trials"]
    ids: list[int] = []
    for trial in trials:
        assert trial.state == TrialState.WAITING, trial.state
        inserted = connection.execute(
            table.insert().values(study_id=study_id, number=None, state=TrialState.WAITING)
        ).inserted_primary_key
        assert inserted is not None
        ids.append(int(inserted[0]))
    before = connection.execute(
        sqlalchemy.select(sqlalchemy.func.count())
        .select_from(table)
        .where(table.c.study_id == study_id, table.c.trial_id < ids[0])
    ).scalar_one()
    between = connection.execute(
        sqlalchemy.select(table.c.trial_id)
        .where(table.c.study_id == study_id, table.c.trial_id >= ids[0])
        .order_by(table.c.trial_id)
    ).scalars()
    numbers = {trial_id: before + i for i, trial_id in enumerate(between)}
    connection.execute(
        table.update().where(table.c.trial_id == sqlalchemy.bindparam("id")),
        [{"id": trial_id, "number": numbers[trial_id]} for trial_id in ids],
    )
    models = rdb_models()
    rows: dict[str, list[dict[str, Any]]] = {"params": [], "user": [], "system": []}
    rows["intermediate"] = []
    for trial_id, trial in zip(ids, trials, strict=True):
        for name, value in trial.params.items():
            distribution = trial.distributions[name]
            rows["params"].append(
                {
                    "trial_id": trial_id,
                    "param_name": name,
                    "param_value": distribution.to_internal_repr(value),
                    "distribution_json": optuna.distributions.distribution_to_json(distribution),
                }
            )
        for kind, attrs in (("user", trial.user_attrs), ("system", trial.system_attrs)):
            rows[kind] += [
                {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                for key, value in attrs.items()
            ]
        for step, value in trial.intermediate_values.items():
            stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(
                value
            )
            rows["intermediate"].append(
                {
                    "trial_id": trial_id,
                    "step": step,
                    "intermediate_value": stored,
                    "intermediate_value_type": kind,
                }
            )
    for kind, batch in rows.items():
        if batch:
            connection.execute(t[kind].insert(), batch)


def waiting_trial_ids(
    connection: Connection, study_id: int, first: Sequence[str], limit: int
) -> list[int]:
    """The ids of the study's WAITING trials: those with one of the system attributes ``first``
    first, then by id."""
    t = _tables()
    trials, system = t["trials"], t["system"]
    marked = (
        sqlalchemy.select(system.c.trial_id)
        .where(system.c.trial_id == trials.c.trial_id, system.c.key.in_(first))
        .exists()
    )
    return list(
        connection.execute(
            sqlalchemy.select(trials.c.trial_id)
            .where(trials.c.study_id == study_id, trials.c.state == TrialState.WAITING)
            .order_by(sqlalchemy.case((marked, 0), else_=1), trials.c.trial_id)
            .limit(limit)
        ).scalars()
    )
