"""Built-in objectives: a model trained on a dataset, compressed, and measured.

Each returns ``{val_accuracy, params, size_bytes, latency_ms}`` (see objectives/compression.py);
the study's metrics pick from it.

Each reads the suggested parameters merged over the study's fixed [training] options, falling
back to the defaults in the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optuna
import torch.nn.functional as F
from torch import nn

from hpsearch import attrs
from hpsearch.errors import NonFiniteLoss
from hpsearch.objectives._placement import distributed_rank
from hpsearch.objectives._registry import BUILTIN_OBJECTIVES
from hpsearch.objectives.compression import (
    CompressionRecipe,
    check_device,
    compress,
    compressed_accuracy,
    fixed_measurements,
)
from hpsearch.objectives.context import current_context
from hpsearch.objectives.data import TensorDataset
from hpsearch.objectives.datasets import load_dataset
from hpsearch.objectives.models import MLP, VGG
from hpsearch.objectives.reporting import report_fixed
from hpsearch.objectives.trainer import TrainConfig, TrialLike, accuracy, fit, trial_device

# The model each built-in trains ("mlp" or "vgg"), by objective name.
MODEL_KINDS = {"digits-mlp": "mlp", "mnist-mlp": "mlp", "fashion-mlp": "mlp", "cifar10-vgg": "vgg"}


def build_model(kind: str, data: TensorDataset, options: Mapping[str, Any]) -> nn.Module:
    if kind == "mlp":
        return MLP(
            data.num_features,
            data.num_classes,
            width=int(options["width"]),
            depth=int(options["depth"]),
            activation_name=str(options["activation"]),
            dropout=float(options["dropout"]),
        )
    return VGG(
        data.num_classes,
        in_channels=int(data.x_train.shape[1]),
        width=float(options["width"]),
        activation_name=str(options["activation"]),
        dropout=float(options["dropout"]),
        batch_norm=bool(options["batch_norm"]),
    )


def run_classification(
    trial: TrialLike, params: dict[str, Any], *, objective: str, model_kind: str
) -> dict[str, float | int]:
    """Train, compress as the options say, and return every measurement by name."""
    return train_builtin(trial, params, objective=objective, model_kind=model_kind)[0]


def train_builtin(
    trial: TrialLike, params: dict[str, Any], *, objective: str, model_kind: str | None = None
) -> tuple[dict[str, float | int], nn.Module]:
    """Like ``run_classification``, and hand back the trained (compressed) model too.

    ``hpsearch train`` uses it to save the model; ``model_kind`` defaults to the objective's.
    """
    model_kind = model_kind or MODEL_KINDS[objective]
    options = {**BUILTIN_OBJECTIVES[objective].options, **params}
    device = trial_device(str(options["device"]))
    recipe = CompressionRecipe.from_options(options)
    check_device(recipe, device)  # before training, not after
    data = load_dataset(
        str(options["dataset"]),
        str(options["data_dir"]),
        download=bool(options["download"]),
        val_fraction=float(options["val_fraction"]),
    ).to(device)
    context = current_context()
    trained = trial
    built: list[nn.Module] = []
    amp = TrainConfig.from_options(options).amp
    if context.prunes and len(context.metrics) > 1:
        # The Pareto pruner compares the size and latency the recipe fixes from the first epoch.
        untrained = build_model(model_kind, data, options).to(device)
        report_fixed(trial, fixed_measurements(untrained, data, recipe, amp=amp))
    if context.prunes and recipe != CompressionRecipe() and distributed_rank()[1] == 1:
        # Any pruner (or schedule) of a compression study compares the accuracy the model
        # would have compressed now, as the study's value is the compressed model's (on one
        # device: a DDP trial's ranks report the uncompressed accuracy).
        trained = _CompressedReports(
            trial, lambda: compressed_accuracy(built[-1], data, recipe, amp=amp)
        )

    def model(o: Mapping[str, Any]) -> nn.Module:
        built.append(build_model(model_kind, data, o))
        return built[-1]

    fitted = fit(
        trained,
        options,
        model=model,
        train=(data.x_train, data.y_train),
        val=(data.x_val, data.y_val),
        loss=F.cross_entropy,
        metrics={"val_accuracy": accuracy},
        # Outside a study (a direct call) the built-ins report their accuracy.
        metric=None if context.metrics else "val_accuracy",
    )
    try:
        model, measurements = compress(
            fitted.model, data, recipe, train_config=TrainConfig.from_options(options), trial=trial
        )
    except NonFiniteLoss as err:  # while fine-tuning the compressed model
        trial.set_user_attr(attrs.NONFINITE_LOSS, str(err))
        if options["on_nonfinite"] == "prune":
            raise optuna.TrialPruned(str(err)) from None
        raise
    return measurements, model


class _CompressedReports:
    """The trial as training sees it in a pruned compression study: each epoch reports the
    compressed model's accuracy (``probe()``) in place of the trained model's; the rest is the
    trial's. A prune names the value the pruner saw, not the trained model's."""

    def __init__(self, trial: TrialLike, probe: Callable[[], float]) -> None:
        self._trial = trial
        self._probe = probe
        self._reported: tuple[int, float] | None = None

    def report(self, value: float, step: int) -> None:
        self._reported = (step, self._probe())
        self._trial.report(self._reported[1], step)

    def should_prune(self) -> bool:
        if not self._trial.should_prune():
            return False
        if self._reported is None:
            return True
        import optuna

        step, value = self._reported
        raise optuna.TrialPruned(
            f"pruned at epoch {step} with accuracy {value:.4g} compressed as the recipe says"
        )

    def set_user_attr(self, key: str, value: Any) -> None:
        self._trial.set_user_attr(key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)  # number, rank, ...


def digits_mlp(trial: TrialLike, params: dict[str, Any]) -> dict[str, float | int]:
    return run_classification(trial, params, objective="digits-mlp", model_kind="mlp")


def mnist_mlp(trial: TrialLike, params: dict[str, Any]) -> dict[str, float | int]:
    return run_classification(trial, params, objective="mnist-mlp", model_kind="mlp")


def fashion_mlp(trial: TrialLike, params: dict[str, Any]) -> dict[str, float | int]:
    return run_classification(trial, params, objective="fashion-mlp", model_kind="mlp")


def cifar10_vgg(trial: TrialLike, params: dict[str, Any]) -> dict[str, float | int]:
    return run_classification(trial, params, objective="cifar10-vgg", model_kind="vgg")
