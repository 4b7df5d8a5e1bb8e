"""Backends for the storage contract: SQLite always, PostgreSQL and MySQL on 127.0.0.1.

A server that cannot be reached fails the tests that need it (never a silent skip). Each
session gets a fresh database of its own on each server (dropped at the end), so tests see
exactly what they created and several sessions can run side by side.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from ._support import free_port as free_port
from ._support import study_toml

ROOT = Path(__file__).resolve().parent.parent
TEST_DB = f"hpsearch_test_{os.getpid()}"
SERVER_URLS = {
    "postgresql": os.environ.get(
        "HPSEARCH_TEST_POSTGRES_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
    "mysql": os.environ.get(
        "HPSEARCH_TEST_MYSQL_ADMIN", "mysql+pymysql://root@127.0.0.1:3306/test"
    ),
}


def _drop(connection: sqlalchemy.Connection, backend: str) -> None:
    force = " WITH (FORCE)" if backend == "postgresql" else ""
    connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {TEST_DB}{force}")


def _fresh_database(admin_url: str) -> str:
    """Drop and create the test database; return its URL."""
    url = sqlalchemy.make_url(admin_url)
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            _drop(connection, url.get_backend_name())
            connection.exec_driver_sql(f"CREATE DATABASE {TEST_DB}")
    except sqlalchemy.exc.OperationalError as err:
        pytest.fail(
            f"database server for {url.render_as_string(hide_password=True)} is unreachable: "
            f"{err.orig}; start it (see .ci/run)",
            pytrace=False,
        )
    finally:
        engine.dispose()
    return url.set(database=TEST_DB).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_urls() -> Iterator[dict[str, str]]:
    yield {name: _fresh_database(url) for name, url in SERVER_URLS.items()}
    for admin_url in SERVER_URLS.values():
        url = sqlalchemy.make_url(admin_url)
        engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                _drop(connection, url.get_backend_name())
        except sqlalchemy.exc.SQLAlchemyError:
            pass  # a server stopped by a test is restarted by the next session's setup
        finally:
            engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage backend in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hpsearch.db'}"
    urls: dict[str, str] = request.getfixturevalue("server_urls")
    return urls[request.param]


@pytest.fixture
def postgres_url(server_urls: dict[str, str]) -> str:
    return server_urls["postgresql"]


@pytest.fixture
def mysql_url(server_urls: dict[str, str]) -> str:
    return server_urls["mysql"]


@pytest.fixture
def study_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


QUADRATIC = (ROOT / "examples" / "quadratic.py").read_text()
FLAKY = textwrap.dedent(
    """
    def flaky(trial, params):
        if trial.number % 3 == 0:
            raise RuntimeError("this objective fails on every third trial")
        return (params["x"] - 2.0) ** 2
    """
)


@pytest.fixture
def write_study(tmp_path: Path, study_name: str) -> Iterator[object]:
    """Write a study file (and the example objectives beside it); return its path. ``pruner``
    is the [pruner] table's body; ``extra_space`` and ``body`` are TOML appended after it."""
    (tmp_path / "quadratic.py").write_text(QUADRATIC)
    (tmp_path / "flaky.py").write_text(FLAKY)

    def write(
        body: str = "",
        *,
        name: str | None = None,
        n_trials: int = 12,
        objective: str = "quadratic.py:quadratic",
        filename: str = "study.toml",
        extra_space: str = "",
        pruner: str = 'name = "none"',
    ) -> Path:
        text = study_toml(
            name=name or study_name,
            objective=objective,
            n_trials=n_trials,
            metric="loss",
            sampler={"name": "tpe", "seed": 3},
            pruner=tomllib.loads(textwrap.dedent(pruner)),
        )
        path = tmp_path / filename
        path.write_text(text + textwrap.dedent(extra_space) + textwrap.dedent(body))
        return path

    yield write


def hpsearch_command() -> list[str]:
    """The installed ``hpsearch`` entry point, run as a user would."""
    script = Path(sys.executable).parent / "hpsearch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hpsearch"]


def get_json(url: str, timeout: float = 60.0) -> Any:
    """GET a JSON document, waiting up to ``timeout`` for a server that is still starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
