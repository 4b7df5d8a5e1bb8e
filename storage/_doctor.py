"""``hpsearch db check``: is this database ready for N workers? One verdict per condition.

Every check reads; none writes (a missing SQLite file is not created, the schema is not stamped).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy.engine import make_url

from hpsearch.errors import StorageError
from hpsearch.storage._optuna_internals import alembic_folder
from hpsearch.storage._rdb import open_storage, translate_errors
from hpsearch.storage._url import dialect_of, is_proxy_url, proxy_address, redact_url

OK, WARN, FAIL = "OK", "WARN", "FAIL"

# Each worker process holds one connection for its trial loop and one for its heartbeat thread;
# the `hpsearch worker`/`run` parent on each node holds one more to show progress.
CONNECTIONS_PER_WORKER = 2
CONNECTIONS_PER_NODE = 1
# SQLite serialises every write on one file lock; past this many writers they queue on it.
SQLITE_MAX_WORKERS = 4
# Past this many workers `db check` recommends `hpsearch proxy`: 9 direct workers hold 2 x 9 + 1 = 19
# connections, more than the proxy's ceiling (16 serving threads + 2 overflow), and at 4 workers
# the proxy cost no throughput (bench/proxy_vs_direct.py: 1.36x direct; docs/deploy.md).
PROXY_THRESHOLD = 8
# Filesystems on which SQLite's POSIX locks are unreliable (SQLite FAQ, "Can multiple
# applications access the same database file at once?").
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.cephfs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.juicefs",
        "fuse.rclone",
    }
)


@dataclass(frozen=True)
class Check:
    name: str  # server, schema, connections, filesystem, workers, proxy
    level: str  # OK, WARN or FAIL
    message: str

    def line(self) -> str:
        return f"{self.level:<5} {self.name:<12} {self.message}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def mount_of(path: str, mounts: str) -> tuple[str, str]:
    """The (mount point, filesystem type) holding ``path``, from /proc/mounts text."""
    real = os.path.realpath(path)
    best = ("/", "unknown")
    for row in mounts.splitlines():
        fields = row.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fields[2])
    return best


def _read_mounts() -> str:
    try:
        return Path("/proc/mounts").read_text()
    except OSError:  # not Linux: nothing to say about the filesystem
        return ""


def _sqlite_path(url: str) -> str | None:
    """The absolute path of the file a SQLite URL opens, also in SQLite's URI form
    (``sqlite:///file:PATH?mode=ro&uri=true``); None for a database in memory."""
    parsed = make_url(url)
    database = parsed.database or ""
    if database.startswith("file:"):  # the URI form: file:PATH, with ?mode=... and the like
        if parsed.query.get("mode") == "memory":
            return None
        database = database.removeprefix("file:")
    return os.path.abspath(database) if database not in ("", ":memory:") else None


def _sqlite_checks(url: str, workers: int, mounts: str | None) -> list[Check]:
    database = _sqlite_path(url)
    checks: list[Check] = []
    if database is None:
        return [
            Check(
                "server",
                FAIL,
                f"{redact_url(url)} is an in-memory SQLite database: workers in other processes "
                "never see it; use sqlite:///PATH or a database server.",
            )
        ]
    if not os.path.isfile(database):
        return [
            Check(
                "server",
                FAIL,
                f"SQLite file {database!r} does not exist; create a study "
                f"first with `hpsearch create STUDY.toml --storage {redact_url(url)}`.",
            )
        ]
    checks.append(Check("server", OK, f"SQLite {sqlite3.sqlite_version} (file {database})"))
    try:
        with _connection(url) as connection:
            checks.append(_schema_check(connection, url))
    except StorageError as err:
        checks.append(Check("schema", FAIL, str(err)))
    point, fstype = mount_of(database, _read_mounts() if mounts is None else mounts)
    if fstype in NETWORK_FILESYSTEMS or fstype.startswith("nfs"):
        checks.append(
            Check(
                "filesystem",
                WARN,
                f"the SQLite file is on a network filesystem ({fstype} at {point}), where file "
                "locks are unreliable and concurrent writers can corrupt it; use PostgreSQL or "
                "MySQL for workers on several machines.",
            )
        )
    else:
        checks.append(Check("filesystem", OK, f"local filesystem ({fstype} at {point})"))
    if workers > SQLITE_MAX_WORKERS:
        checks.append(
            Check(
                "workers",
                WARN,
                f"{workers} workers on SQLite: every write waits for one file lock, so past "
                f"{SQLITE_MAX_WORKERS} workers they mostly queue; use PostgreSQL or MySQL.",
            )
        )
    else:
        checks.append(
            Check("workers", OK, f"{workers} worker(s) on SQLite (at most {SQLITE_MAX_WORKERS})")
        )
    return checks


def _server_version(connection: sqlalchemy.Connection, dialect: str) -> str:
    if dialect == "postgresql":
        return f"PostgreSQL {connection.exec_driver_sql('SHOW server_version').scalar()}"
    version = str(connection.exec_driver_sql("SELECT VERSION()").scalar())
    return f"MariaDB {version}" if "mariadb" in version.lower() else f"MySQL {version}"


def _connection_limits(connection: sqlalchemy.Connection, dialect: str) -> tuple[int, int, int]:
    """(max_connections, reserved for superusers, connections open now)."""
    if dialect == "postgresql":
        limit = int(connection.exec_driver_sql("SHOW max_connections").scalar() or 0)
        reserved = int(
            connection.exec_driver_sql("SHOW superuser_reserved_connections").scalar() or 0
        )
        in_use = int(
            connection.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            ).scalar()
            or 0
        )
        return limit, reserved, in_use
    limit = int(connection.exec_driver_sql("SELECT @@max_connections").scalar() or 0)
    row = connection.exec_driver_sql("SHOW STATUS LIKE 'Threads_connected'").first()
    in_use = int(row[1]) if row else 0
    return limit, 0, in_use


