"""Our RDB storage passes Optuna's own storage test suite on SQLite, PostgreSQL and MariaDB.

A worker's per-trial calls (read a trial, set a parameter, finish a trial, claim, enqueue) are
written in SQLAlchemy Core (storage/_hot_path.py) rather than through Optuna's ORM. Optuna's
``StorageTestCase`` is the contract every storage must keep; it runs here against
``ResilientRDBStorage`` on each database, in a database of its own that each test starts empty.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.testing.pytest_storages import StorageTestCase
from optuna.trial import TrialState

from hpsearch.storage import create_schema, open_storage
from hpsearch.storage._optuna_internals import rdb_models
from hpsearch.storage._resilient import ResilientRDBStorage
from tests.conftest import SERVER_URLS

CONFORMANCE_DB = "hpsearch_conformance"


@pytest.fixture(scope="module")
def server_storages() -> Iterator[dict[str, ResilientRDBStorage]]:
    """One storage per database server, on a database of this module's own."""
    storages = {}
    for backend, admin_url in SERVER_URLS.items():
        admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        # Of this process: test processes side by side (pytest -n, other sessions) never share it.
        name = f"{CONFORMANCE_DB}_{os.getpid()}"
        force = " WITH (FORCE)" if backend == "postgresql" else ""
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
        admin.dispose()
        url = sqlalchemy.make_url(admin_url).set(database=name)
        storage = create_schema(url.render_as_string(hide_password=False))
        assert isinstance(storage, ResilientRDBStorage)
        storages[backend] = storage
    yield storages
    for backend, storage in storages.items():
        database = storage.engine.url.database
        storage.engine.dispose()
        admin = sqlalchemy.create_engine(SERVER_URLS[backend], isolation_level="AUTOCOMMIT")
        force = " WITH (FORCE)" if backend == "postgresql" else ""
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {database}{force}")
        admin.dispose()


def _emptied(storage: ResilientRDBStorage) -> ResilientRDBStorage:
    """The storage with every study deleted (children first: MariaDB checks foreign keys)."""
    models = rdb_models()
    with storage.engine.begin() as connection:
        for table in reversed(models.BaseModel.metadata.sorted_tables):
            if table.name not in ("version_info", "alembic_version"):
                connection.execute(table.delete())
    return storage


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with the schema, copied for each test (creating the schema takes longer
    than most tests)."""
    path = tmp_path_factory.mktemp("conformance") / "template.db"
    create_schema(f"sqlite:///{path}").engine.dispose()
    return path


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> ResilientRDBStorage:
    if request.param == "sqlite":
        path = tmp_path / "conformance.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        made = open_storage(f"sqlite:///{path}")
        assert isinstance(made, ResilientRDBStorage)
        return made
    return _emptied(request.getfixturevalue("server_storages")[request.param])


class TestOptunasStorageContract(StorageTestCase):
    """Every test of Optuna's storage contract that involves trials, on each database. Study
    calls go through Optuna's own code unchanged: their tests are left to Optuna."""

    test_create_new_study = None
    test_create_new_study_unique_id = None
    test_create_new_study_with_name = None
    test_create_new_study_with_empty_name = None
    test_delete_study = None
    test_delete_study_after_create_multiple_studies = None
    test_get_study_id_from_name_and_get_study_name_from_id = None
    test_set_and_get_study_directions = None
    test_set_and_get_study_user_attrs = None
    test_set_and_get_study_user_attrs_for_floats = None
    test_set_and_get_study_system_attrs = None
    test_set_and_get_study_system_attrs_for_floats = None
    test_study_user_and_system_attrs_confusion = None
    test_get_all_studies = None
    test_study_user_attrs_concurrent_write = None
    test_study_system_attrs_concurrent_write = None


def test_our_trial_reads_equal_optunas_own(storage: ResilientRDBStorage) -> None:
    """A trial with every kind of field (params of each distribution, infinite and NaN values,
    attributes, reports) reads back from our Core read exactly as Optuna's ORM read builds it."""
    study_id = storage.create_new_study(
        [optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MAXIMIZE]
    )
    trial_id = storage.create_new_trial(study_id)
    storage.set_trial_param(trial_id, "lr", 3e-4, FloatDistribution(1e-5, 1, log=True))
    storage.set_trial_param(trial_id, "layers", 3, IntDistribution(1, 4))
    storage.set_trial_param(trial_id, "act", 1, CategoricalDistribution(["relu", "gelu", None]))
    storage.set_trial_user_attr(trial_id, "where", {"host": "n1", "devices": [0, 1]})
    storage.set_trial_system_attr(trial_id, "slot", 7)
    for step, value in enumerate([0.5, float("nan"), float("inf"), -float("inf")]):
        storage.set_trial_intermediate_value(trial_id, step, value)
    assert storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [float("inf"), 0.25])

    ours = storage.get_trial(trial_id)
    optunas = optuna.storages.RDBStorage.get_trial(storage, trial_id)
    assert ours.params == optunas.params == {"lr": pytest.approx(3e-4), "layers": 3, "act": "gelu"}
    assert ours.distributions == optunas.distributions
    assert ours.values == optunas.values == [float("inf"), 0.25]
    reports, theirs = ours.intermediate_values, optunas.intermediate_values
    assert list(reports) == list(theirs) == [0, 1, 2, 3]
    assert math.isnan(reports[1]) and math.isnan(theirs[1])
    assert [reports[s] for s in (0, 2, 3)] == [theirs[s] for s in (0, 2, 3)]
    assert ours.user_attrs == optunas.user_attrs
    assert ours.system_attrs == optunas.system_attrs
    assert (ours.number, ours.state) == (optunas.number, optunas.state) == (0, TrialState.COMPLETE)
    assert ours.datetime_start == optunas.datetime_start
    assert ours.datetime_complete == optunas.datetime_complete
    assert isinstance(ours.datetime_complete, dt.datetime)
    assert abs(ours.datetime_complete - dt.datetime.now()) < dt.timedelta(minutes=5), (
        "trial times are local time, as Optuna hands them out"
    )


