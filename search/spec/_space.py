"""Suggest a trial's parameters from the spec's search space, conditions included."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna


def _ordered(space: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Parents before children, otherwise in file order."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for parent in space[name].get("when", {}):
            visit(parent)
        order.append(name)

    for name in space:
        visit(name)
    return order


def is_active(entry: Mapping[str, Any], chosen: Mapping[str, Any]) -> bool:
    """An entry is active when every parent it names is active and took one of the listed values."""
    return all(
        parent in chosen and chosen[parent] in values
        for parent, values in entry.get("when", {}).items()
    )


def suggest(trial: optuna.Trial, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The active parameters of ``space`` for ``trial``, in dependency order."""
    chosen: dict[str, Any] = {}
    for name in _ordered(space):
        entry = space[name]
        if not is_active(entry, chosen):
            continue
        kind = entry["type"]
        if kind == "categorical":
            chosen[name] = trial.suggest_categorical(name, entry["choices"])
        elif kind == "int":
            chosen[name] = trial.suggest_int(
                name, entry["low"], entry["high"], step=entry.get("step", 1), log=entry["log"]
            )
        else:
            chosen[name] = trial.suggest_float(
                name, entry["low"], entry["high"], step=entry.get("step"), log=entry["log"]
            )
    return chosen


def distribution(entry: Mapping[str, Any]) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution that :func:`suggest` draws ``entry`` from."""
    kind = entry["type"]
    if kind == "categorical":
        return optuna.distributions.CategoricalDistribution(entry["choices"])
    if kind == "int":
        return optuna.distributions.IntDistribution(
            entry["low"], entry["high"], step=entry.get("step", 1), log=entry["log"]
        )
    return optuna.distributions.FloatDistribution(
        entry["low"], entry["high"], step=entry.get("step"), log=entry["log"]
    )
