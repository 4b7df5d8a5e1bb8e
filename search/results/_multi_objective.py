"""The trial handed to an objective in a multi-objective study.

Optuna's ``Trial.report`` and ``Trial.should_prune`` raise NotImplementedError when a study has
several directions. Objectives (the built-ins included) report every epoch, so here a report
keeps the value (the study's first metric, the trained one) in the trial's system attribute
``hpsearch:curve``, and ``should_prune`` asks the study's pruner: the Pareto pruner
(search/spec/_pareto.py) or none.

Not Optuna's intermediate values: its TPE sampler ranks pruned trials by their last
intermediate value in the study's single direction, which a multi-objective study lacks.
"""

from __future__ import annotations

import optuna

from hpsearch import attrs
from hpsearch.search.spec._pareto import ParetoPruner, Verdict


class MultiObjectiveTrial(optuna.Trial):
    """An Optuna trial of a study with several directions: reports kept, pruned by Pareto rank."""

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        super().__init__(study, trial_id)
        # A retry copies its parent's attributes, the curve too: the first report of a step stays.
        kept = self._cached_frozen_trial.system_attrs.get(attrs.CURVE, [])
        self._curve: dict[int, float] = {int(step): float(value) for step, value in kept}
        self.verdict: Verdict | None = None  # why the pruner stopped it

    def report(self, value: float, step: int) -> None:
        value, step = float(value), int(step)
        if step < 0:
            raise ValueError(f"step must be non-negative, not {step}")
        if step in self._curve:
            return  # as Optuna does: the first report of a step is kept
        self._curve[step] = value
        self.storage.set_trial_system_attr(
            self._trial_id, attrs.CURVE, [[s, v] for s, v in sorted(self._curve.items())]
        )

    def should_prune(self) -> bool:
        pruner = self.study.pruner
        if not isinstance(pruner, ParetoPruner):
            return False  # the study file allows no other pruner with several metrics
        verdict = pruner.verdict(self.study, self._get_latest_trial())
        if verdict is None:
            return False
        if verdict.dominated_by is not None:
            self.set_user_attr(attrs.DOMINATED_BY, verdict.dominated_by)
        else:
            self.set_user_attr(attrs.HYPERVOLUME_GAIN, verdict.hypervolume_gain)
        self.verdict = verdict
        return True


def objective_trial(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """The trial an objective sees: Optuna's own, or a multi-objective one."""
    if len(study.directions) > 1:
        return MultiObjectiveTrial(study, trial_id)
    return optuna.Trial(study, trial_id)


def pruned_reason(trial: optuna.Trial, reason: str) -> str:
    """The log's reason for a pruned trial, with the Pareto pruner's verdict, if it gave one."""
    if isinstance(trial, MultiObjectiveTrial) and trial.verdict is not None:
        return f"{reason}: {trial.verdict}"
    return reason
