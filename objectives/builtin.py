"""Built-in objectives: a model trained on a dataset, the validation accuracy returned.

Each reads the suggested parameters merged over the study's fixed [training] options, falling
back to the defaults in the registry.
"""

from __future__ import annotations

from typing import Any

import optuna
import torch
from torch import nn

from objectives._registry import BUILTIN_OBJECTIVES
from objectives.data import TensorDataset
from objectives.datasets import load_dataset
from objectives.models import MLP, VGG
from objectives.schedules import ScheduleConfig
from objectives.trainer import (
    NonFiniteLoss,
    TrainConfig,
    TrialLike,
    distributed_rank,
    train_classifier,
)


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
) -> float:
    options = {**BUILTIN_OBJECTIVES[objective].options, **params}
    device = _device(str(options["device"]))
    data = load_dataset(
        str(options["dataset"]),
        str(options["data_dir"]),
        download=bool(options["download"]),
        val_fraction=float(options["val_fraction"]),
    ).to(device)
    torch.manual_seed(int(options["seed"]))  # the same initial weights on every rank
    model = build_model(model_kind, data, options).to(device)
    try:
        return train_classifier(trial, model, data, train_config(options)).metric
    except NonFiniteLoss as err:
        trial.set_user_attr("nonfinite_loss", str(err))
        if options["on_nonfinite"] == "prune":
            raise optuna.TrialPruned(str(err)) from None
        raise


def digits_mlp(trial: TrialLike, params: dict[str, Any]) -> float:
    return run_classification(trial, params, objective="digits-mlp", model_kind="mlp")


def mnist_mlp(trial: TrialLike, params: dict[str, Any]) -> float:
    return run_classification(trial, params, objective="mnist-mlp", model_kind="mlp")


def fashion_mlp(trial: TrialLike, params: dict[str, Any]) -> float:
    return run_classification(trial, params, objective="fashion-mlp", model_kind="mlp")


def cifar10_vgg(trial: TrialLike, params: dict[str, Any]) -> float:
    return run_classification(trial, params, objective="cifar10-vgg", model_kind="vgg")
