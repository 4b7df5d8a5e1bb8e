"""Built-in ``digits-mlp``: an MLP on scikit-learn's digits, offline and fast on a CPU."""

from __future__ import annotations

from typing import Any

import optuna
import torch

from objectives._registry import BUILTIN_OBJECTIVES
from objectives.data import load_digits
from objectives.models import MLP
from objectives.trainer import NonFiniteLoss, TrainConfig, TrialLike, train_classifier


def digits_mlp(trial: TrialLike, params: dict[str, Any]) -> float:
    options = {**BUILTIN_OBJECTIVES["digits-mlp"].options, **params}
    torch.manual_seed(int(options["seed"]))
    device = torch.device(options["device"])
    data = load_digits(float(options["val_fraction"])).to(device)
    model = MLP(
        data.num_features,
        data.num_classes,
        width=int(options["width"]),
        depth=int(options["depth"]),
        activation_name=str(options["activation"]),
        dropout=float(options["dropout"]),
    ).to(device)
    cfg = TrainConfig(
        epochs=int(options["epochs"]),
        batch_size=int(options["batch_size"]),
        lr=float(options["lr"]),
        optimizer=str(options["optimizer"]),
        momentum=float(options["momentum"]),
        nesterov=bool(options["nesterov"]),
        l1=float(options["l1"]),
        l2=float(options["l2"]),
        seed=int(options["seed"]),
    )
    try:
        return train_classifier(trial, model, data, cfg)
    except NonFiniteLoss as err:
        trial.set_user_attr("nonfinite_loss", str(err))
        if options["on_nonfinite"] == "prune":
            raise optuna.TrialPruned(str(err)) from None
        raise
