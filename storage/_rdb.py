"""RDBStorage construction with per-dialect engine settings, and driver errors made readable."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from hpsearch.errors import HpsearchError, MissingSchemaError, StorageError
from hpsearch.storage._hot_path import READ_ONLY
from hpsearch.storage._resilient import ResilientRDBStorage
from hpsearch.storage._url import ENV_VAR, dialect_of, is_proxy_url, redact_text, redact_url

log = logging.getLogger("hpsearch.storage")

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
    outage_timeout: int = 300  # seconds a worker waits for the database before giving up


def _engine_kwargs(url: str, settings: StorageSettings) -> dict[str, Any]:
    dialect = dialect_of(url)
    if dialect == "sqlite":
        # Several processes share one file: wait on its lock rather than fail at once.
        return {"connect_args": {"timeout": 60}}
    common: dict[str, Any] = {
        # One connection for the trial loop and one for the heartbeat thread.
        "pool_size": 1,
        "max_overflow": 1,
        # No ping before each use of a pooled connection: a round trip per transaction, where a
        # connection the server dropped fails its first statement and the outage retry
        # (storage/_resilient.py) reconnects.
        "pool_pre_ping": False,
        "pool_recycle": 1800,
    }
    if dialect in ("postgresql", "mysql", "mariadb"):
        common["connect_args"] = {"connect_timeout": settings.connect_timeout}
    return common


def sqlite_file(url: str) -> str | None:
    """The absolute path of the SQLite file a URL opens; None for another database, one in
    memory, or a SQLite URI (``file:...?mode=...``, which says itself what to open)."""
    if dialect_of(url) != "sqlite":
        return None
    parsed = make_url(url)
    database = parsed.database
    uri = str(parsed.query.get("uri", "")).lower() in ("true", "1", "yes", "on")
    if not database or database == ":memory:" or uri or database.startswith("file:"):
        return None
    return os.path.abspath(database)


def _check_sqlite_path(url: str, *, must_exist: bool = False) -> None:
    """Refuse a SQLite file in a missing folder; with ``must_exist``, a missing file as well.

    Opening a SQLite file that is not there creates it, empty: a command that only reads
    (``status``, ``studies``, a worker, ...) must never do that, or a typo in --storage leaves a
    stray file and a misleading "no studies" behind.
    """
    path = sqlite_file(url)
    if path is None:
        return
    parent = os.path.dirname(path)
    if must_exist and not os.path.exists(path):
        shown = redact_url(url)
        raise StorageError(
            f"SQLite file {path!r} (storage {shown}) not found; only `hpsearch create` and "
            "`hpsearch run` create one: create the study first with `hpsearch create STUDY.toml "
            f"--storage {shown}`, or check --storage (or ${ENV_VAR}) for a typo."
        )
    if not os.path.isdir(parent):
        raise StorageError(
            f"Cannot open SQLite storage {redact_url(url)}: directory {parent!r} does not exist; "
            "create it or pass another --storage."
        )


def retry_callback(settings: StorageSettings) -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Re-queue a dead worker's trial; the retry keeps its reported values (its checkpoint
    resumes training)."""
    return optuna.storages.RetryHeartbeatStaleTrialCallback(
        max_retry=settings.max_retry, inherit_intermediate_values=True
    )


def apply_settings(storage: optuna.storages.RDBStorage, settings: StorageSettings) -> None:
    """Give an open storage other heartbeat, retry and outage settings (the engine's options
    stay: ``connect_timeout`` is not changed), without opening it again."""
    storage.heartbeat_interval = settings.heartbeat_interval
    storage.grace_period = settings.grace_period
    callback = retry_callback(settings)
    storage.heartbeat_stale_trial_callback = storage.failed_trial_callback = callback
    if isinstance(storage, ResilientRDBStorage):
        storage.outage_timeout = settings.outage_timeout


def open_storage(
    url: str,
    *,
    settings: StorageSettings | None = None,
    create_tables: bool = False,
    schema_checked: bool = False,
) -> optuna.storages.RDBStorage:
    """An RDBStorage with heartbeats and stale-trial retry.

    Only ``hpsearch create`` passes ``create_tables=True``: many workers creating the schema at
    once race each other, so workers only load. ``schema_checked``: the process that started
    this one has just checked the schema's version; Optuna's check (a third of a second of
    reading Alembic's scripts) is skipped.
    """
    if is_proxy_url(url):
        raise StorageError(
            f"{redact_url(url)} is an hpsearch proxy, not a database; creating studies and "
            "checking or upgrading the schema need the database URL itself "
            "(e.g. postgresql+psycopg://...)."
        )
    settings = settings or StorageSettings()
    sqlite = dialect_of(url) == "sqlite"
    if sqlite:
        # Only creating the schema may create the file; every other caller reads a study.
        _check_sqlite_path(url, must_exist=not create_tables)
    with translate_errors(url, connecting=True), warnings.catch_warnings():
        # Heartbeats are marked experimental in Optuna; hpsearch relies on them deliberately.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = ResilientRDBStorage(
            url,
            engine_kwargs=_engine_kwargs(url, settings),
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
            heartbeat_stale_trial_callback=retry_callback(settings),
            skip_table_creation=not create_tables,
            skip_compatibility_check=schema_checked,
        )
    storage.outage_timeout = settings.outage_timeout
    if sqlite:
        _serialize_sqlite_transactions(storage.engine)
    return storage


