"""Pruning multi-objective studies: the Pareto pruner (search/spec/_pareto.py).

A trial is stopped only when a completed trial dominates its best case; each metric is compared
in its own direction. The synthetic objective below has one trained metric (its curve rises
towards ``quality``) and one fixed metric (``size``, known before training); the same
parameters make the same trade-off in every combination of directions, so the same trials must
be pruned in each, and every pruned trial must really end dominated.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

from hpsearch import attrs
from hpsearch.errors import SpecError
from hpsearch.objectives.compression import CompressionRecipe, compress, fixed_measurements
from hpsearch.objectives.data import TensorDataset
from hpsearch.objectives.models import MLP
from hpsearch.objectives.trainer import TrainConfig
from hpsearch.search import load_spec_file
from hpsearch.search.spec._pareto import curve

from ._loops import _run_with_one_worker
from ._support import RecordingTrial

EPOCHS = 5
OBJECTIVE = f"""
import hpsearch

EPOCHS = {EPOCHS}


def progress(epoch):
    return 1.0 - 0.5 ** (epoch + 1)


def objective(trial, params):
    quality, size = params["quality"], params["size"]
    maximize_trained = params["trained"] == "maximize"
    maximize_fixed = params["fixed"] == "maximize"
    fixed = 11 - size if maximize_fixed else size  # a small size is good either way
    hpsearch.report_fixed(trial, {{"footprint": fixed}})
    for epoch in range(EPOCHS):
        score = quality * progress(epoch)
        hpsearch.report(trial, {{"score": score if maximize_trained else 1.0 - score}}, epoch)
    score = quality * progress(EPOCHS - 1)
    return {{"score": score if maximize_trained else 1.0 - score, "footprint": fixed}}
"""


def _study_file(folder: Path, trained: str, fixed: str, pruner: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "synthetic.py").write_text(OBJECTIVE)
    path = folder / "study.toml"
    path.write_text(
        f"""
[study]
name = "pareto-{trained}-{fixed}"
objective = "synthetic.py:objective"
metrics = ["score", "footprint"]
directions = ["{trained}", "{fixed}"]

[budget]
n_trials = 30

[sampler]
name = "random"
seed = 3

[pruner]
{pruner}

[training]
trained = "{trained}"
fixed = "{fixed}"

[space.quality]
type = "float"
low = 0.5
high = 1.0

