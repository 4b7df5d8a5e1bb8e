"""Heartbeats and reaping: a running trial's heartbeat thread, and the reaper that fails the
trials of workers that died (no heartbeat for the grace period) so their retries are queued."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from types import TracebackType

import optuna

from hpsearch.storage import StorageError, WorkerStorage

log = logging.getLogger("hpsearch.worker")


class Heartbeat:
    """Records the trial's heartbeat every interval on a thread, so a dead worker is noticed."""

    def __init__(
        self,
        storage: WorkerStorage,
        trial_id: int,
        *,
        beat_now: bool = True,
        on_beat: Callable[[], None] = lambda: None,
    ) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._beat_now = beat_now
        self._on_beat = on_beat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        interval = self._storage.get_heartbeat_interval()
        if interval is not None:
            if self._beat_now:
                self._storage.record_heartbeat(self._trial_id)
            self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
            self._thread.start()
        return self

    def _beat(self, interval: int) -> None:
        while not self._stop.wait(interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except StorageError:
                # The database stayed away past db_timeout: the trial loop says so when it next
                # needs the database, and the trial is re-queued after its grace period.
                return
            except Exception as err:  # a missed beat is not fatal; the next one may succeed
                log.warning("heartbeat for trial id %d failed: %s", self._trial_id, err)
                continue
            try:
                self._on_beat()  # reaping others' trials: its failure never stops our beats
            except Exception as err:
                log.warning("after the heartbeat of trial id %d: %s", self._trial_id, err)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class Reaper:
    """Fails the study's trials whose worker died (no heartbeat for the grace period), at most
    once an interval; their retries go back to the queue. The worker loop calls it between
    trials and the heartbeat thread during one, so a dead worker's trial waits for the grace
    period plus at most one heartbeat interval, however long the running trials are."""

    def __init__(self, study: optuna.Study, every: float) -> None:
        self._study, self._every = study, every
        self._last = -math.inf
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if time.monotonic() - self._last < self._every:
                return
            self._last = time.monotonic()
            optuna.storages.fail_stale_trials(self._study)