def _serialize_sqlite_transactions(engine: sqlalchemy.engine.Engine) -> None:
    """Make every SQLite transaction take the write lock when it begins.

    pysqlite starts a transaction only at the first write, so two processes can both read a
    trial as WAITING and both move it to RUNNING: Optuna's claim of a queued trial is only
    atomic under SELECT ... FOR UPDATE, which SQLite ignores. ``BEGIN IMMEDIATE`` restores the
    claim's atomicity (the pattern of SQLAlchemy's "Serializable isolation / Savepoints /
    Transactional DDL" recipe for pysqlite).
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sqlalchemy.engine.Connection) -> None:
        # A read-only transaction needs no lock: WAL gives it a snapshot, writers go on.
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed are dropped


def import_storage_modules(url: str) -> None:
    """Import what opening the storage of ``url`` imports on first use: Optuna's table models,
    Alembic's migration modules (Optuna checks the schema's version with them) and the
    dialect's driver.

    A worker that waits for its parent's go (``search.runtime._launch.Gate``) does it
    meanwhile. What fails here (a driver not installed, a malformed URL) fails again, and is
    reported in one line, where the storage is opened.
    """
    if is_proxy_url(url):
        return
    with contextlib.suppress(Exception):
        for module in ("optuna.storages._rdb.models", "alembic.migration", "alembic.script"):
            importlib.import_module(module)
        make_url(url).get_dialect().import_dbapi()


def create_schema(
    url: str, *, settings: StorageSettings | None = None
) -> optuna.storages.RDBStorage:
    """Create Optuna's tables (once, at study creation) and tune the database for many writers."""
    storage = open_storage(url, settings=settings, create_tables=True)
    dialect = dialect_of(url)
    if dialect == "sqlite":
        # WAL lets workers read the study while another one writes; the mode persists in the file.
        # It must run outside a transaction, so on the raw (autocommit) driver connection.
        with translate_errors(url):
            raw = storage.engine.raw_connection()
            try:
                raw.cursor().execute("PRAGMA journal_mode=WAL")
            finally:
                raw.close()
    elif dialect == "mysql":
        _keep_fractional_seconds(storage.engine, url)
    return storage


# Optuna's schema declares trial times as DATETIME, which MySQL and MariaDB store to the whole
# second: a trial's device-seconds (compute budgets, reports) would lose up to a second each,
# and a trial's times would not read back as written. DATETIME(6) keeps microseconds; the
# column stays a DATETIME to Optuna and its migrations. Rebuilt only once: altering the type
# copies the table.
_TRIAL_TIMES = ("datetime_start", "datetime_complete")
_ALTER_DENIED = 1142  # MySQL's and MariaDB's ER_TABLEACCESS_DENIED_ERROR


def _keep_fractional_seconds(engine: sqlalchemy.engine.Engine, url: str) -> None:
    with translate_errors(url):
        with engine.connect() as connection:
            coarse = connection.execute(
                sqlalchemy.text(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                    "DATABASE() AND table_name = 'trials' AND column_name IN :names "
                    "AND COALESCE(datetime_precision, 0) < 6"
                ).bindparams(sqlalchemy.bindparam("names", expanding=True)),
                {"names": list(_TRIAL_TIMES)},
            ).scalars()
            changes = [f"MODIFY {name} DATETIME(6) NULL" for name in sorted(set(coarse))]
        if not changes:
            return
        try:
            with engine.begin() as connection:  # DDL: MySQL commits it by itself
                connection.exec_driver_sql(f"ALTER TABLE trials {', '.join(changes)}")
        except sqlalchemy.exc.DBAPIError as err:
            if getattr(err.orig, "args", ())[:1] != (_ALTER_DENIED,):
                raise
            # A user without ALTER on a schema an administrator made still creates studies.
            log.warning(
                "trial times on %s stay whole seconds (Optuna's DATETIME): this database user "
                "may not ALTER the trials table; an administrator can run: ALTER TABLE trials %s",
                redact_url(url),
                ", ".join(changes),
            )


# SQLite, MySQL and PostgreSQL words for "the table is not there".
_MISSING_SCHEMA = ("no such table", "doesn't exist", "undefinedtable", 'relation "')


def _is_missing_schema(err: BaseException) -> bool:
    text = str(err).lower()
    return not isinstance(err, ImportError) and any(m in text for m in _MISSING_SCHEMA)


# Modules of hpsearch's own dependencies: missing, they are an install problem, not a URL's.
_OWN_DEPENDENCIES = frozenset(
    {"optuna", "optuna_dashboard", "alembic", "mako", "sqlalchemy", "colorlog", "tomli_w", "yaml"}
)


