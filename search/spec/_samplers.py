"""Samplers and pruners from the spec, with their options checked against the constructors."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna

from hpsearch.errors import SpecError, did_you_mean

if TYPE_CHECKING:
    from hpsearch.search.spec._study_file import StudySpec


def _grid_space(spec: StudySpec, source: str) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for name, entry in spec.space.items():
        if entry["type"] == "categorical":
            grid[name] = list(entry["choices"])
        elif "step" in entry or entry["type"] == "int":
            step = entry.get("step", 1)
            count = int((entry["high"] - entry["low"]) // step) + 1
            grid[name] = [entry["low"] + i * step for i in range(count)]
        else:
            raise SpecError(
                f"{source} [space.{name}]: the grid sampler needs a step for float parameters; "
                "add step = ... or use another sampler."
            )
    return grid


def _construct(
    factory: Callable[..., Any], options: dict[str, Any], where: str, source: str
) -> Any:
    allowed = [
        p
        for p in inspect.signature(factory).parameters
        if p not in ("self", "seed", "search_space", "kwargs")
    ]
    for key in options:
        if key not in allowed:
            name = getattr(factory, "__name__", factory)
            allowed_text = (
                f"Allowed: {', '.join(allowed)}."
                if allowed
                else f"{name} takes no options: remove [{where}.options]."
            )
            raise SpecError(
                f"{source} [{where}.options]: unknown option {key!r} for "
                f"{name}.{did_you_mean(key, allowed)} {allowed_text}"
            )
    try:
        with warnings.catch_warnings():
            # Optuna marks options such as TPE's group as experimental; they are chosen on purpose.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return factory(**options)
    except (TypeError, ValueError) as err:
        raise SpecError(f"{source} [{where}.options]: {err}") from None


def build_sampler(
    spec: StudySpec, *, seed: int | None, source: str = "study"
) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded with ``seed`` (each worker passes its own)."""
    options = spec.sampler.options
    name = spec.sampler.name
    if name == "tpe" and spec.is_conditional and options.get("multivariate", True):
        # Optuna 5 TPE is multivariate with a constant liar. A conditional space also needs
        # group=True, or parameters that exist in only some trials are sampled independently.
        options.setdefault("multivariate", True)
        options.setdefault("group", True)
    if name == "grid":
        grid = _grid_space(spec, source)
        factory = _with_seed(optuna.samplers.GridSampler, seed, grid)
        return _construct(factory, options, "sampler", source)  # type: ignore[no-any-return]
    cls = _SEEDED_SAMPLERS.get(name)
    if cls is None:
        raise SpecError(f"{source} [sampler]: unknown sampler {name!r}.")
    return _construct(_with_seed(cls, seed), options, "sampler", source)  # type: ignore[no-any-return]


_SEEDED_SAMPLERS: dict[str, Callable[..., Any]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "gp": optuna.samplers.GPSampler,
    "qmc": optuna.samplers.QMCSampler,
}


def _with_seed(cls: Callable[..., Any], seed: int | None, *args: Any) -> Callable[..., Any]:
    """``cls(*args, seed=seed, **options)``, keeping ``cls``'s signature for option checks."""

    def factory(**kwargs: Any) -> Any:
        return cls(*args, seed=seed, **kwargs)

    factory.__name__ = getattr(cls, "__name__", "sampler")
    factory.__signature__ = inspect.signature(cls)  # type: ignore[attr-defined]
    return factory


_PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive-halving": optuna.pruners.SuccessiveHalvingPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
    "none": optuna.pruners.NopPruner,
}


def build_pruner(spec: StudySpec, *, source: str = "study") -> optuna.pruners.BasePruner:
    pruner = spec.pruner
    factory = _PRUNERS[pruner.name]
    if pruner.name == "percentile" and "percentile" not in pruner.options:
        raise SpecError(
            f"{source} [pruner.options]: the percentile pruner needs percentile = 0..100, "
            "e.g. options = { percentile = 25.0 }."
        )
    result: optuna.pruners.BasePruner = _construct(factory, pruner.options, "pruner", source)
    return result
