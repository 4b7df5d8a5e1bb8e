"""Pruning for multi-objective studies: stop a trial that can no longer reach the Pareto front.

Optuna's pruners compare one value per step and refuse studies of several directions. In a
compression search (accuracy against size and latency) all but one metric are fixed by the
configuration before training starts: the recipe fixes the size, the architecture the latency.
Only the trained metric (the study's first) moves from epoch to epoch. So a trial can be
stopped as soon as even its best case is dominated:

- its fixed metrics are known (``hpsearch.report_fixed``; the built-ins measure them on the
  untrained, compressed model);
- its best case is its last reported value of the trained metric plus the largest gain from
  that step to the end that any completed trial made (a bound that only grows as trials finish,
  plus ``margin``);
- a completed, feasible trial is strictly better in the trained metric than that best case,
  and at least as good in every fixed metric as the trial's, even after the trial's value is
  moved ``tolerance`` (a fraction of it) in its favour: the trial would end dominated, off the
  front. The tolerance covers fixed metrics that are estimates: a latency is measured with
  noise, and a size can move a little where pruning spreads its zeros differently over the
  layers of a trained model.

Each comparison follows its metric's direction. Conservative by design: a trial is stopped only
when every completed trial's learning curve says it cannot catch up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import attrs
from hpsearch.search.spec._constraints import is_feasible


def curve(trial: FrozenTrial) -> dict[int, float]:
    """The trained metric's value by step, as a multi-objective trial reported it."""
    return {int(step): float(value) for step, value in trial.system_attrs.get(attrs.CURVE, [])}


class ParetoPruner(optuna.pruners.BasePruner):
    """Prunes a multi-objective trial whose best case is dominated by a completed trial.

    ``metrics``: the study's metrics in order; the first is the trained one (reported every
    epoch), the others are fixed before training. ``n_startup_trials``: completed trials (each
    with a value at the step) before anything is pruned. ``n_warmup_steps``: steps never pruned.
    ``margin``: added to every trial's best case, in the trained metric's units (more is safer).
    ``tolerance``: the fraction by which a fixed metric may turn out better than reported.
    """

    def __init__(
        self,
        n_startup_trials: int = 5,
        n_warmup_steps: int = 1,
        margin: float = 0.0,
        tolerance: float = 0.1,
        *,
        metrics: Sequence[str] = (),
    ) -> None:
        if n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be at least 1, not {n_startup_trials}")
        if n_warmup_steps < 0:
            raise ValueError(f"n_warmup_steps must be 0 or more, not {n_warmup_steps}")
        if margin < 0:
            raise ValueError(f"margin must be 0 or more, not {margin}")
        if not 0 <= tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), not {tolerance}")
        self.metrics = tuple(metrics)
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps
        self.margin = margin
        self.tolerance = tolerance

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.dominated_by(study, trial) is not None

    def dominated_by(self, study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
        """A completed trial that dominates ``trial``'s best case, or None."""
        reported = curve(trial)
        fixed: Mapping[str, Any] = trial.user_attrs.get(attrs.FIXED_METRICS, {})
        if not reported or any(name not in fixed for name in self.metrics[1:]):
            return None  # nothing to compare yet, or an objective that never said its fixed metrics
        step = max(reported)
        if step < self.n_warmup_steps:
            return None
        signs = [
            1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in study.directions
        ]
        completed = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values is not None and is_feasible(t)
        ]
        gains = [
            signs[0] * (t.values[0] - at_step)
            for t in completed
            if (at_step := curve(t).get(step)) is not None
        ]
        if len(gains) < self.n_startup_trials:
            return None
        best_case = signs[0] * reported[step] + max(gains) + self.margin
        # Each fixed metric at its best: better than reported by the tolerance.
        fixed_best = [
            signs[i] * float(fixed[name]) + self.tolerance * abs(float(fixed[name]))
            for i, name in enumerate(self.metrics[1:], start=1)
        ]
        for other in completed:
            if signs[0] * other.values[0] > best_case and all(
                signs[i] * other.values[i] >= best for i, best in enumerate(fixed_best, start=1)
            ):
                return other
        return None