def _connections_check(
    limit: int, reserved: int, in_use: int, *, workers: int, nodes: int
) -> Check:
    needed = workers * CONNECTIONS_PER_WORKER + nodes * CONNECTIONS_PER_NODE
    usable = limit - reserved
    free = usable - in_use + 1  # this check's own connection goes away
    what = (
        f"{workers} worker(s) on {nodes} node(s) hold up to {needed} connections "
        f"({CONNECTIONS_PER_WORKER} a worker + {CONNECTIONS_PER_NODE} a node)"
    )
    server = f"max_connections {limit}, {reserved} reserved, {in_use - 1} in use by others"
    if needed > usable:
        return Check(
            "connections",
            FAIL,
            f"{what}, more than the server allows ({server}); raise max_connections or put "
            "`hpsearch proxy` in front of the database.",
        )
    if needed > free:
        return Check(
            "connections",
            WARN,
            f"{what}, more than are free now ({server}); other clients may starve the workers.",
        )
    return Check("connections", OK, f"{what}; {server}")


def _head_and_known_versions() -> tuple[str, list[str]]:
    # Optuna's migration scripts, read without touching the database.
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", alembic_folder())
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    return str(head), [r.revision for r in script.walk_revisions()]


def _schema_check(connection: sqlalchemy.Connection, url: str) -> Check:
    import optuna

    if not sqlalchemy.inspect(connection).has_table("alembic_version"):
        return Check(
            "schema",
            WARN,
            "no Optuna tables yet; `hpsearch create STUDY.toml --storage URL` creates them "
            "(workers need them).",
        )
    current = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    head, known = _head_and_known_versions()
    if current == head:
        return Check(
            "schema", OK, f"Optuna schema {current} (current for optuna {optuna.__version__})"
        )
    if current in known:
        return Check(
            "schema",
            FAIL,
            f"Optuna schema {current} is older than {head}, which optuna {optuna.__version__} "
            f"needs; back up the database, then run `hpsearch db upgrade --storage {redact_url(url)}`.",
        )
    return Check(
        "schema",
        FAIL,
        f"Optuna schema {current} is newer than optuna {optuna.__version__} knows (head {head}); "
        "upgrade optuna on this machine: `pip install -U optuna`.",
    )


