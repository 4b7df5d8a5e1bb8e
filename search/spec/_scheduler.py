"""The study file's ``[scheduler]``: how long each configuration trains and what happens at its
rungs. One scheduler today, ``asha`` (asynchronous successive halving that pauses and promotes,
Li et al. 2020); the runtime's half is search/runtime/_scheduler.py.

    [scheduler]
    name = "asha"
    min_epochs = 1        # the first rung
    max_epochs = 27       # a promoted configuration trains this long ([training] epochs)
    reduction_factor = 3  # the top 1/3 of a rung goes on to the next

Rungs are at ``min_epochs * reduction_factor**k`` epochs, below ``max_epochs``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hpsearch.errors import SpecError, did_you_mean

SCHEDULERS = ("asha",)
SCHEDULER_KEYS = ("name", "min_epochs", "max_epochs", "reduction_factor")


@dataclass(frozen=True)
class Schedule:
    min_epochs: int
    max_epochs: int
    reduction_factor: int

    @property
    def rungs(self) -> list[int]:
        """The epochs (counted from 1) at which a configuration is paused or promoted."""
        rungs, epochs = [], self.min_epochs
        while epochs < self.max_epochs:
            rungs.append(epochs)
            epochs *= self.reduction_factor
        return rungs

    def rung_at(self, step: int) -> int | None:
        """The rung (0, 1, ...) whose epoch ends with the report at ``step`` (epoch index)."""
        rungs = self.rungs
        return rungs.index(step + 1) if step + 1 in rungs else None

    @staticmethod
    def from_data(data: Mapping[str, Any]) -> Schedule:
        return Schedule(
            int(data["min_epochs"]), int(data["max_epochs"]), int(data["reduction_factor"])
        )


def parse_scheduler(
    table: Mapping[str, Any],
    *,
    fail: Callable[[str, str], SpecError],
    positive_int: Callable[[Mapping[str, Any], str, str, int], int],
    conflicts: Mapping[str, str],
) -> dict[str, Any]:
    """Validate ``[scheduler]``; ``conflicts``: settings the scheduler cannot run with, by where
    they are, each with why (checked after the table's own keys)."""
    for key in table:
        if key not in SCHEDULER_KEYS:
            raise fail(
                "scheduler",
                f"unknown key {key!r}.{did_you_mean(key, SCHEDULER_KEYS)} "
                f"Allowed: {', '.join(SCHEDULER_KEYS)}.",
            )
    name = table.get("name")
    if name not in SCHEDULERS:
        hint = did_you_mean(name, SCHEDULERS) if isinstance(name, str) else ""
        raise fail(
            "scheduler",
            f"unknown scheduler {name!r}.{hint} Expected one of: {', '.join(SCHEDULERS)}.",
        )
    for key in SCHEDULER_KEYS[1:]:
        if key not in table:
            raise fail("scheduler", f"{key} is required for {name!r}; e.g. {_EXAMPLE}.")
    min_epochs = positive_int(table, "min_epochs", "scheduler", 1)
    max_epochs = positive_int(table, "max_epochs", "scheduler", 1)
    eta = positive_int(table, "reduction_factor", "scheduler", 2)
    if eta < 2:
        raise fail("scheduler", f"reduction_factor must be >= 2, got {eta}.")
    if max_epochs <= min_epochs:
        raise fail(
            "scheduler",
            f"max_epochs ({max_epochs}) must be larger than min_epochs ({min_epochs}): a "
            "configuration needs a rung before its last epoch.",
        )
    for where, why in conflicts.items():
        raise fail(where, why)
    return {
        "name": name,
        "min_epochs": min_epochs,
        "max_epochs": max_epochs,
        "reduction_factor": eta,
    }


_EXAMPLE = 'name = "asha", min_epochs = 1, max_epochs = 27, reduction_factor = 3'