[space.size]
type = "int"
low = 1
high = 10
"""
    )
    return path


def _run(path: Path, url: str) -> list[FrozenTrial]:
    # One worker: each trial is decided on the trials completed before it, in a fixed order.
    return _run_with_one_worker(path, url)


def _goodness(params: dict[str, Any]) -> tuple[float, float]:
    """What a trial would end with, each higher-is-better: its final quality and -size."""
    return params["quality"] * (1.0 - 0.5**EPOCHS), -float(params["size"])


PARETO = 'name = "pareto"\noptions = { tolerance = 0.0 }'


@pytest.mark.parametrize(
    ("trained", "fixed"),
    [
        ("maximize", "minimize"),
        ("minimize", "minimize"),
        ("maximize", "maximize"),
        ("minimize", "maximize"),
    ],
)
def test_a_trial_is_pruned_only_when_a_completed_trial_dominates_its_best_case(
    tmp_path: Path, trained: str, fixed: str
) -> None:
    trials = _run(_study_file(tmp_path, trained, fixed, PARETO), f"sqlite:///{tmp_path}/s.db")
    by_number = {t.number: t for t in trials}
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "nothing was pruned: the test proves nothing"
    assert len(pruned) < len(trials) - 5
    for trial in pruned:
        winner = by_number[trial.user_attrs[attrs.DOMINATED_BY]]
        assert winner.state == TrialState.COMPLETE
        assert winner.datetime_complete <= trial.datetime_complete
        # Dominated where it would have ended, had it trained on: in the right direction.
        ours, theirs = _goodness(trial.params), _goodness(winner.params)
        assert theirs[0] > ours[0] and theirs[1] >= ours[1], (trial.params, winner.params)
        assert 1 <= max(curve(trial)) < EPOCHS - 1  # after the warm-up step, before the end
    if (trained, fixed) != ("maximize", "minimize"):
        # Same parameters, same trade-off: the directions change nothing of what is pruned.
        assert sorted(t.number for t in pruned) == _reference_run(tmp_path / "reference")


def _reference_run(folder: Path) -> list[int]:
    trials = _run(_study_file(folder, "maximize", "minimize", PARETO), f"sqlite:///{folder}/s.db")
    return sorted(t.number for t in trials if t.state == TrialState.PRUNED)


def test_the_pruner_works_on_every_storage(storage_url: str, tmp_path: Path) -> None:
    trials = _run(_study_file(tmp_path / "s", "maximize", "minimize", PARETO), storage_url)
    pruned = sorted(t.number for t in trials if t.state == TrialState.PRUNED)
    assert pruned == _reference_run(tmp_path / "reference")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(len(curve(t)) == EPOCHS for t in complete)


def test_without_a_pruner_every_trial_trains_to_the_end(tmp_path: Path) -> None:
    trials = _run(
        _study_file(tmp_path, "maximize", "minimize", 'name = "none"'),
        f"sqlite:///{tmp_path}/s.db",
    )
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 30


def _spec_text(metrics: str, pruner: str, objective: str = "digits-mlp") -> str:
    return (
        f'[study]\nname = "s"\nobjective = "{objective}"\nmetrics = {metrics}\n'
        f"[budget]\nn_trials = 2\n[pruner]\n{pruner}\n"
    )


@pytest.mark.parametrize(
    ("metrics", "pruner", "message"),
    [
        ('["val_accuracy"]', 'name = "pareto"', '"pareto" prunes studies of several metrics'),
        (
            '["val_accuracy", "size_bytes"]',
            'name = "median"',
            "'median' is single-objective .* use name = \"pareto\"",
        ),
        (
            '["size_bytes", "val_accuracy"]',
            'name = "pareto"',
            '"pareto" needs the trained metric first',
        ),
        (
            '["val_accuracy", "size_bytes"]',
            'name = "pareto"\noptions = { margn = 0.1 }',
            "unknown option 'margn' for ParetoPruner. Did you mean 'margin'",
        ),
        (
            '["val_accuracy", "size_bytes"]',
            'name = "pareto"\noptions = { tolerance = 1.5 }',
            r"tolerance must be in \[0, 1\)",
        ),
    ],
)
def test_a_pruner_that_cannot_prune_the_study_is_refused(
    tmp_path: Path, metrics: str, pruner: str, message: str
) -> None:
    path = tmp_path / "s.toml"
    path.write_text(_spec_text(metrics, pruner))
    with pytest.raises(SpecError, match=message):
        load_spec_file(str(path))


def test_a_study_of_several_metrics_defaults_to_no_pruner(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(_spec_text('["val_accuracy", "size_bytes"]', "").replace("[pruner]\n", ""))
    assert load_spec_file(str(path)).pruner.name == "none"


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 12, generator=generator)
    y = (x[:, 0] > 0).long()
    return TensorDataset(x[:192], y[:192], x[192:], y[192:], num_classes=2)


@pytest.mark.parametrize(
    "recipe",
    [
        CompressionRecipe(prune_structured=0.5),
        CompressionRecipe(low_rank=0.25, quantize="dynamic-int8"),
        CompressionRecipe(prune_structured=0.25, prune_amount=0.6, finetune_epochs=1),
    ],
)
def test_the_fixed_metrics_measured_before_training_are_the_trained_models(
    recipe: CompressionRecipe,
) -> None:
    """The built-ins' estimate: the recipe fixes the size and the non-zero count, exactly but
    for magnitude pruning's spread of zeros over layers (which moves the size a little) and
    int8's rounding of small weights to zero (the count)."""
    data = _data()

    def model() -> MLP:
        torch.manual_seed(0)
        return MLP(12, 2, width=64, depth=2, activation_name="relu", dropout=0.0)

    before = fixed_measurements(model(), data, recipe)
    trained = model()
    config = dataclasses.replace(TrainConfig.from_options({}), epochs=2)
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.5)
    for _ in range(20):  # training moves the weights, so magnitude pruning picks others
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(trained(data.x_train), data.y_train).backward()
        optimizer.step()
    _, after = compress(trained, data, recipe, train_config=config, trial=RecordingTrial())
    if recipe.quantize == "none":
        assert before["params"] == after["params"]
    else:  # int8 rounds some small trained weights to zero
        assert abs(before["params"] / after["params"] - 1) <= 0.02
    if recipe.prune_amount == 0:
        assert before["size_bytes"] == after["size_bytes"]
    else:
        assert abs(before["size_bytes"] / after["size_bytes"] - 1) <= 0.1
