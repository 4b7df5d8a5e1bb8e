"""The default sampler, ``auto``: Optuna's GP sampler where it proposes better trials than TPE,
TPE everywhere else, chosen from the study file and, trial by trial, from the study's size.

What decides (measured on this repository's benchmarks, ``python -m bench --sections samplers``):

- **The space.** GP models a smooth function of ordered values. On a space of floats and wide
  integer ranges (the learning-curve simulator's lr, width, warm-up and l2) it finds better
  configurations than TPE in the same trials; on integer grids of a few levels (HPOBench's MLP
  tables) and on categorical spaces (NAS-Bench-201) it does not, and a conditional space leaves
  it sampling the conditional parameters at random. Those get TPE (multivariate; grouped when
  conditional).
- **How trials end.** GP learns from COMPLETE trials only; TPE also ranks pruned and paused
  trials by how far they got. A study that prunes (any pruner but ``none``) or schedules (ASHA,
  PBT) keeps most of what it learns in such trials: TPE.
- **One objective.** Multi-objective studies get TPE (as before: its cost stays flat).
- **The budget.** GP's fit grows with the cube of the trials: it proposes while the study has
  fewer than ``GP_TRIALS`` finished trials (its own time stays well under a second a trial on
  two cores there), TPE afterwards, with every trial so far to learn from.
- **Workers.** Both consider the running trials of the other workers: Optuna 5's GP sampler
  conditions its acquisition on them (q-expected improvement), TPE imputes them (constant liar).

The choice for a trial is made once, at its first proposal, and stored on the trial
(user attribute ``sampler``): ``export`` and the dashboard say which sampler proposed it. Both samplers
are seeded from the study's seed and reseeded per budget slot like any other, so a seeded study
proposes per (seed, slot).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import SAMPLER

if TYPE_CHECKING:
    from hpsearch.search.spec._study_file import StudySpec

GP_TRIALS = 100  # finished trials after which TPE proposes (GP's fit grows as n^3)
FEW_LEVELS = 16  # an ordered parameter with fewer values is a grid, not a smooth axis
GP_MAX_PARAMS = 16  # more parameters than GP models well in a hundred trials


def _levels(entry: Mapping[str, Any]) -> float:
    """How many values a numeric parameter takes (inf: a continuum)."""
    step = entry.get("step")
    if entry["type"] == "int":
        step = step or 1
    if step is None or entry.get("log"):
        return float("inf") if entry["type"] == "float" else float(entry["high"] - entry["low"])
    return float((entry["high"] - entry["low"]) / step + 1)


def space_kind(space: Mapping[str, Mapping[str, Any]]) -> str:
    """``conditional``, ``categorical``, ``grid`` (ordered parameters of few levels),
    ``continuous`` or ``empty``: what decides whether GP can model the space."""
    if not space:
        return "empty"
    if any("when" in entry for entry in space.values()):
        return "conditional"
    if any(entry["type"] == "categorical" for entry in space.values()):
        return "categorical"
    if any(_levels(entry) < FEW_LEVELS for entry in space.values()):
        return "grid"
    return "continuous"


def gp_suits(
    space: Mapping[str, Mapping[str, Any]], *, objectives: int, prunes: bool
) -> str | None:
    """Why GP does not propose in a study of this kind (None: it does, while trials are few)."""
    kind = space_kind(space)
    if kind != "continuous":
        return f"a {kind} space"
    if len(space) > GP_MAX_PARAMS:
        return f"{len(space)} parameters (GP models up to {GP_MAX_PARAMS})"
    if objectives > 1:
        return "several objectives"
    if prunes:
        return "trials that are pruned or paused (GP learns from complete trials only)"
    return None


class AutoSampler(optuna.samplers.TPESampler):
    """TPE with Optuna's defaults (grouped in a conditional space), and ``gp``, if given,
    proposing a trial while the study has fewer than ``gp_trials`` finished trials; the choice
    is stored on the trial. Being TPE itself, where GP does not suit it proposes exactly what
    plain TPE with the same seed does."""

    def __init__(
        self,
        *,
        seed: int | None,
        group: bool,
        gp: optuna.samplers.BaseSampler | None,
        gp_trials: int = GP_TRIALS,
    ) -> None:
        with warnings.catch_warnings():
            # TPE's group is marked experimental; a conditional space needs it.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(seed=seed, group=group, multivariate=True if group else None)
        self.gp = gp
        self.gp_trials = gp_trials
        self._chosen: tuple[int, str] | None = None  # (trial id, name): the trial being proposed

    def _uses_gp(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self._chosen is None or self._chosen[0] != trial._trial_id:
            name = "tpe"
            if trial.user_attrs.get(SAMPLER) in ("gp", "tpe"):
                name = trial.user_attrs[SAMPLER]  # a retry: its params were proposed already
            elif self.gp is not None:
                done = study._get_trials(
                    deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
                )
                name = "gp" if len(done) < self.gp_trials else "tpe"
            self._chosen = (trial._trial_id, name)
            # Enqueued params (fixed_params: a continuation, `enqueue`) were proposed elsewhere.
            if SAMPLER not in trial.user_attrs and "fixed_params" not in trial.system_attrs:
                study._storage.set_trial_user_attr(trial._trial_id, SAMPLER, name)
        return self._chosen[1] == "gp" and self.gp is not None

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if self._uses_gp(study, trial):
            assert self.gp is not None
            return self.gp.infer_relative_search_space(study, trial)
        return super().infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self._uses_gp(study, trial):
            assert self.gp is not None
            return self.gp.sample_relative(study, trial, search_space)
        return super().sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if self._uses_gp(study, trial):
            assert self.gp is not None
            return self.gp.sample_independent(study, trial, param_name, param_distribution)
        return super().sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        super().after_trial(study, trial, state, values)
        if self.gp is not None:
            self.gp.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        super().reseed_rng()
        if self.gp is not None:
            self.gp.reseed_rng()

    def __str__(self) -> str:
        if self.gp is None:
            return "auto (TPE)"
        return f"auto (GP for the first {self.gp_trials} trials, then TPE)"


def why_not_gp(spec: StudySpec) -> str | None:
    """Why GP does not propose in this study (None: it does, while trials are few)."""
    prunes = spec.pruner.name != "none" or spec.scheduler is not None
    return gp_suits(spec.space, objectives=len(spec.directions), prunes=prunes)


def describe(spec: StudySpec) -> str:
    """What the auto sampler does in this study, in a sentence (the dashboard note)."""
    why_not = why_not_gp(spec)
    if why_not is None:
        choice = f"Optuna's GP sampler proposes the first {GP_TRIALS} trials, TPE the rest"
    else:
        choice = f"TPE proposes every trial ({why_not})"
    return f"Sampler auto: {choice}; each trial's user attribute `sampler` names the one."


def build_auto(spec: StudySpec, *, seed: int | None) -> AutoSampler:
    """The auto sampler of this study, seeded with ``seed``."""
    gp = None
    if why_not_gp(spec) is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            gp = optuna.samplers.GPSampler(seed=seed)
    return AutoSampler(seed=seed, group=spec.is_conditional, gp=gp)
