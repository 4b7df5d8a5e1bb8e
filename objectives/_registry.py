"""Built-in objectives by name, and the loader of user objectives (``module:fn``, ``file.py:fn``).

Built-ins are described by data so that a study file can be validated without importing torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import numbers
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpsearch.errors import ObjectiveError, did_you_mean
from hpsearch.objectives._choices import (
    ACTIVATIONS,
    AMP_MODES,
    DATASETS,
    ON_NONFINITE,
    OPTIMIZERS,
    QUANTIZE_MODES,
    SCHEDULES,
    STRATEGIES,
)
from hpsearch.objectives._options import (
    TRAINING,
    EngineUse,
    engine_use,
    misnamed,
    running_use,
)

# One value per direction, or a mapping read by the study's metric names (extra entries are kept
# for constraints).
Objective = Callable[[Any, dict[str, Any]], "float | Sequence[float] | Mapping[str, float]"]


@dataclass(frozen=True)
class BuiltinObjective:
    name: str
    target: str  # "module:function", imported only when a trial runs
    metric: str
    direction: str
    description: str
    # Every option the objective reads, with its default; a study file may search or fix each.
    options: Mapping[str, Any] = field(default_factory=dict)
    # Options whose values come from a closed set.
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # What the objective returns, by name, with each one's natural direction: any of them may be
    # a study's metric or a constraint.
    measurements: Mapping[str, str] = field(default_factory=dict)
    # The measurements taken at every epoch's evaluation: the only ones a pruner can use.
    evaluated: tuple[str, ...] = ("val_accuracy",)


# What every built-in reads, with its default: the engine's options, and where the data is.
_TRAINING_OPTIONS: dict[str, Any] = {
    **TRAINING,
    "val_fraction": 0.1,
    "data_dir": "data",
    "download": False,
}
# Compression after training (objectives/compression.py); every step off by default.
_COMPRESSION_OPTIONS: dict[str, Any] = {
    "prune_amount": 0.0,  # global unstructured L1 magnitude pruning, fraction of weights
    "prune_structured": 0.0,  # fraction of hidden neurons / conv channels removed
    "low_rank": 0.0,  # 0: off; else rank fraction of each hidden Linear's truncated SVD
    "quantize": "none",  # or "dynamic-int8" (CPU only)
    "finetune_epochs": 0,  # after pruning / low-rank, with the pruning masks fixed
}
# What the built-ins measure after compression, with each one's natural direction.
MEASUREMENTS = {
    "val_accuracy": "maximize",
    "params": "minimize",  # non-zero parameters
    "size_bytes": "minimize",  # bytes of the saved state_dict
    "latency_ms": "minimize",  # median forward time of one validation batch of 256
}
_MLP_OPTIONS = {"activation": "relu", "width": 512, "depth": 1, "dropout": 0.0}
_VGG_OPTIONS = {"activation": "relu", "width": 0.25, "dropout": 0.0, "batch_norm": True}
_CHOICES = {
    "activation": ACTIVATIONS,
    "optimizer": OPTIMIZERS,
    "on_nonfinite": ON_NONFINITE,
    "dataset": DATASETS,
    "schedule": SCHEDULES,
    "amp": AMP_MODES,
    "quantize": QUANTIZE_MODES,
    "strategy": STRATEGIES,
}


def _builtin(
    name: str,
    function: str,
    dataset: str,
    model: dict[str, Any],
    description: str,
    **overrides: Any,
) -> BuiltinObjective:
    options = {
        **_TRAINING_OPTIONS,
        **_COMPRESSION_OPTIONS,
        **model,
        "dataset": dataset,
        **overrides,
    }
    return BuiltinObjective(
        name=name,
        target=f"hpsearch.objectives.builtin:{function}",
        metric="val_accuracy",
        direction="maximize",
        description=description,
        options=options,
        choices=_CHOICES,
        measurements=MEASUREMENTS,
    )


BUILTIN_OBJECTIVES: dict[str, BuiltinObjective] = {
    objective.name: objective
    for objective in (
        _builtin(
            "digits-mlp",
            "digits_mlp",
            "digits",
            _MLP_OPTIONS,
            "MLP on scikit-learn's 8x8 digits (offline)",
            width=128,
            depth=2,
            val_fraction=0.2,
        ),
        _builtin("mnist-mlp", "mnist_mlp", "mnist", _MLP_OPTIONS, "MLP (784-512-10) on MNIST"),
        _builtin(
            "fashion-mlp",
            "fashion_mlp",
            "fashion-mnist",
            _MLP_OPTIONS,
            "MLP (784-512-10) on Fashion-MNIST",
        ),
        _builtin(
            "cifar10-vgg",
            "cifar10_vgg",
            "cifar10",
            _VGG_OPTIONS,
            "VGG-style CNN on CIFAR-10 (width multiplier 0.25 by default)",
            batch_size=128,
        ),
    )
}


def resolve_objective(ref: str, *, base_dir: str) -> str:
    """Validate an objective reference and return its canonical form.

    A built-in name stays as is; ``path/to/file.py:fn`` becomes absolute (relative paths are
    taken from ``base_dir``, the study file's folder) so that every worker finds the same file.
    The target is imported once here so that a broken objective is refused before a study exists.
    """
    if ref in BUILTIN_OBJECTIVES:
        return ref
    if ref.startswith("command:"):  # a command study's export (`hpsearch train` runs it again)
        load_objective(ref)
        return ref
    module_part, sep, function = ref.rpartition(":")
    if not sep or not module_part or not function:
        raise ObjectiveError(
            f"Unknown objective {ref!r}.{did_you_mean(ref, list(BUILTIN_OBJECTIVES))} "
            f"Expected a built-in ({', '.join(sorted(BUILTIN_OBJECTIVES))}), "
            "'package.module:function' or 'path/to/file.py:function'."
        )
    if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
        path = module_part if os.path.isabs(module_part) else os.path.join(base_dir, module_part)
        ref = f"{os.path.normpath(path)}:{function}"
    load_objective(ref)
    return ref


def _refuse_shadowing(folder: str, path: str) -> None:
    """The objective's folder goes first on sys.path, as a script's does, and spawned workers
    inherit that path: a module named `hpsearch` there would be imported instead of ours."""
    # Our package is imported already: it is this module's parent.
    ours = os.path.dirname(os.path.realpath(str(sys.modules["hpsearch"].__file__)))
    for name in ("hpsearch", "hpsearch.py"):
        candidate = os.path.join(folder, name)
        if os.path.exists(candidate) and os.path.realpath(candidate) != ours:
            raise ObjectiveError(
                f"Objective file {path!r}: its folder holds {name!r}, which would hide hpsearch "
                "itself from the workers; rename it, or move the objective to another folder."
            )


def _import_file(path: str) -> Any:
    """Import a user's objective file, once per process (a second call returns the module)."""
    if not os.path.isfile(path):
        raise ObjectiveError(
            f"Cannot import objective file {path!r}: no such file; fix the path in [study].objective."
        )
    module_name = "hpsearch_user_" + os.path.splitext(os.path.basename(path))[0]
    loaded = sys.modules.get(module_name)
    if loaded is not None and getattr(loaded, "__file__", None) == path:
        return loaded
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ObjectiveError(f"Cannot import objective file {path!r}: not a Python module.")
    module = importlib.util.module_from_spec(spec)
    # The objective's own folder is importable, so that it can import its neighbours (a
    # `storage.py` of theirs is the one they get). Ours cannot be shadowed by it: all of our
    # code lives under the one name `hpsearch`, imported before any objective.
    folder = os.path.dirname(path)
    _refuse_shadowing(folder, path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]  # a fixed file can be imported again
        raise
    return module


def load_objective(ref: str) -> Objective:
    """The callable behind a canonical reference (a built-in name, ``module:function``, or a
    command study's ``command:...``)."""
    if ref.startswith("command:"):
        from hpsearch.objectives.command import CommandObjective

        return CommandObjective.load(ref)
    builtin = BUILTIN_OBJECTIVES.get(ref)
    target = builtin.target if builtin else ref
    module_part, _, function = target.rpartition(":")
    try:
        if module_part.endswith(".py"):
            module = _import_file(module_part)
        else:
            module = importlib.import_module(module_part)
    except ObjectiveError:
        raise
    except Exception as err:  # any error raised while importing user code
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ObjectiveError(
            f"Cannot import objective {ref!r}: {type(err).__name__}: {first}; fix the module or "
            "the [study].objective entry (PYTHONPATH must reach a 'module:function' objective)."
        ) from None
    fn = getattr(module, function, None)
    if fn is None or not callable(fn):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ObjectiveError(
            f"Objective {ref!r}: {module_part} has no function {function!r}."
            f"{did_you_mean(function, names)}"
        )
    return fn  # type: ignore[no-any-return]


# What a numeric built-in option accepts, checked when the study is created: a value outside
# would fail every trial and use the whole budget.
_LIMITS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "epochs": (">= 1", lambda v: v >= 1),
    "batch_size": (">= 1", lambda v: v >= 1),
    "micro_batch": (">= 0 (0: no cap)", lambda v: v >= 0),
    "lr": ("> 0", lambda v: v > 0),
    "momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    "l1": (">= 0", lambda v: v >= 0),
    "l2": (">= 0", lambda v: v >= 0),
    "warmup_epochs": (">= 0", lambda v: v >= 0),
    "step_size": (">= 1", lambda v: v >= 1),
    "gamma": ("in (0, 1]", lambda v: 0 < v <= 1),
    "plateau_patience": (">= 0", lambda v: v >= 0),
    "plateau_factor": ("in (0, 1)", lambda v: 0 < v < 1),
    "val_fraction": ("in (0, 1)", lambda v: 0 < v < 1),
    # torch seeds a generator with 64 bits.
    "seed": (f"in [0, {2**64 - 1}]", lambda v: 0 <= v < 2**64),
    "checkpoint_every": (">= 0 (0: per epoch only)", lambda v: v >= 0),
    "loader_workers": (">= 0", lambda v: v >= 0),
    "prune_amount": ("in [0, 1)", lambda v: 0 <= v < 1),
    "prune_structured": ("in [0, 1)", lambda v: 0 <= v < 1),
    "low_rank": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "finetune_epochs": (">= 0", lambda v: v >= 0),
    "width": ("> 0", lambda v: v > 0),
    "depth": (">= 1", lambda v: v >= 1),
    "dropout": ("in [0, 1)", lambda v: 0 <= v < 1),
}