def describe_driver_error(url: str, err: BaseException) -> str:
    """One line for a driver error: what failed, where (password redacted) and what to try."""
    where = redact_url(url)
    # A driver may quote the URL, the password or a query parameter back: redact them all.
    text = redact_text(str(getattr(err, "orig", None) or err), url)
    lowered = text.lower()
    first_line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    if isinstance(err, sqlalchemy.exc.NoSuchModuleError):
        return f"Unknown or missing database driver in storage URL {where}; supported: {SUPPORTED}."
    missing = getattr(err, "name", None) or ""
    if isinstance(err, ImportError) and missing.split(".")[0] in _OWN_DEPENDENCIES:
        return (
            f"Python module {missing!r}, which hpsearch needs, is missing ({first_line}); "
            "reinstall hpsearch with its dependencies (pip install -e .)."
        )
    if isinstance(err, ImportError):  # the driver, or something Optuna's storage needs, is broken
        return (
            f"Unknown or missing database driver in storage URL {where} ({first_line}); "
            f"supported: {SUPPORTED}."
        )
    if "password authentication failed" in lowered or "access denied" in lowered:
        return (
            f"The database refused the credentials in {where} ({first_line}); "
            "check the user and password (e.g. in $HPSEARCH_STORAGE)."
        )
    if "command denied" in lowered or "permission denied" in lowered:
        return (
            f"The database user in {where} lacks a privilege this needs ({first_line}); grant it "
            "(hpsearch create makes tables: CREATE, ALTER; workers read and write rows), or "
            "use a user that has it."
        )
    if "unknown database" in lowered or ("database" in lowered and "does not exist" in lowered):
        return f"The database in {where} does not exist ({first_line}); create it first."
    if _is_missing_schema(err):
        return (
            f"Storage {where} holds no hpsearch/Optuna tables; "
            "create a study first with `hpsearch create STUDY.toml --storage ...`."
        )
    if isinstance(err, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        # The server (or the SQLite file) answered, and said why it would not do the work.
        if "too many connections" in lowered or "connection slots are reserved" in lowered:
            return (
                f"The database at {where} has no connection left for this user ({first_line}); "
                "raise its connection limit, or put `hpsearch proxy` in front of it: the "
                "workers then share its pooled connections."
            )
        if "readonly database" in lowered or "read-only" in lowered:
            return (
                f"The database at {where} is read-only ({first_line}); hpsearch writes trials: "
                "give it a database (or SQLite file) it may write."
            )
        if "database is locked" in lowered:
            return (
                f"The SQLite file at {where} stayed locked by another process ({first_line}); "
                "for many workers at once use PostgreSQL or MySQL (docs/deploy.md)."
            )
        if "disk is full" in lowered or "no space left" in lowered:
            return f"The database at {where} is out of disk space ({first_line}); free some."
        return (
            f"Cannot reach the database at {where} ({first_line}); check that the server "
            "runs and that host, port and database are right."
        )
    if isinstance(err, sqlalchemy.exc.ArgumentError):
        return f"Malformed storage URL {where} ({first_line}); expected one of: {SUPPORTED}."
    if isinstance(err, _DRIVER_OPTION_ERRORS):
        return (
            f"The database driver refused the options of storage URL {where} "
            f"({type(err).__name__}: {first_line}); check the value of each query parameter "
            f"({', '.join(_query_keys(url)) or 'none given'}): a misspelt name or value, a "
            "file that is not there."
        )
    return f"Storage error at {where}: {type(err).__name__}: {first_line}"


# What a driver's connect raises, instead of a DBAPI error, for a query parameter it cannot use:
# pymysql ``charset=nope`` (AttributeError), ``ssl_ca=/missing`` (FileNotFoundError),
# ``read_timeout=abc`` (ValueError); sqlite3 ``timeout=abc`` (TypeError).
_DRIVER_OPTION_ERRORS = (TypeError, ValueError, AttributeError, LookupError, OSError)


def _query_keys(url: str) -> list[str]:
    try:
        return sorted(make_url(url).query)
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError):
        return []


def _root_cause(err: BaseException) -> BaseException:
    """Optuna wraps driver errors (StorageInternalError, ImportError): find the SQLAlchemy one."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.SQLAlchemyError | ModuleNotFoundError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return err


@contextlib.contextmanager
def translate_errors(url: str, *, connecting: bool = False) -> Iterator[None]:
    """Turn SQLAlchemy, driver and Optuna storage errors into one StorageError (URL redacted).

    ``connecting``: the block creates an engine and opens its first connection, where a driver
    refuses a malformed query parameter with a plain Python error (TypeError, ValueError, ...);
    elsewhere such an error is a bug and keeps its traceback.
    """
    try:
        yield
    except HpsearchError:
        raise
    except (
        sqlalchemy.exc.SQLAlchemyError,
        optuna.exceptions.StorageInternalError,
        ImportError,
    ) as err:
        cause = _root_cause(err)
        message = describe_driver_error(url, cause)
        if _is_missing_schema(cause):
            raise MissingSchemaError(message) from None
        raise StorageError(message) from None
    except _DRIVER_OPTION_ERRORS as err:
        if not connecting:
            raise
        raise StorageError(describe_driver_error(url, err)) from None
