"""How one trial trains: datasets, models, the trainer and the registry of objectives.

An objective is ``fn(trial, params) -> float | Sequence[float]``: ``trial`` is the Optuna trial
(for ``report``/``should_prune``), ``params`` the suggested values merged over the study file's
fixed ``[training]`` options. Nothing in this package knows about databases.
"""

from __future__ import annotations

from hpsearch.errors import ObjectiveError
from hpsearch.objectives._registry import (
    BUILTIN_OBJECTIVES,
    BuiltinObjective,
    Objective,
    check_combinations,
    check_options,
    load_objective,
    resolve_objective,
)

__all__ = [
    "BUILTIN_OBJECTIVES",
    "BuiltinObjective",
    "Objective",
    "ObjectiveError",
    "check_combinations",
    "check_options",
    "load_objective",
    "resolve_objective",
]