# What `device` may name: torch.device accepts these (and a trial's rank picks its own GPU).
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")
_DEVICES_ALLOWED = "auto, cpu, cuda, cuda:N or mps"
# Rows in each built-in dataset's official train split, of which val_fraction validates.
DATASET_ROWS = {"digits": 1797, "mnist": 60000, "fashion-mnist": 60000, "cifar10": 50000}


def _check_value(key: str, value: Any, default: Any, where: str) -> None:
    """A value of the default's type (an int where a float is expected is fine) and range."""
    kind = type(default)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind in (int, float):
        # numbers.Real: a numpy scalar handed to fit is a number too.
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        ok = ok and (kind is float or float(value).is_integer())
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ObjectiveError(
            f"{where}: {key} = {value!r} must be a {kind.__name__}, like its default {default!r}."
        )
    limit = _LIMITS.get(key)
    if limit is not None and not limit[1](value):
        raise ObjectiveError(f"{where}: {key} = {value!r} is out of range; it must be {limit[0]}.")
    if key == "device" and not _DEVICE.match(value):
        raise ObjectiveError(
            f"{where}: device = {value!r} is not a device the engine trains on; use "
            f"{_DEVICES_ALLOWED}.{did_you_mean(value, ['auto', 'cpu', 'cuda', 'mps'])}"
        )


