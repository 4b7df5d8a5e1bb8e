"""Samplers and pruners from the spec, with their options checked against the constructors."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna

from hpsearch.errors import SpecError, did_you_mean
from hpsearch.search.spec._auto import build_auto
from hpsearch.search.spec._pareto import ParetoPruner

if TYPE_CHECKING:
    from hpsearch.search.spec._study_file import StudySpec


def _grid_space(spec: StudySpec, source: str) -> dict[str, list[Any]]:
    if not spec.space:
        # The grid of no parameters has one point: the sampler would stop the study after one
        # trial and leave the rest of the budget queued.
        raise SpecError(
            f"{source} [sampler]: the grid sampler needs a [space] to enumerate; a study of fixed "
            "settings repeats its one configuration n_trials times with any other sampler: drop "
            'name = "grid" (the default, auto, chooses GP or TPE).'
        )
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


# What a TOML value may be for each annotation an Optuna constructor uses; a parameter whose
# every alternative is missing here (a callable, a sampler, a list of trials) cannot be given in
# a study file.
_TOML_TYPES: dict[str, tuple[type, ...]] = {
    "Any": (object,),
    "bool": (bool,),
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "dict": (dict,),
}


def _alternatives(annotation: Any) -> list[str]:
    """``'int | None'`` -> ``['int', 'None']``: the top-level alternatives, bracket-aware."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char == "["
        depth -= char == "]"
        if char == "|" and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _check_type(name: str, owner: str, annotation: Any, value: Any) -> str | None:
    """Why ``value`` cannot be the option ``name`` (None: it can), from its annotation."""
    if annotation is inspect.Parameter.empty:
        return None  # an unannotated parameter: the constructor decides
    kinds = [a.split("[", 1)[0] for a in _alternatives(annotation) if a != "None"]
    accepted = [k for k in kinds if k in _TOML_TYPES]
    if not accepted:
        return (
            f"option {name!r} of {owner} takes a Python object ({annotation}), which a study "
            "file cannot hold; remove it."
        )
    for kind in accepted:
        # TOML's true is a Python int too; it is a number to no one.
        if isinstance(value, _TOML_TYPES[kind]) and not (
            isinstance(value, bool) and kind in ("int", "float")
        ):
            return None
    return f"option {name!r} of {owner} must be {' or '.join(accepted)}, got {value!r}."


def _construct(
    factory: Callable[..., Any], options: dict[str, Any], where: str, source: str
) -> Any:
    parameters = inspect.signature(factory).parameters
    allowed = [p for p in parameters if p not in ("self", "seed", "search_space", "kwargs")]
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
        # Most constructors store an option unchecked and fail at the first trial (TPE compares
        # n_startup_trials = "10" with a count): refuse a value of the wrong type here.
        owner = getattr(factory, "__name__", "the constructor")
        wrong = _check_type(key, owner, parameters[key].annotation, options[key])
        if wrong is not None:
            raise SpecError(f"{source} [{where}.options]: {wrong}")
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
    if name == "auto":
        if options:
            raise SpecError(
                f"{source} [sampler.options]: the auto sampler takes no options (it chooses GP "
                'or TPE itself); name the sampler whose options you mean, e.g. name = "tpe".'
            )
        return build_auto(spec, seed=seed)
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
    "pareto": ParetoPruner,
}


def build_pruner(spec: StudySpec, *, source: str = "study") -> optuna.pruners.BasePruner:
    pruner = spec.pruner
    factory = _PRUNERS[pruner.name]
    if pruner.name == "percentile" and "percentile" not in pruner.options:
        raise SpecError(
            f"{source} [pruner.options]: the percentile pruner needs percentile = 0..100, "
            "e.g. options = { percentile = 25.0 }."
        )
    if pruner.name == "pareto":
        factory = _with_metrics(ParetoPruner, spec.metrics)
    result: optuna.pruners.BasePruner = _construct(factory, pruner.options, "pruner", source)
    return result


def _with_metrics(cls: Callable[..., Any], metrics: list[str]) -> Callable[..., Any]:
    """``cls(metrics=metrics, **options)``; its signature lists the options a study file sets."""

    def factory(**kwargs: Any) -> Any:
        return cls(metrics=metrics, **kwargs)

    signature = inspect.signature(cls)
    factory.__name__ = cls.__name__
    factory.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "metrics"]
    )
    return factory
