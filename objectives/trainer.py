"""The training engine: ``fit`` trains any PyTorch model for one trial.

The user brings a model, training and validation data, a loss and metrics. The engine owns the
rest: the batch plan (the searched ``batch_size`` = micro-batch x accumulation x world size,
computed once and recorded on the trial), accumulation under ``no_sync``, L1/L2, the optimizer
and the schedule, AMP and compile, checkpoints and resume, out-of-memory fallback, NaN/inf
losses, and one ``trial.report``/``should_prune`` per evaluation of the study's metric.

One job per module: the options (``_train_config``), where ranks train (``_placement``), the
data paths (``_batches``), the loop with its checkpoints (``_loop``), and ``fit`` on top (here).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpsearch import attrs
from hpsearch.errors import NonFiniteLoss
from hpsearch.files import replacing
from hpsearch.objectives import sharding
from hpsearch.objectives._batches import Data
from hpsearch.objectives._loop import Loop, Loss, Metric, accuracy
from hpsearch.objectives._options import TRAINING
from hpsearch.objectives._placement import distributed_rank, evaluate, trial_device
from hpsearch.objectives._registry import check_engine_params
from hpsearch.objectives._train_config import (
    TrainConfig,
    TrainResult,
    TrialLike,
    l1_penalty,
    make_optimizer,
)
from hpsearch.objectives.batching import BatchPlan
from hpsearch.objectives.context import TrialContext, current_context, trial_context
from hpsearch.objectives.data import TensorDataset

__all__ = [
    "Fitted",
    "Metric",
    "TrainConfig",
    "TrainResult",
    "TrialLike",
    "accuracy",
    "distributed_rank",
    "evaluate",
    "fit",
    "l1_penalty",
    "make_optimizer",
    "train_classifier",
    "trial_device",
]

log = logging.getLogger(__name__)


class Fitted(dict[str, float]):
    """What ``fit`` returns: the last evaluation's metrics by name (an objective may return it
    as it is), with the trained model and what the engine decided on the way."""

    def __init__(
        self,
        metrics: Mapping[str, float],
        *,
        model: nn.Module,
        plan: BatchPlan,
        lr_history: list[float],
        oom_fallbacks: list[dict[str, int]],
    ) -> None:
        super().__init__(metrics)
        self.model, self.plan = model, plan
        self.lr_history, self.oom_fallbacks = lr_history, oom_fallbacks


def _as_metric(value: Metric | Callable[[Any, Any], torch.Tensor]) -> Metric:
    return value if isinstance(value, Metric) else Metric(value)


def _reported(metric: str | None, evaluated: list[str]) -> tuple[str | None, bool]:
    """The metric each evaluation reports to the pruner, and whether it is maximized.

    The study's (from the worker's context) unless ``metric`` names one; none when the study
    optimizes a measurement made after training (size, latency), unless it prunes: a pruner fed
    another quantity would prune the best trials, so that is refused.
    """
    context = current_context()
    directions = dict(zip(context.metrics, context.directions, strict=False))
    if metric is None and len(context.metrics) > 1 and not context.prunes:
        return None, False  # nothing prunes: the trial trains to the end
    # With several metrics only the Pareto pruner prunes; it reads the first, the trained one.
    name = metric or (context.metrics[0] if context.metrics else "val_loss")
    if name not in evaluated:
        if context.prunes:
            raise ValueError(
                f"the study's metric {name!r} is not one fit evaluates ({', '.join(evaluated)}), "
                "so its pruner would get nothing to compare; add it to fit's metrics, or set "
                '[pruner] name = "none"'
            )
        return None, False
    return name, directions.get(name, "minimize") == "maximize"


def fit(
    trial: TrialLike,
    params: Mapping[str, Any],
    *,
    model: nn.Module | Callable[[Mapping[str, Any]], nn.Module],
    train: Any,
    val: Any,
    loss: Loss,
    metrics: Mapping[str, Metric | Callable[[Any, Any], torch.Tensor]] | None = None,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    metric: str | None = None,
    blocks: sharding.Blocks | None = None,
) -> Fitted:
    """Train ``model`` for one trial; the last evaluation's metrics by name.

    ``params``: the objective's params (the study's ``[training]`` under the suggested values);
    the engine reads its options from them (``epochs``, ``batch_size``, ``lr``, ``optimizer``,
    ``l1``, ``l2``, ``schedule``, ``amp``, ... see ``objectives/_options.py``), refuses a name
    close to one of them (``epoch``) and a value it cannot train with, before training, and
    leaves the rest to the objective (closed by ``@hpsearch.uses_engine(options=[...])``).
    ``model``: a module, or a function of ``params`` that builds one (seeded with ``seed``, so
    every rank and a retrain build the same weights). ``train``/``val``: tensors ``(x, y)``, a
    Dataset of ``(input, target)`` or an IterableDataset. ``loss(outputs, targets)``: a scalar. ``metrics``: name -> ``fn(outputs, targets)`` (a batch mean) or a
    Metric; ``val_loss`` is always measured. ``optimizer``: a function of the model that
    builds your own (``l2`` is then yours to apply). ``metric``: what each evaluation reports
    to the pruner, by default the study's.

    A NaN or infinite loss prunes the trial with the reason (``on_nonfinite = "fail"`` fails
    it instead); the pruner's decision raises ``optuna.TrialPruned``.
    """
    import optuna

    # Before anything trains: a misspelt option (`epoch`) would otherwise train the default.
    check_engine_params(params, where="hpsearch.fit params")
    options = {**TRAINING, **params}
    device = trial_device(str(options["device"]))
    measured = {name: _as_metric(m) for name, m in (metrics or {}).items()}
    report, maximize = _reported(metric, ["val_loss", *measured])
    context = current_context()
    cfg = TrainConfig.from_options(options, maximize=maximize, checkpoint=context.checkpoint)
    trial.set_user_attr(attrs.SEED, cfg.seed)  # export reproduces the trial with it
    if cfg.strategy == "fsdp" and distributed_rank()[1] == 1:
        log.warning(
            "trial %s: strategy fsdp on one device: the model trains unsharded (fsdp shards "
            "across a trial's devices; set [resources] devices_per_trial > 1 to shard it)",
            getattr(trial, "number", "-"),
        )
    if not isinstance(model, nn.Module):
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and in a retrain
        model = model(params)
    module = model  # moved to the device by the loop (FSDP moves one shard at a time)
    loop = Loop(
        trial,
        module,
        Data(train, name="train", device=device, cfg=cfg),
        Data(val, name="val", device=device, cfg=cfg),
        cfg,
        loss=loss,
        metrics=measured,
        report=report,
        optimizer=optimizer,
        identity={"params": _plain(params)},
        blocks=blocks,
    )
    try:
        result = loop.run()
    except NonFiniteLoss as err:
        trial.set_user_attr(attrs.NONFINITE_LOSS, str(err))
        if options["on_nonfinite"] == "prune":
            raise optuna.TrialPruned(str(err)) from None
        raise
    if context.model_path:
        # A sharded model is gathered whole (every rank takes part); rank 0 saves it.
        weights = sharding.full_state_dict(module) if loop.sharded else module.state_dict()
        if loop.rank == 0:
            os.makedirs(os.path.dirname(os.path.abspath(context.model_path)), exist_ok=True)
            with replacing(context.model_path) as partial:
                torch.save(weights, partial)
    return Fitted(
        result.metrics,
        model=module,
        plan=result.plan,
        lr_history=result.lr_history,
        oom_fallbacks=result.oom_fallbacks,
    )


def _plain(params: Mapping[str, Any]) -> dict[str, Any]:
    """The params a checkpoint must match, as comparable plain values."""
    return {
        k: v for k, v in sorted(params.items()) if isinstance(v, str | int | float | bool | None)
    }


def train_classifier(
    trial: TrialLike, model: nn.Module, data: TensorDataset, cfg: TrainConfig
) -> TrainResult:
    """``fit`` of a classifier on preloaded tensors with cross-entropy, from a ``TrainConfig``
    (benchmarks and tests hold one): the validation accuracy is reported every epoch."""
    options = {**cfg.as_options(), "device": str(data.x_train.device)}
    context = TrialContext(
        checkpoint=cfg.checkpoint,
        metrics=("val_accuracy",),
        directions=("maximize" if cfg.maximize else "minimize",),
    )
    with trial_context(context):
        fitted = fit(
            trial,
            options,
            model=model,
            train=(data.x_train, data.y_train),
            val=(data.x_val, data.y_val),
            loss=F.cross_entropy,
            metrics={"val_accuracy": accuracy},
        )
    return TrainResult(
        metric=fitted["val_accuracy"],
        plan=fitted.plan,
        lr_history=fitted.lr_history,
        oom_fallbacks=fitted.oom_fallbacks,
        metrics=dict(fitted),
    )
