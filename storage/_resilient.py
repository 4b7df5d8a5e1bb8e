"""RDBStorage that rides out database restarts and short outages.

Every storage call a worker makes goes through a retry with exponential backoff on connection
errors (the server restarting, a network blip, SQLite's lock, a MySQL deadlock), with one log line
when the outage starts and one when it ends. After ``outage_timeout`` seconds it gives up with a
StorageError. Errors that are not about the connection (a missing table, bad data) are raised at
once. Optuna's cache wraps this class like any RDBStorage, so reads stay incremental.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import PROMOTED_FROM, REQUEUED, RETRY_OF
from hpsearch.errors import StorageError
from hpsearch.storage import _hot_path as hot_path
from hpsearch.storage._hot_path import READ_ONLY
from hpsearch.storage._optuna_internals import rdb_models, study_id_of
from hpsearch.storage._url import redact_text, redact_url

log = logging.getLogger("hpsearch.storage")

_CONNECTION_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
)
# Storage calls a worker makes after start-up. Study creation and schema changes are not
# retried: they run once, from `hpsearch create`, where a clear failure is better.
_RETRIED = (
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "_create_new_trial",
    "get_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_all_trials",
    "_get_trials",
    "get_best_trial",
    "_get_best_trial_id",
    "record_heartbeat",
)

T = TypeVar("T")


# OperationalErrors that waiting does not cure: raised at once.
_PERMANENT = ("no such table", "doesn't exist", 'relation "', "disk is full", "disk full")


def outage_cause(err: BaseException) -> str:
    """The driver's own words for a lost connection ("Connection refused", "terminating
    connection due to administrator command"), not the wrapper's: Optuna re-raises a failed
    commit as "invalid data in the commit, e.g. exceeding max length", which misleads."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.orig is not None:
            seen = seen.orig
            break
        if seen.__cause__ is None and seen.__context__ is None:
            break
        seen = seen.__cause__ or seen.__context__
    assert seen is not None
    # The first line says it ('... port 5432 failed: Connection refused', 'server closed the
    # connection unexpectedly'); the lines after it are the driver's hints.
    lines = [line.strip() for line in str(seen).splitlines() if line.strip()]
    return (lines[0] if lines else type(seen).__name__)[:200]


def is_connection_error(err: BaseException) -> bool:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, _CONNECTION_ERRORS):
            return not any(marker in str(seen).lower() for marker in _PERMANENT)
        seen = seen.__cause__ or seen.__context__
    return False


