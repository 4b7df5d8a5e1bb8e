"""A simulator of learning curves: a cheap objective for measuring searches and schedulers.

Name it in a study file as ``objective = "hpsearch.objectives.curves:learning_curve"`` (with
``direction = "minimize"``; it reports and returns a validation loss). It imports no torch and
trains nothing: each epoch it computes the next point of a curve whose shape its options set,

    loss(t) = floor + (1 - floor) * exp(-rate * t') + overfit * max(0, t' - onset) / 100

where ``t'`` is the epoch count past half the warm-up, and

- ``lr`` (> 0; search it on a log scale around 1e-4 .. 1) sets the ``rate``: a high lr starts
  fast, but above ``lr_max`` (higher with warm-up) it raises the ``floor`` (instability);
- ``width`` (> 0; e.g. 8 .. 1024) is capacity: a wide model has a lower ``floor`` and a slower
  ``rate``, and overfits late (``overfit`` grows with width) unless regularised;
- ``warmup_epochs`` (>= 0) delays the start, and lets a higher lr stay stable;
- ``l2`` (>= 0; e.g. 1e-6 .. 1e-1, log) shrinks the overfitting and raises the floor a little;
- ``noise`` (>= 0, default 1.0) scales the per-epoch noise (standard deviation 0.01 x noise);
- ``epochs`` (>= 1) is how many epochs the trial runs; ``seed`` (an int) picks the noise.

So curves cross: a narrow model with a high lr is best after a few epochs and plateaus high, a
wide one with a low lr and some l2 starts slowly and ends lower. The noise of an epoch comes from
an RNG keyed by the curve's options (``epochs`` excluded) and the epoch, so a run resumed from its
checkpoint, or a paused configuration trained longer, continues the very same curve.

Like the training engine it saves a checkpoint (a small JSON file at the trial's checkpoint path)
after each epoch and before reporting it, resumes from it when it is there (recording the
``resumed_from_epoch`` user attribute), and prunes when the pruner says so. It is declared with
``@uses_engine`` so that ``hpsearch create`` refuses misspelt option names (its options share the
engine's names where they mean the same: ``epochs``, ``lr``, ``warmup_epochs``, ``l2``,
``seed``); an engine option it does not read (``batch_size``) is refused when a trial starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpsearch import attrs
from hpsearch.files import replacing
from hpsearch.objectives._options import uses_engine
from hpsearch.objectives.context import current_context

log = logging.getLogger(__name__)

# Every option the simulator reads, with its default; the curve's shape is set by all but epochs.
DEFAULTS: dict[str, Any] = {
    "epochs": 50,
    "lr": 1e-2,
    "width": 64,
    "warmup_epochs": 0.0,
    "l2": 0.0,
    "noise": 1.0,
    "seed": 0,
}
OWN_OPTIONS = ("width", "noise")  # the ones that are not the engine's names too
_SHAPE = tuple(name for name in DEFAULTS if name != "epochs")
# What a resumed curve can change (population-based training explores them): the speed of its
# progress and its floor follow the new values from the epoch they apply.
LIVE = ("lr", "l2")
# Positive options (the others must be >= 0).
_POSITIVE = ("epochs", "lr", "width")


def curve_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """The simulator's options from a trial's params, checked: a name it does not read (an
    engine option such as ``batch_size``) or a value out of range raises ValueError."""
    unread = sorted(set(params) - set(DEFAULTS))
    if unread:
        raise ValueError(
            f"the learning-curve simulator does not read {', '.join(map(repr, unread))}; "
            f"remove it from the study file (it reads {', '.join(DEFAULTS)})"
        )
    options = {**DEFAULTS, **params}
    for name in DEFAULTS:
        value = options[name]
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"learning-curve option {name} = {value!r} must be a number")
        if value < 0 or (name in _POSITIVE and value <= 0):
            bound = "> 0" if name in _POSITIVE else ">= 0"
            raise ValueError(f"learning-curve option {name} = {value!r} must be {bound}")
    if not float(options["epochs"]).is_integer() or not float(options["seed"]).is_integer():
        raise ValueError("learning-curve options epochs and seed must be whole numbers")
    options["epochs"], options["seed"] = int(options["epochs"]), int(options["seed"])
    return options


def _elapsed(options: Mapping[str, Any], epoch: int) -> float:
    """Epochs of progress after ``epoch + 1`` epochs: the warm-up's first half does not count."""
    return max(0.0, epoch + 1 - float(options["warmup_epochs"]) / 2)


