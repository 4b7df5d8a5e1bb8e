"""The trial handed to an objective in a multi-objective study.

Optuna's pruners are single-objective: ``Trial.report`` and ``Trial.should_prune`` raise
NotImplementedError when a study has several directions. Objectives (the built-ins included)
report every epoch, so in such a study reporting is a no-op and nothing is pruned.
"""

from __future__ import annotations

import optuna


class UnprunedTrial(optuna.Trial):
    """An Optuna trial whose ``report`` is ignored and that is never pruned."""

    def report(self, value: float, step: int) -> None:
        return None

    def should_prune(self) -> bool:
        return False


def objective_trial(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """The trial an objective sees: Optuna's own, or an unpruned one with several directions."""
    if len(study.directions) > 1:
        return UnprunedTrial(study, trial_id)
    return optuna.Trial(study, trial_id)