def _proxy_check(workers: int) -> Check:
    if workers > PROXY_THRESHOLD:
        return Check(
            "proxy",
            WARN,
            f"{workers} workers: past {PROXY_THRESHOLD}, run `hpsearch proxy --storage URL` next to "
            "the database and give the workers --storage grpc://PROXY_HOST:PORT (one pool of "
            "connections for all of them).",
        )
    return Check(
        "proxy",
        OK,
        f"{workers} worker(s) connect directly (the proxy pays off past {PROXY_THRESHOLD})",
    )


@contextlib.contextmanager
def _connection(url: str, **engine_kwargs: Any) -> Iterator[sqlalchemy.Connection]:
    """One connection, no pool; an unknown dialect, a missing driver, a refused option or a
    failed query is a StorageError (storage/_rdb.py's translate_errors, the URL redacted)."""
    engine: sqlalchemy.Engine | None = None
    try:
        with translate_errors(url, connecting=True):
            engine = sqlalchemy.create_engine(
                url, poolclass=sqlalchemy.pool.NullPool, **engine_kwargs
            )
            connection = engine.connect()
        with translate_errors(url), connection:
            yield connection
    finally:
        if engine is not None:
            engine.dispose()


def _server_checks(url: str, workers: int, nodes: int) -> list[Check]:
    dialect = dialect_of(url)
    try:
        with _connection(url, connect_args={"connect_timeout": 10}) as connection:
            checks = [
                Check("server", OK, f"{_server_version(connection, dialect)} at {redact_url(url)}")
            ]
            checks.append(_schema_check(connection, url))
            limit, reserved, in_use = _connection_limits(connection, dialect)
            checks.append(_connections_check(limit, reserved, in_use, workers=workers, nodes=nodes))
    except StorageError as err:
        return [Check("server", FAIL, str(err))]
    checks.append(_proxy_check(workers))
    return checks


def _proxy_url_checks(url: str) -> list[Check]:
    from hpsearch.storage._proxy import ProxyStorage

    host, port = proxy_address(url)
    try:
        ProxyStorage(url).close()
    except StorageError as err:
        return [Check("server", FAIL, str(err))]
    return [
        Check(
            "server",
            OK,
            f"hpsearch proxy answers at {host}:{port}; run `hpsearch db check` with the database "
            "URL the proxy serves for the schema and connection checks.",
        )
    ]


def check_storage(
    url: str, *, workers: int = 1, nodes: int = 1, mounts: str | None = None
) -> list[Check]:
    """Every condition for ``workers`` worker processes spread over ``nodes`` machines.

    ``mounts`` replaces /proc/mounts (the SQLite filesystem check reads it).
    """
    if is_proxy_url(url):
        return _proxy_url_checks(url)
    try:
        dialect = dialect_of(url)
    except StorageError as err:
        return [Check("server", FAIL, str(err))]
    if dialect == "sqlite":
        return _sqlite_checks(url, workers, mounts)
    return _server_checks(url, workers, nodes)


def failures(checks: Iterable[Check]) -> list[Check]:
    return [c for c in checks if c.level == FAIL]


def upgrade_schema(url: str) -> tuple[str, str]:
    """Bring Optuna's schema to this optuna's head; return (version before, version after)."""
    import optuna

    if is_proxy_url(url):
        open_storage(url)  # refuses it, in one line naming the database URL it needs
    sqlite = dialect_of(url) == "sqlite"  # a malformed URL fails here, in one line
    database = _sqlite_path(url) if sqlite else None
    if database is not None and not os.path.isfile(database):
        raise StorageError(
            f"SQLite file {database!r} (storage {redact_url(url)}) does not "
            "exist; nothing to upgrade: check --storage, or create a study there first with "
            "`hpsearch create STUDY.toml`."
        )
    with translate_errors(url, connecting=True):
        storage = optuna.storages.RDBStorage(
            url, skip_compatibility_check=True, skip_table_creation=True
        )
    with translate_errors(url):
        try:
            before = storage.get_current_version()
            if before != storage.get_head_version():
                storage.upgrade()
            return before, storage.get_current_version()
        finally:
            storage.engine.dispose()
