"""Built-in objectives: a model trained on a dataset, compressed, and measured.

Each returns ``{val_accuracy, params, size_bytes, latency_ms}`` (see objectives/compression.py);
the study's metrics pick from it.

Each reads the suggested parameters merged over the study's fixed [training] options, falling
back to the defaults in the registry.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna
import torch
from torch import nn

from hpsearch import attrs
from hpsearch.errors import NonFiniteLoss
from hpsearch.objectives._registry import BUILTIN_OBJECTIVES
from hpsearch.objectives.compression import CompressionRecipe, check_device, compress
from hpsearch.objectives.data import TensorDataset
from hpsearch.objectives.datasets import load_dataset
from hpsearch.objectives.models import MLP, VGG
from hpsearch.objectives.schedules import ScheduleConfig
from hpsearch.objectives.trainer import (
    TrainConfig,
    TrialLike,
    distributed_rank,
    train_classifier,
)

# The model each built-in trains ("mlp" or "vgg"), by objective name.
MODEL_KINDS = {"digits-mlp": "mlp", "mnist-mlp": "mlp", "fashion-mlp": "mlp", "cifar10-vgg": "vgg"}


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    rank, world = distributed_rank()
    if device.type == "cuda" and device.index is None:
        # One device per rank; the launcher restricts CUDA_VISIBLE_DEVICES to the trial's GPUs.
        device = torch.device("cuda", rank % max(1, torch.cuda.device_count()))
    if device.type == "cuda" and world > 1:
        torch.cuda.set_device(device)
    return device


def train_config(options: dict[str, Any]) -> TrainConfig:
    micro = options["micro_batch"]
    return TrainConfig(
        epochs=int(options["epochs"]),
        batch_size=int(options["batch_size"]),
        lr=float(options["lr"]),
        optimizer=str(options["optimizer"]),
        momentum=float(options["momentum"]),
        nesterov=bool(options["nesterov"]),
        l1=float(options["l1"]),
        l2=float(options["l2"]),
        seed=int(options["seed"]),
        schedule=ScheduleConfig(
            name=str(options["schedule"]),
            warmup_epochs=float(options["warmup_epochs"]),
            step_size=int(options["step_size"]),
            gamma=float(options["gamma"]),
            plateau_patience=int(options["plateau_patience"]),
            plateau_factor=float(options["plateau_factor"]),
        ),
        micro_batch=None if micro in (None, 0) else int(micro),
        amp=str(options["amp"]),
        compile=bool(options["compile"]),
    )


def build_model(kind: str, data: TensorDataset, options: dict[str, Any]) -> nn.Module:
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
    device = _device(str(options["device"]))
    recipe = CompressionRecipe.from_options(options)
    check_device(recipe, device)  # before training, not after
    data = load_dataset(
        str(options["dataset"]),
        str(options["data_dir"]),
        download=bool(options["download"]),
        val_fraction=float(options["val_fraction"]),
    ).to(device)
    torch.manual_seed(int(options["seed"]))  # the same initial weights on every rank
    model = build_model(model_kind, data, options).to(device)
    try:
        # The worker names the trial's checkpoint file; a retried trial finds its predecessor's.
        checkpoint = getattr(trial, "user_attrs", {}).get(attrs.CHECKPOINT)
        cfg = dataclasses.replace(train_config(options), checkpoint=checkpoint)
        train_classifier(trial, model, data, cfg)
        model, measurements = compress(model, data, recipe, train_config=cfg, trial=trial)
        return measurements, model
    except NonFiniteLoss as err:
        trial.set_user_attr(attrs.NONFINITE_LOSS, str(err))
        if options["on_nonfinite"] == "prune":
            raise optuna.TrialPruned(str(err)) from None
        raise


def digits_mlp(trial: TrialLike, params: dict[str, Any]) -> dict[str, float | int]:
    return run_classification(trial, params, objective="digits-mlp", model_kind="mlp")


def mnist_mlp(trial: TrialLike, params: dict[str, Any]) -> dict[str, float | int]:
    return run_classification(trial, params, objective="mnist-mlp", model_kind="mlp")


def fashion_mlp(trial: TrialLike, params: dict[str, Any]) -> dict[str, float | int]:
    return run_classification(trial, params, objective="fashion-mlp", model_kind="mlp")


def cifar10_vgg(trial: TrialLike, params: dict[str, Any]) -> dict[str, float | int]:
    return run_classification(trial, params, objective="cifar10-vgg", model_kind="vgg")
