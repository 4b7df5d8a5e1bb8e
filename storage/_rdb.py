"""RDBStorage construction with per-dialect engine settings, and driver errors made readable."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from storage._errors import StorageError
from storage._url import dialect_of, redact_url

SUPPORTED = "sqlite:///FILE, postgresql+psycopg://USER:PW@HOST/DB, mysql+pymysql://USER:PW@HOST/DB"


@dataclass(frozen=True)
class StorageSettings:
    """How a process talks to the database.

    Heartbeats let a dead worker's RUNNING trial be failed and re-queued after ``grace_period``.
    """

    heartbeat_interval: int = 10
    grace_period: int = 60
    max_retry: int = 3
    connect_timeout: int = 10


def _engine_kwargs(url: str, settings: StorageSettings) -> dict[str, Any]:
    dialect = dialect_of(url)
    if dialect == "sqlite":
        # Several processes share one file: wait on its lock rather than fail at once.
        return {"connect_args": {"timeout": 60}}
    common: dict[str, Any] = {
        # One connection for the trial loop and one for the heartbeat thread.
        "pool_size": 1,
        "max_overflow": 1,
        "pool_pre_ping": True,
        "pool_recycle": 1800,
    }
    if dialect in ("postgresql", "mysql", "mariadb"):
        common["connect_args"] = {"connect_timeout": settings.connect_timeout}
    return common


def _check_sqlite_path(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        parent = os.path.dirname(os.path.abspath(database))
        if not os.path.isdir(parent):
            raise StorageError(
                f"Cannot open SQLite storage {url!r}: directory {parent!r} does not exist; "
                "create it or pass another --storage."
            )


def open_storage(
    url: str,
    *,
    settings: StorageSettings | None = None,
    create_tables: bool = False,
) -> optuna.storages.RDBStorage:
    """An RDBStorage with heartbeats and stale-trial retry.

    Only ``hpsearch create`` passes ``create_tables=True``: many workers creating the schema at
    once race each other, so workers only load.
    """
    settings = settings or StorageSettings()
    if dialect_of(url) == "sqlite":
        _check_sqlite_path(url)
    with translate_errors(url):
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=_engine_kwargs(url, settings),
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=settings.max_retry
            ),
            skip_table_creation=not create_tables,
        )


def create_schema(
    url: str, *, settings: StorageSettings | None = None
) -> optuna.storages.RDBStorage:
    """Create Optuna's tables (once, at study creation) and tune the database for many writers."""
    storage = open_storage(url, settings=settings, create_tables=True)
    if dialect_of(url) == "sqlite":
        # WAL lets workers read the study while another one writes; the mode persists in the file.
        with translate_errors(url), storage.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


_MISSING_SCHEMA = ("no such table", "doesn't exist", "does not exist", "undefinedtable")


def describe_driver_error(url: str, err: BaseException) -> str:
    """One line for a driver error: what failed, where (password redacted) and what to try."""
    where = redact_url(url)
    text = str(getattr(err, "orig", None) or err)
    password = make_url(url).password if "://" in url else None
    if password:
        text = text.replace(str(password), "***")
    lowered = text.lower()
    first_line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    if isinstance(err, (sqlalchemy.exc.NoSuchModuleError, ModuleNotFoundError, ImportError)):
        return f"Unknown or missing database driver in storage URL {where}; supported: {SUPPORTED}."
    if "password authentication failed" in lowered or "access denied" in lowered:
        return (
            f"The database refused the credentials in {where} ({first_line}); "
            "check the user and password (e.g. in $HPSEARCH_STORAGE)."
        )
    if "unknown database" in lowered or ("database" in lowered and "does not exist" in lowered):
        return f"The database in {where} does not exist ({first_line}); create it first."
    if any(marker in lowered for marker in _MISSING_SCHEMA):
        return (
            f"Storage {where} holds no hpsearch/Optuna tables; "
            "create a study first with `hpsearch create STUDY.toml --storage ...`."
        )
    if isinstance(err, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        return (
            f"Cannot reach the database at {where} ({first_line}); check that the server "
            "runs and that host, port and database are right."
        )
    if isinstance(err, sqlalchemy.exc.ArgumentError):
        return f"Malformed storage URL {where} ({first_line}); expected one of: {SUPPORTED}."
    return f"Storage error at {where}: {type(err).__name__}: {first_line}"


@contextlib.contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Turn SQLAlchemy and driver errors into one StorageError with a redacted URL."""
    try:
        yield
    except StorageError:
        raise
    except (sqlalchemy.exc.SQLAlchemyError, ModuleNotFoundError) as err:
        raise StorageError(describe_driver_error(url, err)) from None