def _shape(options: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """The curve's (floor, rate, overfit, onset) under these options."""
    lr, width = float(options["lr"]), float(options["width"])
    warmup, l2 = float(options["warmup_epochs"]), float(options["l2"])
    capacity = min(1.0, max(0.0, math.log2(width / 8) / 7))  # 8 -> 0, 1024 -> 1
    # Above lr_max training is unstable: a higher floor. Warm-up makes a higher lr safe.
    lr_max = 0.03 * math.sqrt(1 + warmup)
    unstable = 0.08 * max(0.0, math.log10(lr / lr_max)) ** 2
    floor = 0.08 + 0.4 * (1 - capacity) ** 2 + 0.5 * l2 + unstable
    rate = min(2.0, 1.5 * (lr / 0.1) ** 0.6) / (1 + 2 * capacity)
    overfit = 0.2 * capacity**2 / (1 + 200 * l2)
    onset = 10 + 20 * (1 - capacity)
    return floor, rate, overfit, onset


def advance(options: Mapping[str, Any], epoch: int, progress: float) -> float:
    """The progress after ``epoch``, from the progress before it: the epoch's share of elapsed
    time at the rate its options give (options that change mid-run change the speed on)."""
    step = _elapsed(options, epoch) - _elapsed(options, epoch - 1)
    return progress + _shape(options)[1] * step


def clean_loss(options: Mapping[str, Any], epoch: int, progress: float | None = None) -> float:
    """The noise-free validation loss after ``epoch + 1`` epochs (the curve's shape);
    ``progress``: the progress so far when the options changed on the way (else they held from
    the start: ``rate * elapsed``)."""
    floor, rate, overfit, onset = _shape(options)
    t = _elapsed(options, epoch)
    if progress is None:
        progress = rate * t
    return floor + (1 - floor) * math.exp(-progress) + overfit * max(0.0, t - onset) / 100


def noisy_loss(options: Mapping[str, Any], epoch: int, progress: float | None = None) -> float:
    """The loss reported at ``epoch``: the clean curve plus noise drawn from an RNG keyed by the
    curve's options and the epoch (the same configuration always sees the same noise)."""
    key = json.dumps([[name, options[name]] for name in _SHAPE] + [epoch])
    rng = random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))
    noise = 0.01 * float(options["noise"]) * rng.gauss(0.0, 1.0)
    return clean_loss(options, epoch, progress) + noise


def _identity(options: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the curve, not how long it runs, nor the
    live options (compared on their own, see ``_restore``)."""
    return {name: options[name] for name in _SHAPE if name not in LIVE}


def _live(options: Mapping[str, Any]) -> dict[str, Any]:
    return {name: options[name] for name in LIVE}


@dataclass
class _Run:
    """A curve so far: what a checkpoint holds."""

    losses: list[float] = field(default_factory=list)
    progress: float = 0.0
    # [[first epoch, {live option: value}], ...]: the live options each stretch trained with.
    history: list[list[Any]] = field(default_factory=list)


def _restore(path: str | None, options: Mapping[str, Any], live: Sequence[str]) -> _Run:
    """The curve so far from the checkpoint, else a fresh one. ``live``: options that may
    differ from the checkpoint's (the run goes on with the new values)."""
    fresh = _Run(history=[[0, _live(options)]])
    if path is None or not os.path.isfile(path):
        return fresh
    try:
        with open(path) as handle:
            state = json.load(handle)
        run = _Run(
            [float(v) for v in state["losses"]], float(state["progress"]), list(state["history"])
        )
        saved_live = dict(state["live"])
        same = state["identity"] == _identity(options) and len(run.losses) == int(state["epoch"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("checkpoint %s is unreadable (%s); starting over", path, err)
        return fresh
    changed = {k: v for k, v in _live(options).items() if saved_live.get(k) != v}
    if not same or set(changed) - set(live):
        log.warning("checkpoint %s was made with another configuration; starting over", path)
        return fresh
    if changed:
        run.history.append([len(run.losses), _live(options)])
        log.info("resuming at epoch %d with %s", len(run.losses), changed)
    return run


def _save(path: str, options: Mapping[str, Any], run: _Run) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = {
        "epoch": len(run.losses),
        "losses": run.losses,
        "progress": run.progress,
        "history": run.history,
        "identity": _identity(options),
        "live": _live(options),
    }
    with replacing(path) as partial, open(partial, "w") as handle:
        json.dump(state, handle)


def _switched(options: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The options with a replayed schedule's live values from an epoch on."""
    unknown = sorted(set(values) - set(LIVE))
    if unknown:
        raise ValueError(
            f"the schedule changes {', '.join(map(repr, unknown))}, which the learning-curve "
            f"simulator cannot change mid-run (it can: {', '.join(LIVE)})"
        )
    return curve_options({**options, **values})


@uses_engine(options=OWN_OPTIONS)
def learning_curve(trial: Any, params: dict[str, Any]) -> float:
    """Run the simulated curve for ``epochs`` epochs; return the last epoch's validation loss."""
    options = curve_options(params)
    context = current_context()
    path = context.checkpoint
    run = _restore(path, options, context.live)
    start = len(run.losses)
    if start:
        trial.set_user_attr(attrs.RESUMED_FROM_EPOCH, start)
        if context.report_on_resume:
            # As the engine does: a kill may have come between the checkpoint and its report,
            # or between the report and the decision on it (a prune, a pause at an interval).
            _report(trial, run.losses[-1], start - 1)
    if context.live:
        trial.set_user_attr(attrs.PARAM_SCHEDULE, run.history)
    replay = dict(context.replay)
    epochs = int(options["epochs"])
    for epoch in range(start, epochs):
        if epoch in replay:  # `hpsearch train` of a population-based study's best
            options = _switched(options, replay[epoch])
            run.history.append([epoch, _live(options)])
        run.progress = advance(options, epoch, run.progress)
        run.losses.append(noisy_loss(options, epoch, run.progress))
        # Saved before the report, as the engine does: whatever is decided at this report
        # (prune, pause at a rung, a kill) finds this epoch's checkpoint to resume from.
        if path is not None:
            _save(path, options, run)
        _report(trial, run.losses[-1], epoch)
    return run.losses[epochs - 1]


def _report(trial: Any, loss: float, epoch: int) -> None:
    import optuna

    with warnings.catch_warnings():
        # A retry usually inherited the report it makes again; Optuna keeps it and warns.
        warnings.simplefilter("ignore")
        trial.report(loss, epoch)
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at epoch {epoch} with val_loss {loss:.4g}")
