"""Constraints on what an objective measures: ``[constraints] size_bytes = { max = 1_000_000 }``.

Each bound becomes an Optuna constraint on the trial (``trial.set_constraint``; a value <= 0 is
feasible) once the objective has returned. Optuna 5 reads those values itself: the TPE and GP
samplers model feasibility from ``FrozenTrial.constraints`` (``constraints_func`` is deprecated),
and ``Study.best_trial`` / ``best_trials`` choose among feasible trials only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import optuna

from hpsearch.errors import SpecError, did_you_mean

BOUNDS = ("max", "min")


def parse_constraints(
    table: Mapping[str, Any],
    *,
    allowed: Collection[str] | None,
    fail: Callable[[str, str], SpecError],
) -> dict[str, dict[str, float]]:
    """Validate the ``[constraints]`` table; ``allowed``: the names the objective measures
    (None for a user objective, whose names are checked when a trial returns)."""
    constraints: dict[str, dict[str, float]] = {}
    for name, bounds in table.items():
        where = f"constraints.{name}"
        if allowed is not None and name not in allowed:
            hint = did_you_mean(name, allowed)
            raise fail(
                "constraints",
                f"{name!r} is not a measurement of this objective.{hint} "
                f"Allowed: {', '.join(allowed)}.",
            )
        if not isinstance(bounds, dict) or not bounds:
            raise fail(where, f"give a bound, e.g. {name} = {{ max = 1_000_000 }}.")
        parsed: dict[str, float] = {}
        for key, value in bounds.items():
            if key not in BOUNDS:
                raise fail(
                    where, f"unknown bound {key!r}.{did_you_mean(key, BOUNDS)} Allowed: max, min."
                )
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise fail(where, f"{key} must be a number, got {value!r}.")
            parsed[key] = value
        if "min" in parsed and "max" in parsed and parsed["min"] > parsed["max"]:
            raise fail(where, f"min {parsed['min']} is above max {parsed['max']}; no value fits.")
        constraints[name] = parsed
    return constraints


def measurements(result: Any, metrics: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    """Everything a trial measured: the objective's mapping if it returned one, and its values
    by the study's metric names."""
    measured: dict[str, float] = {}
    if isinstance(result, Mapping):
        measured.update({str(key): value for key, value in result.items()})
    measured.update(zip(metrics, values, strict=True))
    return measured


def violations(
    constraints: Mapping[str, Mapping[str, float]], measured: Mapping[str, float]
) -> dict[str, float]:
    """One Optuna constraint value per bound (``name_max``, ``name_min``): <= 0 when it holds."""
    values: dict[str, float] = {}
    for name, bounds in constraints.items():
        if name not in measured:
            raise ValueError(
                f"[constraints] names {name!r}, but the objective returned only "
                f"{', '.join(sorted(measured))}; return it in a mapping, or constrain one of those"
            )
        value = float(measured[name])
        if "max" in bounds:
            values[f"{name}_max"] = value - bounds["max"]
        if "min" in bounds:
            values[f"{name}_min"] = bounds["min"] - value
    return values


def apply_constraints(
    trial: optuna.Trial,
    constraints: Mapping[str, Mapping[str, float]],
    measured: Mapping[str, float],
) -> None:
    for key, value in violations(constraints, measured).items():
        trial.set_constraint(key, value)


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(value <= 0.0 for value in trial.constraints.values())
