"""Optuna's gRPC storage proxy: one server process holds the database connections for many workers.

Workers that talk to the proxy hold no database connection at all. Optuna's proxy protocol has
no heartbeat call, so the client sends a trial's heartbeat as a reserved trial system attribute
and the server records it as a real heartbeat row instead of storing the attribute. Stale trials
are therefore found by the usual RDB query, in the proxy process (see ``hpsearch.search.runtime._proxy``) or by any
directly connected worker. The WAITING -> RUNNING claim runs on the server inside the database's
own ``SELECT ... FOR UPDATE``, so it stays atomic through the proxy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeAlias

import optuna
from optuna.storages import GrpcStorageProxy
from optuna.trial import FrozenTrial

from hpsearch import attrs
from hpsearch.errors import StorageError
from hpsearch.storage._optuna_internals import make_grpc_server, study_id_of, trial_id_of
from hpsearch.storage._rdb import (
    StorageSettings,
    _check_sqlite_path,
    _engine_kwargs,
    _serialize_sqlite_transactions,
    apply_settings,
    open_storage,
    retry_callback,
    translate_errors,
)
from hpsearch.storage._resilient import ResilientRDBStorage, retry_template
from hpsearch.storage._url import dialect_of, is_proxy_url, proxy_address, redact_url

if TYPE_CHECKING:
    import grpc

# Never stored: the proxy turns a write of this attribute into ``record_heartbeat``.
HEARTBEAT_ATTR = attrs.HEARTBEAT
REQUEUE_ATTR = attrs.REQUEUE
DEFAULT_PROXY_THREADS = 16


class ProxyStorage(GrpcStorageProxy):
    """A worker's storage behind ``hpsearch proxy``, with heartbeats relayed to the database.

    It offers the heartbeat methods a worker uses on an RDBStorage. ``_get_stale_trial_ids`` is
    empty: the heartbeat table is only readable on the server side, where the proxy reaps.
    """

    def __init__(self, url: str, *, settings: StorageSettings | None = None) -> None:
        host, port = proxy_address(url)
        self._settings = settings or StorageSettings()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(host=host, port=port)
        try:
            self.wait_server_ready(timeout=self._settings.connect_timeout)
        except ConnectionError:
            self.close()
            raise StorageError(
                f"Cannot reach the hpsearch proxy at {redact_url(url)} within "
                f"{self._settings.connect_timeout}s; check that `hpsearch proxy --storage DB_URL "
                f"--host HOST --port {port}` runs there and that the port is open."
            ) from None

    def apply_settings(self, settings: StorageSettings) -> None:
        self._settings = settings

    def get_heartbeat_interval(self) -> int:
        return self._settings.heartbeat_interval

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, None)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return []

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None]:
        """Used when a worker is interrupted: its trial is re-queued at once, by the proxy, at
        most once (as a directly connected worker's is): a late call of a worker that froze
        between its trial's end and this call, after the proxy repaired the retry, adds none."""

        def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
            request = [study_id_of(study), self._settings.max_retry]
            self.set_trial_system_attr(trial_id_of(trial), REQUEUE_ATTR, request)

        return requeue

    def retry_of(self, trial: FrozenTrial) -> FrozenTrial | None:
        """The retry the study's settings make of the failed ``trial``; None with none left."""
        return retry_template(retry_callback(self._settings), trial)


class _HeartbeatRelayStorage(ResilientRDBStorage):
    """The proxy's database side: a heartbeat attribute from a client becomes a heartbeat row."""

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if key == HEARTBEAT_ATTR:
            self.record_heartbeat(trial_id)
            return
        if key == REQUEUE_ATTR:
            # The client's settings (its study's max_retry) make the retry, not the proxy's.
            study_id, max_retry = value
            trial = self.get_trial(trial_id)
            retry = retry_template(retry_callback(StorageSettings(max_retry=max_retry)), trial)
            if retry is not None:
                self.requeue_once(study_id, trial, retry)
            return
        super().set_trial_system_attr(trial_id, key, value)


def open_proxy_backend(
    url: str, *, threads: int, settings: StorageSettings | None = None
) -> optuna.storages.RDBStorage:
    """The database storage behind the proxy: one pooled connection per serving thread."""
    if dialect_of(url) == "sqlite":
        _check_sqlite_path(url, must_exist=True)
    settings = settings or StorageSettings()
    engine_kwargs = _engine_kwargs(url, settings)
    if dialect_of(url) != "sqlite":
        engine_kwargs.update(pool_size=threads, max_overflow=2)
    with translate_errors(url, connecting=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        backend = _HeartbeatRelayStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
            heartbeat_stale_trial_callback=retry_callback(settings),
            skip_table_creation=True,
        )
    backend.outage_timeout = settings.outage_timeout
    if dialect_of(url) == "sqlite":
        _serialize_sqlite_transactions(backend.engine)
    return backend


def start_proxy_server(
    url: str, *, host: str, port: int, threads: int = DEFAULT_PROXY_THREADS
) -> grpc.Server:
    """Start Optuna's gRPC storage proxy for the database at ``url``; return the running server."""
    backend = open_proxy_backend(url, threads=threads)
    # Optuna's documentation asks for the cached storage here: finished trials are then read
    # from the database once, not on every client's poll.
    cached = optuna.storages.get_storage(backend)
    try:
        server = make_grpc_server(cached, host, port, ThreadPoolExecutor(max_workers=threads))
        server.start()
    except RuntimeError as err:
        raise StorageError(
            f"Cannot serve the proxy for {redact_url(url)} on {host}:{port} ({err}); "
            "the port may be in use: pick another with --port."
        ) from None
    return server


# What a worker talks to: the database itself, or the proxy in front of it.
WorkerStorage: TypeAlias = optuna.storages.RDBStorage | ProxyStorage


def open_worker_storage(
    url: str, *, settings: StorageSettings | None = None, schema_checked: bool = False
) -> WorkerStorage:
    """``grpc://HOST:PORT`` reaches an ``hpsearch proxy``; any other URL the database directly
    (``schema_checked``: as ``open_storage``)."""
    if is_proxy_url(url):
        return ProxyStorage(url, settings=settings)
    return open_storage(url, settings=settings, schema_checked=schema_checked)


def apply_worker_settings(storage: WorkerStorage, settings: StorageSettings) -> None:
    """A study's own heartbeat and retry settings on a storage opened with the defaults."""
    if isinstance(storage, ProxyStorage):
        storage.apply_settings(settings)
    else:
        apply_settings(storage, settings)


def close_storage(storage: WorkerStorage) -> None:
    """Release the storage's database connections or gRPC channel."""
    if isinstance(storage, ProxyStorage):
        storage.close()
    else:
        storage.engine.dispose()
