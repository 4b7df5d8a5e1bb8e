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

``min_gain`` (off by default) goes further: a trial whose best case would still reach the front
but add at most that share of the front's hypervolume is stopped too, and ``gain_quantile``
below 1 predicts the best case with that quantile of the completed trials' gains rather than
the largest. With three metrics most trials end on the front, each adding little. Measured on
the compression built-in (``python -m bench --sections mo_pruning``, 5 seeds), ``min_gain =
0.002``, ``gain_quantile = 0.5`` and no warm-up train 0.46x the epochs of the unpruned search
for 0.984 of its front's hypervolume; domination alone cannot go below 0.72x there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import attrs
from hpsearch.search.spec._constraints import is_feasible


def curve(trial: FrozenTrial) -> dict[int, float]:
    """The trained metric's value by step, as a multi-objective trial reported it."""
    return {int(step): float(value) for step, value in trial.system_attrs.get(attrs.CURVE, [])}


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The volume that ``points`` (every objective minimized) dominate up to ``reference``:
    slices along the last objective, each the hypervolume of one dimension less (exact; fine
    for the fronts of a few hundred trials)."""
    inside = [p for p in points if all(v < r for v, r in zip(p, reference, strict=True))]
    if not inside:
        return 0.0
    if len(reference) == 1:
        return reference[0] - min(p[0] for p in inside)
    levels = sorted({p[-1] for p in inside})
    total = 0.0
    for i, level in enumerate(levels):
        upper = levels[i + 1] if i + 1 < len(levels) else reference[-1]
        below = [p[:-1] for p in inside if p[-1] <= level]
        total += (upper - level) * hypervolume(below, reference[:-1])
    return total


def hypervolume_gain(front: Sequence[Sequence[float]], point: Sequence[float]) -> float:
    """The share of ``front``'s hypervolume that ``point`` adds (all minimized). Each objective
    is scaled to [0, 1] over the front and the point together, the reference at 1.1: the point
    is always inside the box, so an extreme point (the most accurate model, however large)
    counts."""
    front = _non_dominated(front)  # the same volume, far fewer slices
    every = [*front, point]
    low = [min(p[i] for p in every) for i in range(len(point))]
    span = [max(p[i] for p in every) - low[i] or 1.0 for i in range(len(point))]

    def scaled(p: Sequence[float]) -> list[float]:
        return [(v - lo) / s for v, lo, s in zip(p, low, span, strict=True)]

    reference = [1.1] * len(point)
    before = hypervolume([scaled(p) for p in front], reference)
    after = hypervolume([scaled(p) for p in every], reference)
    return (after - before) / before if before > 0 else float("inf")


def _non_dominated(points: Sequence[Sequence[float]]) -> list[Sequence[float]]:
    def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and tuple(a) != tuple(b)

    return [p for p in points if not any(dominates(q, p) for q in points)]


@dataclass(frozen=True)
class Verdict:
    """Why a trial is pruned: a completed trial dominates its best case, or its best case
    would add too little to the front's hypervolume."""

    best_case: float  # the trained metric's value the trial could reach at best
    dominated_by: int | None = None  # the number of the completed trial
    hypervolume_gain: float | None = None  # the share of the front's hypervolume it would add

    def __str__(self) -> str:
        best = f"its best case ({self.best_case:.4g})"
        if self.dominated_by is not None:
            return f"{best} is dominated by trial {self.dominated_by}"
        return f"{best} would add {self.hypervolume_gain:.2%} to the front's hypervolume"


class ParetoPruner(optuna.pruners.BasePruner):
    """Prunes a multi-objective trial whose best case is dominated by a completed trial.

    ``metrics``: the study's metrics in order; the first is the trained one (reported every
    epoch), the others are fixed before training. ``n_startup_trials``: completed trials (each
    with a value at the step) before anything is pruned. ``n_warmup_steps``: steps never pruned.
    ``margin``: added to every trial's best case, in the trained metric's units (more is safer).
    ``tolerance``: the fraction by which a fixed metric may turn out better than reported.
    ``min_gain``: the least share of the completed trials' front's hypervolume that a trial's
    best case must add to go on (0: only dominated trials are pruned).
    """

    def __init__(
        self,
        n_startup_trials: int = 5,
        n_warmup_steps: int = 1,
        margin: float = 0.0,
        tolerance: float = 0.1,
        min_gain: float = 0.0,
        gain_quantile: float = 1.0,
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
        if not 0 <= min_gain < 1:
            raise ValueError(f"min_gain must be in [0, 1), not {min_gain}")
        if not 0 < gain_quantile <= 1:
            raise ValueError(f"gain_quantile must be in (0, 1], not {gain_quantile}")
        self.metrics = tuple(metrics)
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps
        self.margin = margin
        self.tolerance = tolerance
        self.min_gain = min_gain
        self.gain_quantile = gain_quantile

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.verdict(study, trial) is not None

    def verdict(self, study: optuna.Study, trial: FrozenTrial) -> Verdict | None:
        """Why ``trial`` is to be pruned now, or None to let it go on."""
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
        gain = sorted(gains)[math.ceil(self.gain_quantile * len(gains)) - 1]  # 1.0: the largest
        best_case = signs[0] * reported[step] + gain + self.margin
        # Each fixed metric at its best: better than reported by the tolerance.
        fixed_best = [
            signs[i] * float(fixed[name]) + self.tolerance * abs(float(fixed[name]))
            for i, name in enumerate(self.metrics[1:], start=1)
        ]
        for other in completed:
            if signs[0] * other.values[0] > best_case and all(
                signs[i] * other.values[i] >= best for i, best in enumerate(fixed_best, start=1)
            ):
                return Verdict(dominated_by=other.number, best_case=signs[0] * best_case)
        if self.min_gain > 0:
            # Minimized, each value times -sign; the fixed metrics as reported: the tolerance
            # guards a verdict of domination, and would make every small share look larger.
            front = [[-s * v for s, v in zip(signs, t.values, strict=True)] for t in completed]
            point = [
                -best_case,
                *(-signs[i] * float(fixed[n]) for i, n in enumerate(self.metrics[1:], start=1)),
            ]
            added = hypervolume_gain(front, point)
            if added <= self.min_gain:
                return Verdict(hypervolume_gain=added, best_case=signs[0] * best_case)
        return None
