"""The digits objective and its trainer, run without a study."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
import torch

from hpsearch.objectives import (
    BUILTIN_OBJECTIVES,
    ObjectiveError,
    load_objective,
    resolve_objective,
)
from hpsearch.objectives.builtin import digits_mlp
from hpsearch.objectives.data import load_digits
from hpsearch.objectives.models import MLP
from hpsearch.objectives.trainer import TrainConfig, l1_penalty

from ._support import RecordingTrial


def test_digits_is_offline_and_split_once() -> None:
    data = load_digits(0.2)
    assert data.x_train.shape[1] == 64 and data.num_classes == 10
    assert len(data.x_val) == 359 and len(data.x_train) == 1797 - 359
    assert float(data.x_train.max()) <= 1.0
    assert load_digits(0.2) is data  # cached: trials in one worker share the tensors


def test_digits_mlp_learns_and_reports_every_epoch() -> None:
    trial = RecordingTrial()
    accuracy = digits_mlp(trial, {"epochs": 4, "lr": 0.01, "width": 64, "depth": 1})["val_accuracy"]
    assert [step for step, _ in trial.reports] == [0, 1, 2, 3]
    assert accuracy == trial.reports[-1][1]
    assert accuracy > 0.9


def test_digits_mlp_is_repeatable_with_a_seed() -> None:
    params = {"epochs": 2, "lr": 0.01, "dropout": 0.2, "seed": 7}
    first, second = digits_mlp(RecordingTrial(), params), digits_mlp(RecordingTrial(), params)
    assert first["val_accuracy"] == second["val_accuracy"]  # latency_ms is a timing: it varies


def test_pruning_is_honoured() -> None:
    trial = RecordingTrial(prune_at=1)
    with pytest.raises(optuna.TrialPruned):
        digits_mlp(trial, {"epochs": 10})
    assert len(trial.reports) == 2


def test_nonfinite_loss_prunes_or_fails_as_configured() -> None:
    params = {"epochs": 3, "lr": 1e12, "optimizer": "sgd", "momentum": 0.0, "activation": "relu"}
    trial = RecordingTrial()
    with pytest.raises(optuna.TrialPruned, match="loss became"):
        digits_mlp(trial, params)
    assert "loss became" in trial.user_attrs["nonfinite_loss"]
    with pytest.raises(RuntimeError, match="loss became"):
        digits_mlp(RecordingTrial(), {**params, "on_nonfinite": "fail"})


def test_l1_penalises_weights_not_biases() -> None:
    model = MLP(4, 2, width=3, depth=1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(1.0 if parameter.ndim > 1 else 100.0)
    assert float(l1_penalty(model).detach()) == 4 * 3 + 3 * 2


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "gelu", "silu", "elu", "tanh", "sigmoid"])
def test_every_activation_builds(name: str) -> None:
    model = MLP(64, 10, width=8, depth=2, activation_name=name)
    assert model(torch.zeros(2, 64)).shape == (2, 10)


def test_invalid_training_values_are_clear() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(epochs=1, batch_size=0, lr=0.1)


def test_registry_and_user_objectives(tmp_path: Any) -> None:
    assert resolve_objective("digits-mlp", base_dir=".") == "digits-mlp"
    assert load_objective("digits-mlp") is digits_mlp
    assert set(BUILTIN_OBJECTIVES["digits-mlp"].options) >= {
        "lr",
        "l1",
        "l2",
        "activation",
        "batch_size",
    }
    (tmp_path / "mine.py").write_text("def fn(trial, params):\n    return 1.0\n")
    ref = resolve_objective("mine.py:fn", base_dir=str(tmp_path))
    assert load_objective(ref)(None, {}) == 1.0
    with pytest.raises(ObjectiveError, match="has no function 'nf'"):
        resolve_objective("mine.py:nf", base_dir=str(tmp_path))


def test_registry_names_the_datasets_the_loader_knows() -> None:
    # The registry stays importable without torch, so it keeps its own copy of the names.
    from hpsearch.objectives._registry import DATASETS
    from hpsearch.objectives.datasets import DATASETS as LOADABLE

    assert DATASETS == LOADABLE
    for objective in BUILTIN_OBJECTIVES.values():
        assert objective.options["dataset"] in LOADABLE
