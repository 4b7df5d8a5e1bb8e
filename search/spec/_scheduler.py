"""The study file's ``[scheduler]``: how long each configuration trains and what happens at its
rungs or intervals. The runtime's halves are search/runtime/_scheduler.py (``asha``) and
search/runtime/_pbt.py (``pbt``).

``asha``: asynchronous successive halving that pauses and promotes (Li et al. 2020)::

    [scheduler]
    name = "asha"
    min_epochs = 3        # the first rung (docs/scheduler.md: choosing the rungs)
    max_epochs = 27       # a promoted configuration trains this long ([training] epochs)
    reduction_factor = 3  # the top 1/3 of a rung goes on to the next

Rungs are at ``min_epochs * reduction_factor**k`` epochs, below ``max_epochs``.

``pbt``: population-based training (Jaderberg et al. 2017)::

    [scheduler]
    name = "pbt"
    population = 8               # members trained together (the study's n_trials)
    interval_epochs = 3          # each member is compared with the others every 3 epochs
    max_epochs = 27              # every member trains this long
    quantile = 0.25              # the bottom quarter copies a member of the top quarter
    explore = ["lr", "l2"]       # perturbed after a copy; default: every live searched option
    perturb_factors = [0.8, 1.2] # a float or int is multiplied by one of these
    resample_probability = 0.25  # or, with this probability, drawn anew from its [space] entry
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpsearch.errors import SpecError, did_you_mean

SCHEDULERS = ("asha", "pbt")
# Each scheduler's keys, the required ones first (up to the None).
_KEYS: dict[str, tuple[str, ...]] = {
    "asha": ("name", "min_epochs", "max_epochs", "reduction_factor"),
    "pbt": (
        "name",
        "population",
        "interval_epochs",
        "max_epochs",
        "quantile",
        "explore",
        "perturb_factors",
        "resample_probability",
    ),
}
_REQUIRED = {"asha": 4, "pbt": 4}
SCHEDULER_KEYS = tuple(dict.fromkeys(key for keys in _KEYS.values() for key in keys))
_EXAMPLES = {
    "asha": 'name = "asha", min_epochs = 3, max_epochs = 27, reduction_factor = 3',
    "pbt": 'name = "pbt", population = 8, interval_epochs = 3, max_epochs = 27',
}
PBT_DEFAULTS: dict[str, Any] = {
    "quantile": 0.25,
    "perturb_factors": [0.8, 1.2],
    "resample_probability": 0.25,
}


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


@dataclass(frozen=True)
class PbtSchedule:
    population: int
    interval_epochs: int
    max_epochs: int
    quantile: float
    explore: tuple[str, ...]
    perturb_factors: tuple[float, ...]
    resample_probability: float

    def at_interval_end(self, step: int) -> bool:
        """Whether the report at ``step`` (epoch index) ends an interval before the last epoch:
        where a member is compared with the population."""
        return (step + 1) % self.interval_epochs == 0 and step + 1 < self.max_epochs

    @staticmethod
    def from_data(data: Mapping[str, Any]) -> PbtSchedule:
        return PbtSchedule(
            population=int(data["population"]),
            interval_epochs=int(data["interval_epochs"]),
            max_epochs=int(data["max_epochs"]),
            quantile=float(data["quantile"]),
            explore=tuple(data["explore"]),
            perturb_factors=tuple(float(f) for f in data["perturb_factors"]),
            resample_probability=float(data["resample_probability"]),
        )


def schedule_of(data: Mapping[str, Any] | None) -> Schedule | PbtSchedule | None:
    """The stored ``[scheduler]`` as its runtime's schedule; None: every trial trains to the end."""
    if data is None:
        return None
    return PbtSchedule.from_data(data) if data["name"] == "pbt" else Schedule.from_data(data)


def parse_scheduler(
    table: Mapping[str, Any],
    *,
    fail: Callable[[str, str], SpecError],
    positive_int: Callable[[Mapping[str, Any], str, str, int], int],
    conflicts: Mapping[str, str],
    space: Mapping[str, Mapping[str, Any]],
    live: Sequence[str],
) -> dict[str, Any]:
    """Validate ``[scheduler]``. ``conflicts``: settings the scheduler cannot run with, by where
    they are, each with why (checked after the table's own keys); ``space``: the parsed
    ``[space]``; ``live``: the options the objective can change in a live trial (what PBT may
    explore)."""
    name = table.get("name")
    if name not in SCHEDULERS:
        hint = did_you_mean(name, SCHEDULERS) if isinstance(name, str) else ""
        raise fail(
            "scheduler",
            f"unknown scheduler {name!r}.{hint} Expected one of: {', '.join(SCHEDULERS)}.",
        )
    keys = _KEYS[name]
    for key in table:
        if key not in keys:
            raise fail(
                "scheduler",
                f"unknown key {key!r}.{did_you_mean(key, keys)} "
                f"Allowed for {name!r}: {', '.join(keys)}.",
            )
    for key in keys[1 : _REQUIRED[name]]:
        if key not in table:
            raise fail("scheduler", f"{key} is required for {name!r}; e.g. {_EXAMPLES[name]}.")
    max_epochs = positive_int(table, "max_epochs", "scheduler", 1)
    parsed = (
        _parse_pbt(table, fail, positive_int, max_epochs, space, live)
        if name == "pbt"
        else _parse_asha(table, fail, positive_int, max_epochs)
    )
    for where, why in conflicts.items():
        raise fail(where, why)
    return {"name": name, "max_epochs": max_epochs, **parsed}