def _reads(ref: str) -> tuple[Mapping[str, Any], EngineUse | None] | None:
    """The options an objective reads with their defaults, and its declared use of the engine;
    None for a user objective that does not declare it (it reads what it likes)."""
    builtin = BUILTIN_OBJECTIVES.get(ref)
    if builtin is not None:
        return builtin.options, None
    use = engine_use(load_objective(ref))
    return (TRAINING, use) if use is not None else None


def check_options(ref: str, options: Mapping[str, Any], *, where: str) -> None:
    """Refuse options the objective does not read, values of the wrong type or outside their
    range, and values outside a closed set. A list is each value a search may take.

    A built-in reads a closed set; a user objective declared with ``@hpsearch.uses_engine``
    reads the engine's options and any name not close to one (or only the declared ones); an
    undeclared user objective reads what it likes.
    """
    read = _reads(ref)
    if read is None:
        return
    known, use = read
    builtin = ref in BUILTIN_OBJECTIVES
    for key, value in options.items():
        if builtin and key not in known:
            raise ObjectiveError(
                f"{where}: objective {ref!r} has no option {key!r}."
                f"{did_you_mean(key, list(known))} "
                f"Allowed: {', '.join(sorted(known))}."
            )
        problem = None if builtin else misnamed(key, use)
        if problem is not None:
            raise ObjectiveError(f"{where}: objective {ref!r}: {problem}")
        if key in known:  # else the objective's own option: its values are its business
            _check_values(key, value, known[key], where)


