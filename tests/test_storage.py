"""Storage URLs, engines and error messages, on every backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy

from hpsearch.search.cli import main
from hpsearch.storage import (
    DEFAULT_STORAGE_URL,
    StorageError,
    open_storage,
    redact_url,
    resolve_storage_url,
)
from tests.conftest import SERVER_URLS

ROOT = Path(__file__).resolve().parent.parent


def test_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    assert resolve_storage_url(None) == DEFAULT_STORAGE_URL == "sqlite:///hpsearch.db"
    monkeypatch.setenv("HPSEARCH_STORAGE", "sqlite:///env.db")
    assert resolve_storage_url(None) == "sqlite:///env.db"
    assert resolve_storage_url("sqlite:///flag.db") == "sqlite:///flag.db"


def test_redaction() -> None:
    assert (
        redact_url("postgresql+psycopg://u:s3cret@db:5432/hpo")
        == "postgresql+psycopg://u:***@db:5432/hpo"
    )
    assert "s3cret" not in redact_url("mysql+pymysql://root:s3cret@h/x")
    assert redact_url("sqlite:///a.db") == "sqlite:///a.db"
    # A password as a query parameter, in any case, and a URL SQLAlchemy cannot parse.
    assert (
        redact_url("postgresql+psycopg://u@127.0.0.1:1/db?password=s3cret&sslmode=require")
        == "postgresql+psycopg://u@127.0.0.1:1/db?password=***&sslmode=require"
    )
    for key in ("password", "PASSWORD", "passwd", "pwd", "sslpassword", "token", "secret_key"):
        assert "s3cret" not in redact_url(f"mysql+pymysql://root@h/x?{key}=s3cret")
    assert redact_url("postgresql+psycopg//u:s3cret@host/db") == "postgresql+psycopg//u:***@host/db"
    assert redact_url("u:s3cret@host") == "u:***@host"


def test_engine_settings_per_dialect(storage_url: str) -> None:
    storage = open_storage(storage_url, create_tables=True)
    engine = storage.engine
    if engine.dialect.name == "sqlite":
        assert isinstance(
            engine.pool,
            sqlalchemy.pool.QueuePool
            | sqlalchemy.pool.NullPool
            | sqlalchemy.pool.SingletonThreadPool
            | sqlalchemy.pool.StaticPool,
        )
    else:
        # A worker holds at most two connections: the trial loop's and the heartbeat's.
        assert engine.pool.size() == 1
        assert engine.pool._max_overflow == 1
        # No ping round trip per transaction: a connection the server dropped fails its first
        # statement, and the outage retry reconnects (tests/test_outage.py restarts servers).
        assert not engine.pool._pre_ping
    assert storage.get_heartbeat_interval() == 10


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (
            "postgresql+psycopg://hp:s3cret@127.0.0.1:1/hpo",
            ["Cannot reach the database", "hp:***@127.0.0.1:1"],
        ),
        (
            "mysql+pymysql://root:s3cret@127.0.0.1:3306/test",
            ["refused the credentials", "root:***@"],
        ),
        ("postgresql+nodriver://hp:s3cret@127.0.0.1/hpo", ["Unknown or missing database driver"]),
        ("mssql+pyodbc://hp:s3cret@127.0.0.1/hpo", ["Unknown or missing database driver"]),
        ("postgresql+psycopg://postgres:s3cret@127.0.0.1:5432/no_such_db", ["does not exist"]),
        ("not a url at all", ["Malformed storage URL"]),
        (
            "postgresql+psycopg://hp@127.0.0.1:1/hpo?password=s3cret",
            ["Cannot reach the database", "hp@127.0.0.1:1/hpo?password=***"],
        ),
        (
            "postgresql+psycopg://postgres@127.0.0.1:5432/postgres?PassWord=s3cret",
            ["PassWord=***"],
        ),
        (
            "mysql+pymysql://root@127.0.0.1:3306/test?password=s3cret",
            ["refused the credentials", "root@127.0.0.1:3306/test?password=***"],
        ),
        ("postgresql+psycopg//hp:s3cret@127.0.0.1/hpo", ["Malformed storage URL", "hp:***@"]),
        ("hp:s3cret@127.0.0.1", ["Malformed storage URL", "hp:***@"]),
    ],
)
def test_storage_errors_are_one_line_and_redacted(
    capsys: pytest.CaptureFixture[str], url: str, words: list[str]
) -> None:
    code = main(["studies", "--storage", url])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "s3cret" not in err + out
    for word in words:
        assert word in err, err


def test_storage_error_type() -> None:
    with pytest.raises(StorageError):
        open_storage("postgresql+psycopg://hp:pw@127.0.0.1:1/hpo")


def test_a_missing_dependency_is_named_as_an_install_problem() -> None:
    from hpsearch.storage._rdb import describe_driver_error

    err = ModuleNotFoundError("No module named 'optuna_dashboard'", name="optuna_dashboard")
    message = describe_driver_error("postgresql+psycopg://hp:s3cret@127.0.0.1/hpo", err)
    assert "'optuna_dashboard', which hpsearch needs, is missing" in message
    assert "pip install" in message and "s3cret" not in message and "\n" not in message


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_a_user_without_the_privilege_to_make_tables_is_told_so_in_one_line(
    capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    """Not "cannot reach the database": the server answered, and refused the statement."""
    admin = sqlalchemy.create_engine(SERVER_URLS[backend], isolation_level="AUTOCOMMIT")
    name, user, secret = "hpsearch_unprivileged", "hpsearch_reader", "s3cret"
    statements = {
        "postgresql": [
            f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
            f"DROP ROLE IF EXISTS {user}",
            f"CREATE DATABASE {name}",
            f"CREATE ROLE {user} LOGIN PASSWORD '{secret}'",  # no CREATE on schema public
        ],
        "mysql": [
            f"DROP DATABASE IF EXISTS {name}",
            f"DROP USER IF EXISTS '{user}'@'%%'",
            f"CREATE DATABASE {name}",
            f"CREATE USER '{user}'@'%%' IDENTIFIED BY '{secret}'",
            f"GRANT SELECT ON {name}.* TO '{user}'@'%%'",
        ],
    }[backend]
    with admin.connect() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
    url = sqlalchemy.make_url(SERVER_URLS[backend]).set(
        database=name, username=user, password=secret
    )
    try:
        code = main(
            [
                "create",
                str(ROOT / "studies" / "digits.toml"),
                "--storage",
                url.render_as_string(hide_password=False),
            ]
        )
        out, err = capsys.readouterr()
        assert code == 2
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "lacks a privilege" in err and f"{user}:***@" in err, err
        assert secret not in err + out
    finally:
        with admin.connect() as connection:
            for statement in statements[:2]:
                connection.exec_driver_sql(statement)
        admin.dispose()


def test_a_read_only_sqlite_file_is_named_as_such_not_as_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file answered and refused the write: "cannot reach the database" would send the
    user looking at a server that is fine."""
    study = str(ROOT / "studies" / "digits.toml")
    database = tmp_path / "hpsearch.db"
    assert main(["create", study, "--storage", f"sqlite:///{database}"]) == 0
    capsys.readouterr()
    # SQLite's own URI option opens the file read-only.
    read_only = f"sqlite:///file:{database}?mode=ro&uri=true"
    code = main(["create", str(ROOT / "studies" / "curves.toml"), "--storage", read_only])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "is read-only" in err and "Cannot reach" not in err, err


def test_a_user_out_of_connections_is_told_so_not_that_the_server_is_unreachable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """PostgreSQL answers "too many connections" (here a role limited to none): the fix is
    the limit, or hpsearch proxy's pooled connections, not the server's address."""
    admin = sqlalchemy.create_engine(SERVER_URLS["postgresql"], isolation_level="AUTOCOMMIT")
    user, secret = "hpsearch_no_connections", "s3cret"
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP ROLE IF EXISTS {user}")
        connection.exec_driver_sql(
            f"CREATE ROLE {user} LOGIN PASSWORD '{secret}' CONNECTION LIMIT 0"
        )
    url = sqlalchemy.make_url(SERVER_URLS["postgresql"]).set(username=user, password=secret)
    try:
        code = main(["studies", "--storage", url.render_as_string(hide_password=False)])
        out, err = capsys.readouterr()
        assert code == 2
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "no connection left" in err and "hpsearch proxy" in err, err
        assert secret not in err + out
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP ROLE IF EXISTS {user}")
        admin.dispose()