def _parse_asha(
    table: Mapping[str, Any],
    fail: Callable[[str, str], SpecError],
    positive_int: Callable[[Mapping[str, Any], str, str, int], int],
    max_epochs: int,
) -> dict[str, Any]:
    min_epochs = positive_int(table, "min_epochs", "scheduler", 1)
    eta = positive_int(table, "reduction_factor", "scheduler", 2)
    if eta < 2:
        raise fail("scheduler", f"reduction_factor must be >= 2, got {eta}.")
    if max_epochs <= min_epochs:
        raise fail(
            "scheduler",
            f"max_epochs ({max_epochs}) must be larger than min_epochs ({min_epochs}): a "
            "configuration needs a rung before its last epoch.",
        )
    return {"min_epochs": min_epochs, "reduction_factor": eta}


def _parse_pbt(
    table: Mapping[str, Any],
    fail: Callable[[str, str], SpecError],
    positive_int: Callable[[Mapping[str, Any], str, str, int], int],
    max_epochs: int,
    space: Mapping[str, Mapping[str, Any]],
    live: Sequence[str],
) -> dict[str, Any]:
    population = positive_int(table, "population", "scheduler", 2)
    if population < 2:
        raise fail("scheduler", f"population must be >= 2 members, got {population}.")
    interval = positive_int(table, "interval_epochs", "scheduler", 1)
    if interval >= max_epochs:
        raise fail(
            "scheduler",
            f"interval_epochs ({interval}) must be smaller than max_epochs ({max_epochs}): "
            "members are compared at the end of each interval before the last epoch.",
        )
    quantile = _fraction(table, "quantile", fail, upper=0.5)
    resample = _fraction(table, "resample_probability", fail, upper=1.0, zero=True)
    factors = table.get("perturb_factors", PBT_DEFAULTS["perturb_factors"])
    if (
        not isinstance(factors, list)
        or not factors
        or not all(_is_number(f) and f > 0 for f in factors)
    ):
        raise fail(
            "scheduler",
            f"perturb_factors must be a non-empty list of positive numbers, e.g. [0.8, 1.2]; "
            f"got {factors!r}.",
        )
    explore = _explore(table, fail, space, live)
    return {
        "population": population,
        "interval_epochs": interval,
        "quantile": quantile,
        "explore": explore,
        "perturb_factors": [float(f) for f in factors],
        "resample_probability": resample,
    }


def _explore(
    table: Mapping[str, Any],
    fail: Callable[[str, str], SpecError],
    space: Mapping[str, Mapping[str, Any]],
    live: Sequence[str],
) -> list[str]:
    """The searched options PBT perturbs: only those a live trial can change (a width or a
    batch size would need a new model or new batches, not a resumed one)."""
    allowed = f"it can change in a live trial: {', '.join(live) or 'none'}"
    if "explore" not in table:
        explore = [name for name in space if name in live]
        if not explore:
            raise fail(
                "scheduler",
                f"pbt explores searched options {allowed}; search at least one of them in [space].",
            )
        return explore
    explore = table["explore"]
    if not isinstance(explore, list) or not explore or not all(isinstance(n, str) for n in explore):
        raise fail(
            "scheduler",
            f'explore must be a non-empty list of [space] names, e.g. ["lr"]; got {explore!r}.',
        )
    for name in explore:
        if name not in live and name not in space:
            raise fail(
                "scheduler",
                f"explore names {name!r}, which is neither searched nor an option pbt can "
                f"change; it explores only options {allowed}.{did_you_mean(name, live)}",
            )
        if name not in live:
            raise fail(
                "scheduler",
                f"explore names {name!r}, which a live trial cannot change (its weights or "
                f"batches depend on it); pbt explores only options {allowed}. Remove {name!r} "
                "from explore (it may stay in [space]: each member keeps its value).",
            )
        if name not in space:
            raise fail(
                "scheduler",
                f"explore names {name!r}, which is not searched; add [space.{name}] or remove it "
                "from explore.",
            )
    return list(dict.fromkeys(explore))


def _fraction(
    table: Mapping[str, Any],
    key: str,
    fail: Callable[[str, str], SpecError],
    *,
    upper: float,
    zero: bool = False,
) -> float:
    value = table.get(key, PBT_DEFAULTS[key])
    if not _is_number(value) or value < 0 or (value == 0 and not zero) or value > upper:
        bound = f"{'0' if zero else 'above 0'} to {upper}"
        raise fail("scheduler", f"{key} must be a number from {bound}, got {value!r}.")
    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