@contextlib.contextmanager
def _mysql_database(
    name: str, *, user: tuple[str, str] | None = None
) -> Iterator[tuple[sqlalchemy.Engine, sqlalchemy.URL]]:
    """A MariaDB database of its own whose schema Optuna's own storage made (no hpsearch
    widening); ``user``: (name, password) of a user who may only read and write its rows.
    Dropped at the end, with the user."""
    admin = sqlalchemy.create_engine(SERVER_URLS["mysql"], isolation_level="AUTOCOMMIT")
    setup = [f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"]
    if user is not None:
        setup += [
            f"DROP USER IF EXISTS '{user[0]}'@'%%'",
            f"CREATE USER '{user[0]}'@'%%' IDENTIFIED BY '{user[1]}'",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {name}.* TO '{user[0]}'@'%%'",
        ]
    with admin.connect() as connection:
        for statement in setup:
            connection.exec_driver_sql(statement)
    url = sqlalchemy.make_url(SERVER_URLS["mysql"]).set(database=name)
    try:
        optuna.storages.RDBStorage(url.render_as_string(hide_password=False)).engine.dispose()
        yield admin, url
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            if user is not None:
                connection.exec_driver_sql(f"DROP USER IF EXISTS '{user[0]}'@'%%'")
        admin.dispose()


def test_trial_times_keep_microseconds_on_mysql_also_in_a_schema_optuna_created() -> None:
    """Optuna declares trial times DATETIME, whole seconds on MySQL; ``create_schema`` widens
    them (once) to DATETIME(6), also in a database whose schema Optuna's own storage made."""
    name = f"{CONFORMANCE_DB}_times"
    with _mysql_database(name) as (admin, url):
        url_text = url.render_as_string(hide_password=False)

        def precisions() -> dict[str, int]:
            with admin.connect() as connection:
                rows = connection.exec_driver_sql(
                    "SELECT column_name, datetime_precision FROM information_schema.columns "
                    f"WHERE table_schema = '{name}' AND table_name = 'trials' "
                    "AND column_name LIKE 'datetime_%%'"
                )
                return {str(column): int(precision) for column, precision in rows}

        assert precisions() == {"datetime_start": 0, "datetime_complete": 0}
        for _ in range(2):  # the second call finds nothing to widen
            storage = create_schema(url_text)
            assert precisions() == {"datetime_start": 6, "datetime_complete": 6}
        study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE])
        start = dt.datetime(2026, 1, 2, 3, 4, 5, 678901)
        trial = optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=1.0, params={}, distributions={}
        )
        trial.datetime_start, trial.datetime_complete = start, start + dt.timedelta(seconds=0.25)
        trial_id = storage.create_new_trial(study_id, template_trial=trial)
        read = storage.get_trial(trial_id)
        assert (read.datetime_start, read.datetime_complete) == (
            start,
            start + dt.timedelta(seconds=0.25),
        )
        storage.engine.dispose()


def test_a_database_user_without_alter_still_creates_studies_on_mysql(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Widening the trial times needs ALTER: a user without it, on a schema an administrator
    made with Optuna, creates its study all the same and is told what an administrator can run
    (its password never shown)."""
    name, user, secret = f"{CONFORMANCE_DB}_noalter", "hpsearch_noalter", "s3cret-pw"
    with _mysql_database(name, user=(user, secret)) as (_, owner):
        limited = owner.set(username=user, password=secret).render_as_string(hide_password=False)
        with caplog.at_level("WARNING", logger="hpsearch.storage"):
            storage = create_schema(limited)
        study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
        assert storage.get_study_id_from_name("s") == study_id
        storage.engine.dispose()
        [warning] = [r.getMessage() for r in caplog.records if r.name == "hpsearch.storage"]
        assert "stay whole seconds" in warning
        assert "ALTER TABLE trials MODIFY datetime_complete DATETIME(6) NULL" in warning
        assert secret not in warning and "***" in warning