def _check_values(key: str, value: Any, default: Any, where: str) -> None:
    """One option's value, or each of a list's (the values a search may take)."""
    allowed = _CHOICES.get(key)
    for item in value if isinstance(value, list | tuple) else [value]:
        if allowed is not None and item not in allowed:
            raise ObjectiveError(
                f"{where}: {key} = {item!r} is not one of {', '.join(allowed)}."
                f"{did_you_mean(str(item), allowed)}"
            )
        if allowed is None:
            _check_value(key, item, default, where)


def check_engine_params(params: Mapping[str, Any], *, where: str) -> None:
    """``fit``'s check of a trial's params before it trains: no misspelt engine option (closed
    by the running objective's ``@hpsearch.uses_engine(options=...)``), no bad engine value."""
    use = running_use()
    for key, value in params.items():
        problem = misnamed(key, use)
        if problem is not None:
            raise ObjectiveError(f"{where}: {problem}")
        if key in TRAINING:
            _check_values(key, value, TRAINING[key], where)


def check_combinations(
    ref: str, fixed: Mapping[str, Any], searched: Mapping[str, list[Any]], *, where: str
) -> None:
    """Refuse option values that each pass alone and cannot work together in any trial.

    ``fixed``: ``[training]``; ``searched``: each searched option's possible values (a range's
    bounds, or its choices). ``where`` names the study file.
    """
    read = _reads(ref)
    if read is None:
        return
    known = read[0]

    def values(key: str) -> tuple[list[Any], str]:
        if key in searched:
            return list(searched[key]), f"{where} [space.{key}]"
        return [fixed.get(key, known.get(key))], f"{where} [training]"

    strategies, _ = values("strategy")
    l1, l1_where = values("l1")
    if "fsdp" in strategies and any(isinstance(v, int | float) and v > 0 for v in l1):
        raise ObjectiveError(
            f'{l1_where}: l1 = {max(l1)!r} cannot train with strategy = "fsdp": l1 needs whole '
            'weights and fsdp shards them; use l2, set l1 = 0, or strategy = "ddp".'
        )
    if "dataset" in known:
        _check_batch_fits(values)


def _check_batch_fits(values: Callable[[str], tuple[list[Any], str]]) -> None:
    """A built-in knows its data's size: a batch larger than its training rows trains no step."""
    datasets, _ = values("dataset")
    fractions, _ = values("val_fraction")
    rows = min(
        (
            DATASET_ROWS[str(name)] - max(1, round(DATASET_ROWS[str(name)] * float(fraction)))
            for name in datasets
            for fraction in fractions
            if name in DATASET_ROWS and isinstance(fraction, int | float)
        ),
        default=None,
    )
    if rows is None:
        return
    batches, where = values("batch_size")
    for batch in batches:
        if isinstance(batch, int | float) and batch > rows:
            raise ObjectiveError(
                f"{where}: batch_size = {batch!r} is larger than the {rows} training rows of "
                f"{', '.join(map(str, datasets))} (val_fraction {max(fractions)}): no step "
                f"could train; use a batch_size of at most {rows}."
            )
