"""``hpsearch proxy``: Optuna's gRPC storage proxy in front of the database, and its stale-trial reaper.

Workers behind the proxy cannot read the heartbeat table, so the proxy process fails their dead
trials itself (each study with its own grace period and retry count) and the retry callback puts
them back in the queue, as a directly connected worker would; it also queues the retries that a
process killed between a trial's failure and its retry took with it.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable

import optuna

from hpsearch.search._study import SPEC_ATTR, settings_from
from hpsearch.search.runtime._budget import reap_stale_trials
from hpsearch.search.spec._study_file import StudySpec
from hpsearch.storage import (
    StorageSettings,
    open_storage,
    start_proxy_server,
    translate_errors,
)

log = logging.getLogger("hpsearch.proxy")

DEFAULT_REAP_INTERVAL = 10.0
STOP_GRACE = 5.0  # seconds the calls in flight get to finish once the proxy is told to stop


class StaleTrialReaper:
    """Fails the RUNNING trials whose heartbeat stopped, in every hpsearch study of a database."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._storages: dict[StorageSettings, optuna.storages.RDBStorage] = {}
        self.interval = DEFAULT_REAP_INTERVAL

    def _storage(self, settings: StorageSettings) -> optuna.storages.RDBStorage:
        if settings not in self._storages:
            self._storages[settings] = open_storage(self._url, settings=settings)
        return self._storages[settings]

    def reap(self, stop: threading.Event | None = None) -> None:
        """One pass over every study (until ``stop`` is set); the next pass follows the
        shortest heartbeat interval among them."""
        with translate_errors(self._url), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            plain = self._storage(StorageSettings())
            intervals = [DEFAULT_REAP_INTERVAL]
            for frozen in plain.get_all_studies():
                if stop is not None and stop.is_set():
                    return
                data = frozen.user_attrs.get(SPEC_ATTR)
                if data is None:
                    continue  # not an hpsearch study: its owner decides about stale trials
                settings = settings_from(StudySpec(data))
                intervals.append(settings.heartbeat_interval)
                storage = self._storage(settings)
                study = optuna.load_study(study_name=frozen.study_name, storage=storage)
                reap_stale_trials(study, storage)
            self.interval = float(min(intervals))

    def close(self) -> None:
        for storage in self._storages.values():
            storage.engine.dispose()


def serve_proxy(
    url: str,
    *,
    host: str,
    port: int,
    threads: int,
    stop: threading.Event,
    on_serving: Callable[[], None] | None = None,
) -> None:
    """Serve until ``stop`` is set; reap stale trials between waits. ``on_serving`` runs once
    the database has answered and the server listens.

    A stop signal only sets ``stop`` (search/_deploy_cli.py). Raising out of whatever the
    process was doing at that moment, a reaper's database call say, could leave a lock held
    and the exit hung.
    """
    server = start_proxy_server(url, host=host, port=port, threads=threads)
    reaper = StaleTrialReaper(url)
    if on_serving is not None:
        on_serving()
    try:
        while not stop.is_set():
            try:
                reaper.reap(stop)
            except Exception as err:  # a database blip must not take the proxy down
                log.warning("stale-trial check failed: %s", err)
            stop.wait(reaper.interval)
    finally:
        # New calls are refused at once; calls in flight get STOP_GRACE seconds, then are
        # cancelled.
        server.stop(grace=STOP_GRACE).wait(STOP_GRACE + 5)
        reaper.close()
