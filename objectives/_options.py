"""The training engine's options and their defaults, declared once and torch-free.

``hpsearch.fit`` reads these names from a trial's ``params`` (the study file's ``[training]``
merged under the suggested values); the built-ins read the same names, and the registry checks
a study file's values against the same defaults without importing torch.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from hpsearch.errors import did_you_mean

TRAINING: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 64,  # effective: samples per optimizer step over all of the trial's devices
    "micro_batch": 0,  # cap on samples per forward on one device (0: no cap)
    "lr": 1e-3,
    "optimizer": "adam",
    "momentum": 0.9,
    "nesterov": False,
    "l1": 0.0,
    "l2": 0.0,
    "schedule": "none",
    "warmup_epochs": 0.0,
    "step_size": 10,
    "gamma": 0.1,
    "plateau_patience": 2,
    "plateau_factor": 0.5,
    "amp": "auto",
    "compile": False,
    "device": "auto",
    "seed": 0,
    "on_nonfinite": "prune",
    "checkpoint_every": 0,  # also checkpoint every this many optimizer steps (0: per epoch only)
    "loader_workers": 0,  # DataLoader worker processes for a Dataset (0: load in the trainer)
    "strategy": "ddp",  # how a trial on several devices splits the model: "ddp" or "fsdp"
    "cpu_offload": False,  # fsdp: keep parameter shards and optimizer state in host memory
}

# How close (difflib's ratio) a name must be to an engine option to be taken for a misspelling of
# it: `epoch`, `batchsize`, `optimiser`, `n_epochs` are; a model's `width` or `depth` is not.
_CLOSE = 0.75
# The attribute `uses_engine` puts on an objective: what `create` reads to check its options.
ENGINE_ATTRIBUTE = "hpsearch_engine"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class EngineUse:
    """An objective's declaration that it trains through ``hpsearch.fit``.

    ``options``: the objective's own options beside the engine's; None leaves the set open
    (every name that is not close to an engine option is allowed).
    """

    options: frozenset[str] | None = None


# The declaration of the objective running now, for `fit` to read.
_running: ContextVar[EngineUse | None] = ContextVar("hpsearch_engine_use", default=None)


def running_use() -> EngineUse | None:
    return _running.get()


@overload
def uses_engine(fn: F, /) -> F: ...
@overload
def uses_engine(*, options: Iterable[str] | None = None) -> Callable[[F], F]: ...


def uses_engine(
    fn: F | None = None, /, *, options: Iterable[str] | None = None
) -> F | Callable[[F], F]:
    """Declare that an objective trains through ``hpsearch.fit``, and which own options it reads.

    ``hpsearch create`` then checks the study file's ``[training]`` and ``[space]`` names and
    values against the engine's options, as for a built-in; ``options`` (e.g. ``["width",
    "depth"]``) closes the set: every other name is refused. ``@hpsearch.uses_engine`` alone
    refuses only names close to an engine option (``epoch``, ``batchsize``).
    """
    own = None if options is None else frozenset(_own_names(options))
    use = EngineUse(own)

    def declare(function: F) -> F:
        @functools.wraps(function)
        def objective(*args: Any, **kwargs: Any) -> Any:
            token = _running.set(use)
            try:
                return function(*args, **kwargs)
            finally:
                _running.reset(token)

        setattr(objective, ENGINE_ATTRIBUTE, use)
        return objective  # type: ignore[return-value]

    return declare if fn is None else declare(fn)


def _own_names(options: Iterable[str]) -> list[str]:
    if isinstance(options, str):
        raise TypeError(
            f"uses_engine(options=...) takes a list of names, got the string {options!r}"
        )
    names = list(options)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"uses_engine(options=...) takes option names, got {name!r}")
        if name in TRAINING:
            raise ValueError(
                f"uses_engine(options=...): {name!r} is an engine option already; list only "
                "the objective's own options"
            )
    return names


def engine_use(objective: Any) -> EngineUse | None:
    """The declaration ``uses_engine`` put on an objective, or None."""
    use = getattr(objective, ENGINE_ATTRIBUTE, None)
    return use if isinstance(use, EngineUse) else None


def misnamed(name: str, use: EngineUse | None) -> str | None:
    """Why ``name`` cannot be an option of an objective that trains through the engine, or None.

    An engine option or a declared own option is fine; with declared own options nothing else
    is; without them, only a name close to an engine option (a misspelling the engine would
    otherwise ignore, training with the default) is refused.
    """
    if name in TRAINING or (use is not None and use.options is not None and name in use.options):
        return None
    if use is not None and use.options is not None:
        known = [*TRAINING, *use.options]
        return (
            f"{name!r} is neither an engine option nor one of the objective's own "
            f"({', '.join(sorted(use.options)) or 'none declared'}).{did_you_mean(name, known)} "
            "Fix the name, or add it to @hpsearch.uses_engine(options=[...])."
        )
    close = difflib.get_close_matches(name, list(TRAINING), n=1, cutoff=_CLOSE)
    if not close:
        return None
    return (
        f"{name!r} is not an engine option. Did you mean {close[0]!r}? The engine would ignore "
        f"it and train with {close[0]} = {TRAINING[close[0]]!r}. If it is the objective's own "
        f'option, declare it: @hpsearch.uses_engine(options=["{name}"]).'
    )


# The engine options a resumed run can change without rebuilding the model: the optimizer's
# learning rate, momentum and weight decay, and the loss's L1 weight (what PBT may explore).
LIVE_OPTIONS = ("lr", "momentum", "l1", "l2")
