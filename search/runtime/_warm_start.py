"""Warm starts: the finished trials of earlier studies inform this study's sampler.

``[warm_start] studies = [...]`` names earlier studies (in this study's storage, or in
``storage``: a URL, or ``$VARIABLE`` naming one in the workers' environment). ``create`` checks
that each exists and optimizes the same direction(s) and metric(s), refusing in one line
otherwise. Each worker reads their COMPLETE trials once, keeps of each the parameters that still
fit this study's space (a value inside the new bounds or among the new choices, drawn from the
new distribution), drops the rest (and a trial left with none), and hands them to its sampler as
if they were this study's own: TPE's and GP's models start from them, and with enough of them
TPE skips its random start-up. Nothing is added to this study, so its budget, best trial,
export and dashboard hold its own trials only, and the earlier studies are only read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import HpsearchError, MissingSchemaError
from hpsearch.search.spec._space import distribution
from hpsearch.search.spec._study_file import StudySpec
from hpsearch.storage import open_storage, redact_url, sqlite_file, translate_errors

log = logging.getLogger("hpsearch.worker")


def earlier_storage_url(spec: StudySpec, url: str) -> str:
    """Where the earlier studies are: [warm_start] storage (a $VARIABLE read from the
    environment), or this study's own storage."""
    warm = spec.warm_start or {}
    named = warm.get("storage")
    if not named:
        return url
    if named.startswith("$"):
        value = os.environ.get(named[1:])
        if not value:
            raise HpsearchError(
                f"[warm_start] storage = {named!r}: the environment variable {named[1:]} is not "
                "set here; set it to the earlier studies' storage URL on every worker."
            )
        return value
    return str(named)


def earlier_trials(spec: StudySpec, url: str) -> list[FrozenTrial]:
    """The earlier studies' COMPLETE trials carried into this study's space (see the module's
    docstring); refuses, in one line, a study that is missing or optimizes something else."""
    warm = spec.warm_start or {}
    where = earlier_storage_url(spec, url)
    path = sqlite_file(where)
    if path is not None and not os.path.exists(path):  # also this study's own, before `create`
        raise _no_studies(warm["studies"], where, f" (the SQLite file {path!r} does not exist)")
    try:
        storage = open_storage(where)
    except MissingSchemaError:
        raise _no_studies(warm["studies"], where, "") from None
    space = {name: distribution(entry) for name, entry in spec.space.items()}
    carried: list[FrozenTrial] = []
    with translate_errors(where):
        for name in warm["studies"]:
            try:
                study = optuna.load_study(study_name=name, storage=storage)
            except KeyError:
                names = sorted(s.study_name for s in storage.get_all_studies())
                raise HpsearchError(
                    f"[warm_start]: no study {name!r} in {redact_url(where)} (it holds: "
                    f"{', '.join(names) or 'none'}); fix the name in studies."
                ) from None
            _check_same_goal(spec, study)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                moved = _carried(trial, space, number=-1 - len(carried))
                if moved is not None:
                    carried.append(moved)
    return carried


def _no_studies(names: Sequence[str], where: str, why: str) -> HpsearchError:
    return HpsearchError(
        f"[warm_start]: {redact_url(where)} holds no studies{why}; name a storage that holds "
        f"{', '.join(names)} in [warm_start] storage."
    )


def _check_same_goal(spec: StudySpec, study: optuna.Study) -> None:
    directions = [d.name.lower() for d in study.directions]
    if directions != list(spec.directions):
        raise HpsearchError(
            f"[warm_start]: study {study.study_name!r} optimizes {', '.join(directions)}, this "
            f"study {', '.join(spec.directions)}; warm-start only from studies with the same "
            "direction(s)."
        )
    names = study.metric_names
    if names is not None and list(names) != list(spec.metrics):
        raise HpsearchError(
            f"[warm_start]: study {study.study_name!r} measured {', '.join(names)}, this study "
            f"{', '.join(spec.metrics)}; warm-start only from studies of the same metric(s)."
        )


def _carried(
    trial: FrozenTrial, space: dict[str, BaseDistribution], *, number: int
) -> FrozenTrial | None:
    """``trial`` with only the parameters that fit ``space``, in its distributions; None if
    none does. Numbered (and identified) below zero: never one of this study's trials."""
    params: dict[str, Any] = {}
    distributions: dict[str, BaseDistribution] = {}
    for name, value in trial.params.items():
        new = space.get(name)
        if new is not None and _fits(new, value):
            params[name], distributions[name] = value, new
    if not params:
        return None
    return FrozenTrial(
        number=number,
        state=TrialState.COMPLETE,
        value=None,
        values=list(trial.values),
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        params=params,
        distributions=distributions,
        user_attrs={},
        system_attrs={},
        intermediate_values={},
        trial_id=number,
    )


def _fits(new: BaseDistribution, value: Any) -> bool:
    if isinstance(new, CategoricalDistribution):
        return value in new.choices
    try:
        return bool(new._contains(new.to_internal_repr(value)))
    except (TypeError, ValueError):
        return False


class _WithEarlier(optuna.Study):
    """The study as its sampler sees it: the earlier trials first, then its own."""

    def __init__(self, study: optuna.Study, earlier: Sequence[FrozenTrial]) -> None:
        self.__dict__.update(study.__dict__)  # the same storage, id, sampler and caches
        self._earlier = earlier

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Any = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        own = super()._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        earlier = [t for t in self._earlier if states is None or t.state in states]
        return [*earlier, *own]


class WarmStartSampler(optuna.samplers.BaseSampler):
    """``base``, proposing as if the earlier studies' carried trials were the study's own."""

    def __init__(self, base: optuna.samplers.BaseSampler, earlier: Sequence[FrozenTrial]):
        self.base = base
        self.earlier = list(earlier)

    def _view(self, study: optuna.Study) -> optuna.Study:
        return _WithEarlier(study, self.earlier)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(self._view(study), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.base.sample_relative(self._view(study), trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.base.sample_independent(
            self._view(study), trial, param_name, param_distribution
        )

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()

    def __str__(self) -> str:
        return f"{self.base} warm-started from {len(self.earlier)} earlier trials"


def warm_started(study: optuna.Study, spec: StudySpec, url: str) -> None:
    """Give ``study``'s sampler the earlier studies' trials (a worker, once at its start)."""
    if not spec.warm_start:
        return
    earlier = earlier_trials(spec, url)
    study.sampler = WarmStartSampler(study.sampler, earlier)
    log.info(
        "warm start: %d trials of %s inform the sampler",
        len(earlier),
        ", ".join(spec.warm_start["studies"]),
    )
