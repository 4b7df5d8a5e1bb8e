"""hpsearch's errors, in one torch-free module that every package may import.

Every expected failure is an ``HpsearchError``: its message is one line that names what failed,
the offending value, what is allowed and how to fix it; the CLI prints it and exits 2.
Code catches these by type, never by class name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HpsearchError(Exception):
    """An expected failure: the CLI prints the one-line message and exits 2."""


class SpecError(HpsearchError, ValueError):
    """A study file (or stored spec) that does not validate."""


class ObjectiveError(HpsearchError, ValueError):
    """An objective that cannot be found or configured; the message is one line with the fix."""


class StorageError(HpsearchError):
    """A storage problem the user can fix; the message is one line and never holds a password."""


class MissingSchemaError(StorageError):
    """The database is reachable but holds no Optuna tables: no study was ever created there."""


class GroupLost(BaseException):
    """A rank of a trial's group (DDP, FSDP, several nodes) is gone: not the objective's failure.
    The trial goes back to the queue uncounted (a BaseException, like a stop, so no
    ``except Exception`` keeps it)."""


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the trial decides whether that prunes or fails."""


__all__ = [
    "GroupLost",
    "HpsearchError",
    "MissingSchemaError",
    "NonFiniteLoss",
    "ObjectiveError",
    "SpecError",
    "StorageError",
    "did_you_mean",
]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest candidate, or "" when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