class ResilientRDBStorage(optuna.storages.RDBStorage, hot_path.HotPath):
    outage_timeout: float = 300.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_finish: dict[int, dict[str, Any]] = {}  # trial id -> user attrs to write

    # One outage per storage, whichever thread (trial loop, heartbeat) meets it first: one line
    # when it starts, one when it ends, one clock for giving up.
    _outage_lock = threading.Lock()
    _outage_since: float | None = None

    def _outage_started(self, cause: str) -> float:
        with self._outage_lock:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning(
                    "database %s unreachable (%s); retrying for up to %ds",
                    redact_url(self.url),
                    cause,
                    self.outage_timeout,
                )
            return self._outage_since

    def _outage_ended(self) -> None:
        with self._outage_lock:
            if self._outage_since is not None:
                log.warning(
                    "database reachable again after %.1fs; continuing",
                    time.monotonic() - self._outage_since,
                )
                self._outage_since = None

    def _retry(self, call: Callable[[], T], what: str) -> T:
        delay = 0.5
        while True:
            try:
                result = call()
            except Exception as err:
                if not is_connection_error(err):
                    raise
                now = time.monotonic()
                cause = redact_text(outage_cause(err), self.url)
                started = self._outage_started(cause)
                if now - started >= self.outage_timeout:
                    raise StorageError(
                        f"Database {redact_url(self.url)} unreachable for {self.outage_timeout:.0f}s "
                        f"({cause}); check the server, then start the workers again (their "
                        "trials resume from their checkpoints)."
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if self._outage_since is not None:
                self._outage_ended()
            return result

    # The per-trial calls, in SQLAlchemy Core (storage/_hot_path.py): the ORM's own work was
    # most of a short trial's coordination cost.

    def _write(self, what: str, call: Callable[[sqlalchemy.Connection], T]) -> T:
        """``call`` in one transaction that takes SQLite's write lock at its start."""

        def attempt() -> T:
            with self.engine.begin() as connection:
                return call(connection)

        return self._retry(attempt, what)

    def _read(self, what: str, call: Callable[[sqlalchemy.Connection], T]) -> T:
        """``call`` in one read-only transaction: on SQLite it does not take the write lock, so
        readers never queue behind a writer (WAL gives them a consistent snapshot)."""

        def attempt() -> T:
            with self.engine.connect() as connection:
                connection.execution_options(**{READ_ONLY: True})
                with connection.begin():
                    return call(connection)

        return self._retry(attempt, what)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._read("get_trial", lambda c: hot_path.read_trial(c, trial_id))

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        self._set_trial_param(trial_id, param_name, param_value_internal, distribution, None)

    def _set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
        previous_distribution: BaseDistribution | None,
    ) -> None:
        self._write(
            "set_trial_param",
            lambda c: hot_path.set_param(
                c, trial_id, param_name, param_value_internal, distribution, previous_distribution
            ),
        )

    def finish_with_user_attrs(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        """Write ``attrs`` on the trial in the transaction that finishes it (``tell``), not in
        one of their own."""
        self._on_finish.setdefault(trial_id, {}).update(attrs)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        attempts = 0
        attrs = self._on_finish.pop(trial_id, {}) if state.is_finished() else {}

        def call(connection: sqlalchemy.Connection) -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return hot_path.set_state_values(connection, trial_id, state, values, attrs)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A retry after a lost acknowledgement: the first attempt may have committed.
                if attempts > 1 and hot_path.locked_state(connection, trial_id)[0] == state:
                    return True
                raise

        try:
            return self._write("set_trial_state_values", call)
        except sqlalchemy.exc.IntegrityError:
            return False

    def claim_trial(
        self, trial_id: int, user_attrs: Callable[[Mapping[str, Any]], Mapping[str, Any]]
    ) -> FrozenTrial | None:
        """Claim a WAITING trial in one transaction: RUNNING from now, the user attributes
        ``user_attrs(system_attrs)`` and the first heartbeat. None if another worker was first.

        One round trip where Optuna's calls take four, and no moment in which the trial runs
        without a heartbeat.
        """
        attempts = 0

        def claim(connection: sqlalchemy.Connection) -> FrozenTrial | None:
            nonlocal attempts
            attempts += 1
            attrs = user_attrs(hot_path.system_attrs(connection, trial_id))
            beat = self.heartbeat_interval is not None
            if not hot_path.claim(connection, trial_id, attrs, heartbeat=beat):
                # A retry after a lost acknowledgement finds its own claim committed.
                trial = hot_path.read_trial(connection, trial_id)
                mine = attempts > 1 and trial.state == TrialState.RUNNING and bool(attrs)
                if not (mine and all(trial.user_attrs.get(k) == v for k, v in attrs.items())):
                    return None
            return hot_path.read_trial(connection, trial_id)

        return self._write("claim_trial", claim)

    def enqueue_once(self, study_id: int, key: str, trials: Sequence[FrozenTrial]) -> bool:
        """Add ``trials`` to the study in one transaction that also sets the study system
        attribute ``key``; add nothing and return False if ``key`` is set already.

        A retried insert after a lost acknowledgement would otherwise add the trials twice, as
        would two workers doing one duty (re-queuing one dead worker's trial): either way the
        study would run more trials than its budget. The study row's lock makes the check and
        the insert one step on PostgreSQL and MySQL; SQLite's BEGIN IMMEDIATE does it there.
        """
        models = rdb_models()
        studies = models.StudyModel.__table__
        marks = models.StudySystemAttributeModel.__table__

        def call(connection: sqlalchemy.Connection) -> bool:
            connection.execute(
                sqlalchemy.select(studies.c.study_id)
                .where(studies.c.study_id == study_id)
                .with_for_update()
            ).one()
            done = connection.execute(
                sqlalchemy.select(marks.c.study_system_attribute_id).where(
                    marks.c.study_id == study_id, marks.c.key == key
                )
            ).first()
            if done is not None:
                return False
            connection.execute(
                marks.insert().values(study_id=study_id, key=key, value_json=json.dumps(True))
            )
            if trials:
                hot_path.add_waiting_trials(connection, study_id, trials)
            return True

        return self._write("enqueue_once", call)

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        """Optuna's retry of a dead worker's trial, added at most once per failed trial.

        Two workers' reapers can both fail one stale trial (a retried update after a lost
        acknowledgement reads as a success), and each would queue a retry: one slot, two trials.
        """
        if super().get_heartbeat_stale_trial_callback() is None:
            return None

        def requeue_once(study: optuna.Study, trial: FrozenTrial) -> None:
            self.requeue_once(study_id_of(study), trial)

        return requeue_once

    def retry_of(self, trial: FrozenTrial) -> FrozenTrial | None:
        """The WAITING retry Optuna's callback makes of the failed ``trial`` (its template, its
        ``max_retry``); None when retries are off or ``trial`` used its last one."""
        callback = super().get_heartbeat_stale_trial_callback()
        return None if callback is None else retry_template(callback, trial)

    def requeue_once(
        self, study_id: int, trial: FrozenTrial, retry: FrozenTrial | None = None
    ) -> bool:
        """Queue the failed ``trial``'s retry (``retry``, or the one this storage's settings
        make) unless any process did already (or it has no retry left); whether this call
        queued it."""
        retry = retry or self.retry_of(trial)
        if retry is None:
            return False
        return self.enqueue_once(study_id, f"{REQUEUED}{trial.number}", [retry])

    def waiting_trial_ids(self, study_id: int, limit: int) -> list[int]:
        """The ids of the study's WAITING trials in the order workers claim them: retries of
        trials whose worker died and promoted configurations first (their checkpoints wait), then
        the oldest slots.

        One indexed query for ids alone. Going through Optuna's trial reads instead would build
        every unfinished trial (params, attributes, reports) on each claim.
        """
        return self._read(
            "waiting_trial_ids",
            lambda c: hot_path.waiting_trial_ids(c, study_id, (RETRY_OF, PROMOTED_FROM), limit),
        )

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials, plus RUNNING trials that never wrote a heartbeat.

        Optuna skips a trial without a heartbeat row, so a worker killed between claiming a
        trial and its first heartbeat would leave it RUNNING forever, and the study unfinished.
        """
        return self._retry(lambda: self._stale_trial_ids(study_id), "_get_stale_trial_ids")

    def _stale_trial_ids(self, study_id: int) -> list[int]:
        from sqlalchemy import orm

        stale = set(super()._get_stale_trial_ids(study_id))
        grace = timedelta(seconds=self.grace_period or 2 * (self.heartbeat_interval or 60))
        # datetime_start is written with the claiming worker's clock, as this comparison is.
        oldest = datetime.now() - grace
        with self.scoped_session() as session:
            rows = (
                session.query(rdb_models().TrialModel)
                .options(orm.selectinload(rdb_models().TrialModel.heartbeats))
                .filter(rdb_models().TrialModel.study_id == study_id)
                .filter(rdb_models().TrialModel.state == TrialState.RUNNING)
                .all()
            )
            for trial in rows:
                if not trial.heartbeats and trial.datetime_start and trial.datetime_start < oldest:
                    stale.add(int(trial.trial_id))
        self.scoped_session.remove()
        return sorted(stale)


def retry_template(
    callback: Callable[[optuna.Study, FrozenTrial], None], trial: FrozenTrial
) -> FrozenTrial | None:
    """The WAITING retry Optuna's retry ``callback`` makes of the failed ``trial``; None when
    ``trial`` used its last retry."""
    made = _TrialsAdded()
    # A copy: the callback appends to the trial's own retry history list, and ``trial`` may be
    # the study's cached one.
    callback(made, copy.deepcopy(trial))  # type: ignore[arg-type]
    return made.trials[0] if made.trials else None


class _TrialsAdded:
    """Stands in for a study to collect the trials a callback would add to it."""

    def __init__(self) -> None:
        self.trials: list[FrozenTrial] = []

    def add_trial(self, trial: FrozenTrial) -> None:
        self.trials.append(trial)


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def wrapper(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retry(lambda: method(self, *args, **kwargs), name)

    return wrapper


for _name in _RETRIED:
    setattr(ResilientRDBStorage, _name, _retrying(_name))
