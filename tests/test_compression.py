"""Compression steps on real trained models: what each promises, checked on the model itself."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from hpsearch.objectives.builtin import digits_mlp
from hpsearch.objectives.compression import (
    CompressionRecipe,
    check_device,
    count_nonzero_parameters,
    factorize_low_rank,
    load_serialized,
    make_pruning_permanent,
    prune_magnitude,
    prune_structured,
    quantize_dynamic_int8,
    serialize,
)
from hpsearch.objectives.data import load_digits
from hpsearch.objectives.models import MLP, VGG
from hpsearch.objectives.trainer import TrainConfig, evaluate, train_classifier

from ._support import RecordingTrial


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """A digits MLP trained to ~97% validation accuracy (a few seconds on a CPU)."""
    torch.manual_seed(0)
    model = MLP(64, 10, width=128, depth=2)
    train_classifier(
        RecordingTrial(), model, load_digits(0.2), TrainConfig(epochs=6, batch_size=32, lr=3e-3)
    )
    return model.eval()


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def _predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(x).argmax(dim=1)


@pytest.mark.parametrize("amount", [0.3, 0.8, 0.95])
def test_magnitude_pruning_reaches_the_requested_sparsity(
    trained: nn.Module, amount: float
) -> None:
    model = copy.deepcopy(trained)
    prune_magnitude(model, amount)
    make_pruning_permanent(model)
    weights = _weights(model)
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert zeros / total == pytest.approx(amount, abs=1 / total)
    # The masks are gone: a plain state_dict, and the zeros are counted out of the parameters.
    assert not any(key.endswith(("_orig", "_mask")) for key in model.state_dict())
    assert count_nonzero_parameters(model) == count_nonzero_parameters(trained) - zeros


def test_fine_tuning_keeps_the_pruned_weights_at_zero(trained: nn.Module) -> None:
    model = copy.deepcopy(trained)
    prune_magnitude(model, 0.9)
    masks = [m.weight_mask.clone() for m in model.modules() if hasattr(m, "weight_mask")]
    train_classifier(
        RecordingTrial(), model, load_digits(0.2), TrainConfig(epochs=2, batch_size=32, lr=1e-2)
    )
    make_pruning_permanent(model)
    for mask, weight in zip(masks, _weights(model), strict=True):
        assert bool((weight[mask == 0] == 0).all())
        assert bool((weight[mask == 1] != 0).any())  # the kept weights did train


def test_pruned_weights_are_smaller_on_disk_and_load_back(trained: nn.Module) -> None:
    model = copy.deepcopy(trained)
    prune_magnitude(model, 0.8)
    make_pruning_permanent(model)
    blob = serialize(model)
    assert len(blob) < 0.6 * len(serialize(trained))
    x = load_digits(0.2).x_val
    restored = load_serialized(MLP(64, 10, width=128, depth=2), blob)
    assert torch.equal(_predictions(restored, x), _predictions(model, x))


def test_quantized_model_agrees_with_the_float_model_and_is_smaller(trained: nn.Module) -> None:
    data = load_digits(0.2)
    quantized = quantize_dynamic_int8(copy.deepcopy(trained))
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())  # every Linear is int8
    agree = (_predictions(quantized, data.x_val) == _predictions(trained, data.x_val)).float()
    assert float(agree.mean()) >= 0.95
    assert (
        evaluate(quantized, data.x_val, data.y_val)
        >= evaluate(trained, data.x_val, data.y_val) - 0.02
    )
    assert len(serialize(quantized)) < 0.4 * len(serialize(trained))


def test_quantization_is_refused_off_the_cpu_before_training() -> None:
    recipe = CompressionRecipe(quantize="dynamic-int8")
    check_device(recipe, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"runs on CPU only.*set device = 'cpu'"):
        check_device(recipe, torch.device("cuda", 0))


def test_low_rank_keeps_shapes_and_reduces_parameters(trained: nn.Module) -> None:
    model = copy.deepcopy(trained)
    replaced = factorize_low_rank(model, 0.25)
    # Both hidden layers (64->128, 128->128) are replaced; the output layer stays whole.
    assert replaced == [{"in": 64, "out": 128, "rank": 16}, {"in": 128, "out": 128, "rank": 32}]
    for original, factored in zip(trained, model, strict=True):
        if isinstance(original, nn.Linear) and isinstance(factored, nn.Sequential):
            first, second = factored
            assert first.in_features == original.in_features
            assert second.out_features == original.out_features
            # Each layer alone: the two factors hold fewer parameters than the original.
            assert sum(p.numel() for p in factored.parameters()) < sum(
                p.numel() for p in original.parameters()
            )
    assert isinstance(model[-1], nn.Linear) and model[-1].weight.shape == (10, 128)
    x = load_digits(0.2).x_val
    assert model(x).shape == trained(x).shape
    assert count_nonzero_parameters(model) < count_nonzero_parameters(trained)


def test_full_rank_is_left_alone(trained: nn.Module) -> None:
    model = copy.deepcopy(trained)
    assert factorize_low_rank(model, 1.0) == []  # two factors of full rank would be larger
    assert [type(m) for m in model] == [type(m) for m in trained]


def test_low_rank_approximation_is_the_truncated_svd() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))
    weight = model[0].weight.detach().clone()
    factorize_low_rank(model, 0.5)
    first, second = model[0]
    product = second.weight.detach() @ first.weight.detach()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    best = u[:, :15] @ torch.diag(s[:15]) @ vh[:15]
    assert torch.allclose(product, best, atol=1e-5)


def test_structured_pruning_shrinks_hidden_layers(trained: nn.Module) -> None:
    model = copy.deepcopy(trained)
    assert prune_structured(model, 0.5) == [64, 64]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(64, 64), (64, 64), (10, 64)]
    assert [m.in_features for m in linears] == [64, 64, 64]
    x = load_digits(0.2).x_val
    assert model(x).shape == (len(x), 10)
    assert count_nonzero_parameters(model) < 0.45 * count_nonzero_parameters(trained)
    assert len(serialize(model)) < 0.5 * len(serialize(trained))


def test_structured_pruning_removes_conv_channels_with_their_batch_norm() -> None:
    torch.manual_seed(0)
    model = VGG(10, in_channels=3, width=0.125, layers=(64, "M", 128, "M")).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16]
    assert prune_structured(model, 0.5) == [4, 8]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [4, 8] and convs[1].in_channels == 4
    assert [n.num_features for n in norms] == [4, 8] and norms[0].running_mean.shape == (4,)
    assert model.classifier[-1].in_features == 8
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_builtin_objective_compresses_and_measures() -> None:
    trial = RecordingTrial()
    options = {"epochs": 3, "lr": 0.01, "width": 64, "depth": 1, "device": "cpu"}
    plain = digits_mlp(RecordingTrial(), options)
    measured = digits_mlp(
        trial,
        {
            **options,
            "prune_structured": 0.5,
            "prune_amount": 0.5,
            "quantize": "dynamic-int8",
            "finetune_epochs": 2,
        },
    )
    assert set(measured) == {"val_accuracy", "params", "size_bytes", "latency_ms"}
    assert measured["val_accuracy"] > 0.85
    assert measured["params"] < plain["params"] / 3
    assert measured["size_bytes"] < plain["size_bytes"] / 2
    assert measured["latency_ms"] > 0
    for key, value in measured.items():  # every measurement is on the trial
        assert trial.user_attrs[key] == value
    done = trial.user_attrs["compression"]
    assert done["hidden_sizes"] == [32] and done["sparsity"] == pytest.approx(0.5, abs=1e-3)
    # Fine-tuning's epochs continue the training's numbering (3, 4), after epochs 0..2.
    assert [step for step, _ in trial.reports] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prune_amount": 1.0}, r"prune_amount must be in \[0, 1\)"),
        ({"prune_structured": -0.1}, r"prune_structured must be in \[0, 1\)"),
        ({"low_rank": 1.5}, "low_rank must be 0"),
        ({"quantize": "int4"}, "quantize must be one of none, dynamic-int8"),
        ({"finetune_epochs": -1}, "finetune_epochs must be >= 0"),
    ],
)
def test_recipe_values_out_of_range_are_clear(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CompressionRecipe.from_options(options)
