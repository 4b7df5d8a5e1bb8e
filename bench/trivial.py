"""The trivial objective of the coordination benchmark: what it costs is all coordination."""

from __future__ import annotations

from typing import Any


def objective(trial: Any, params: dict[str, Any]) -> float:
    """hpsearch's form: the worker suggests ``x`` from the study file's space."""
    return float(params["x"]) ** 2


def plain_objective(trial: Any) -> float:
    """Plain Optuna's form, the same search space."""
    return float(trial.suggest_float("x", -10.0, 10.0)) ** 2
