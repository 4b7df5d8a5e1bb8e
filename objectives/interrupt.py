"""A cooperative stop: the worker sets it on SIGTERM/SIGINT, the training loop honours it.

The trainer checks between optimizer steps, so a stop never lands in the middle of a database
write or a collective; the trial is then handed back and resumes from its last checkpoint.
"""

from __future__ import annotations

import threading

STOP = threading.Event()


class TrialInterrupted(BaseException):
    """Raised at a safe point after a stop was requested. A BaseException, like
    KeyboardInterrupt: an objective's ``except Exception`` must not swallow it."""


def check() -> None:
    if STOP.is_set():
        raise TrialInterrupted("stop requested")
