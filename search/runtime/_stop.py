"""Graceful stop on SIGTERM/SIGINT (a preemption notice, Ctrl-C) for workers and their parent.

A worker's first signal asks the trainer to stop at its next safe point (between optimizer
steps); the trial is handed back to the queue and resumes from its last checkpoint elsewhere,
and the worker exits 0. If the objective does not reach a safe point within ``bound`` seconds
(a user objective that never checks), the main thread is interrupted. A second SIGINT (Ctrl-C)
stops the process at once; a repeated SIGTERM is the same stop.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from types import FrameType

from hpsearch.objectives import interrupt

log = logging.getLogger("hpsearch.worker")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A terminal's Ctrl-C reaches the worker and, forwarded, again through its parent: one stop.
_SAME_STOP_WINDOW = 1.0


def _interrupt_objective(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt("the objective did not reach a safe point in time")


def install_worker_handlers(*, bound: float) -> None:
    first_at: list[float] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        now = time.monotonic()
        if first_at:
            # A scheduler may signal the worker and its parent alike (Slurm's --signal, a
            # process group), and the parent passes its own on: a repeated SIGTERM is the same
            # stop. Only a person's second Ctrl-C stops at once.
            if signum == signal.SIGTERM or now - first_at[0] < _SAME_STOP_WINDOW:
                return
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)  # a second Ctrl-C: stop at once
            return
        first_at.append(now)
        interrupt.STOP.set()
        log.warning(
            "%s: handing the running trial back and stopping (Ctrl-C again to stop at once)",
            signal.Signals(signum).name,
        )
        # A real signal, not _thread.interrupt_main(): that one waits for the main thread to run
        # Python code, and an objective blocked in a C call (time.sleep, a long kernel) never
        # would. The alarm interrupts the call and raises in it; the trial is handed back.
        signal.signal(signal.SIGALRM, _interrupt_objective)
        signal.setitimer(signal.ITIMER_REAL, bound)

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


def install_parent_handlers(processes: list[multiprocessing.process.BaseProcess]) -> None:
    """The `hpsearch run`/`worker` process passes each stop signal on to its workers."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # it ended in between
                    os.kill(process.pid, signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
