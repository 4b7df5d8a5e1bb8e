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

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

from hpsearch import attrs
from hpsearch.errors import SpecError
from hpsearch.objectives.builtin import _CompressedReports
from hpsearch.objectives.compression import (
    CompressionRecipe,
    compress,
    compressed_accuracy,
    fixed_measurements,
)
from hpsearch.objectives.data import TensorDataset
from hpsearch.objectives.models import MLP
from hpsearch.objectives.trainer import TrainConfig
from hpsearch.search import load_spec_file
from hpsearch.search.spec._pareto import curve, hypervolume, hypervolume_gain

from ._loops import _run_with_one_worker
from ._support import RecordingTrial
from .conftest import ROOT

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
        (
            '["val_accuracy", "size_bytes"]',
            'name = "pareto"\noptions = { gain_quantile = 0.0 }',
            r"gain_quantile must be in \(0, 1\]",
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


def test_the_hypervolume_is_exact_on_shapes_whose_volume_is_known() -> None:
    # Two squares of side 0.5 and 1 overlapping in a 0.5 x 0.5 corner: 0.25 + 0.5 = 0.75.
    assert hypervolume([[0.0, 0.5], [0.5, 0.0]], [1.0, 1.0]) == pytest.approx(0.75)
    assert hypervolume([[0.0, 0.0, 0.0]], [1.0, 2.0, 3.0]) == pytest.approx(6.0)
    assert hypervolume([[2.0, 0.0]], [1.0, 1.0]) == 0.0  # outside the reference


def test_a_dominated_point_adds_nothing_and_an_extreme_one_counts() -> None:
    front = [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]
    assert hypervolume_gain(front, [0.6, 0.6]) == 0.0
    assert hypervolume_gain(front, [0.2, 0.2]) > 0.1
    # Far beyond the front's range in one objective, best in the other: on the front.
    assert hypervolume_gain(front, [-1.0, 50.0]) > 0.0


PARETO_MIN_GAIN = 'name = "pareto"\noptions = { tolerance = 0.0, min_gain = 0.05 }'


@pytest.mark.parametrize(("trained", "fixed"), [("maximize", "minimize"), ("minimize", "maximize")])
def test_min_gain_also_stops_a_trial_that_would_add_little_to_the_front(
    tmp_path: Path, trained: str, fixed: str
) -> None:
    trials = _run(
        _study_file(tmp_path, trained, fixed, PARETO_MIN_GAIN), f"sqlite:///{tmp_path}/s.db"
    )
    by_gain = [t for t in trials if attrs.HYPERVOLUME_GAIN in t.user_attrs]
    assert by_gain, "min_gain pruned nothing beyond domination: the test proves nothing"
    for trial in by_gain:
        assert trial.state == TrialState.PRUNED
        assert trial.user_attrs[attrs.HYPERVOLUME_GAIN] <= 0.05
    pruned = sorted(t.number for t in trials if t.state == TrialState.PRUNED)
    assert len(pruned) > len(_reference_run(tmp_path / "domination"))
    # What it costs: the front of what completed against the front of every trial trained on.
    unpruned = [_goodness(t.params) for t in trials]
    kept = [_goodness(t.params) for t in trials if t.state == TrialState.COMPLETE]
    assert _volume(kept, unpruned) >= 0.9 * _volume(unpruned, unpruned)
    if (trained, fixed) != ("maximize", "minimize"):
        reference = _run(
            _study_file(tmp_path / "reference", "maximize", "minimize", PARETO_MIN_GAIN),
            f"sqlite:///{tmp_path}/reference.db",
        )
        assert pruned == sorted(t.number for t in reference if t.state == TrialState.PRUNED)


def _volume(points: list[tuple[float, float]], every: list[tuple[float, float]]) -> float:
    """Hypervolume of higher-is-better ``points``, scaled over ``every``, reference 1.1."""
    low = [min(-p[i] for p in every) for i in range(2)]
    span = [max(-p[i] for p in every) - low[i] or 1.0 for i in range(2)]
    scaled = [[(-p[i] - low[i]) / span[i] for i in range(2)] for p in points]
    return hypervolume(scaled, [1.1, 1.1])


@pytest.mark.parametrize(
    ("metrics", "pruner"),
    [
        ('["val_accuracy", "size_bytes", "latency_ms"]', "pareto"),
        # One metric: the median pruner, like ASHA, ranks trials by the compressed accuracy.
        ('["val_accuracy"]', "median"),
    ],
)
def test_a_pruned_compression_study_reports_the_compressed_models_accuracy(
    tmp_path: Path, metrics: str, pruner: str
) -> None:
    """The built-in's reports in a pruned compression study are the accuracy of the model
    compressed at that epoch: a trial without fine-tuning ends with its last report."""
    text = (ROOT / "studies" / "digits-compress.toml").read_text()
    text = text.replace("n_trials = 60", "n_trials = 6").replace("epochs = 6", "epochs = 2")
    text = text.replace('["val_accuracy", "size_bytes", "latency_ms"]', metrics)
    text = text.replace('name = "none"                 # Optuna', f'name = "{pruner}"  # Optuna')
    head, _, tail = text.partition("[space.finetune_epochs]")
    text = head + tail.partition("[space.quantize]")[1] + tail.partition("[space.quantize]")[2]
    path = tmp_path / "compress.toml"
    path.write_text(text)
    trials = _run(path, f"sqlite:///{tmp_path}/s.db")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 5
    compressed = [t for t in complete if t.params["prune_structured"] > 0.2]
    assert compressed, "no trial compressed its model much: the test proves nothing"
    for trial in complete:
        reported = curve(trial) if pruner == "pareto" else trial.intermediate_values
        assert sorted(reported) == [0, 1]
        assert reported[1] == pytest.approx(trial.values[0], abs=1e-9)


def test_a_prune_on_a_compressed_report_names_the_compressed_accuracy() -> None:
    """The trained model's accuracy never reaches the pruner, nor the log line of a prune."""
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5)
    )
    trial = study.ask()
    reports = _CompressedReports(trial, lambda: 0.3125)
    reports.report(0.97, 0)
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {0: 0.3125}
    with pytest.raises(optuna.TrialPruned, match=r"epoch 0 with accuracy 0\.3125 compressed"):
        reports.should_prune()
    kept = _CompressedReports(study.ask(), lambda: 0.75)
    kept.report(0.97, 0)
    assert kept.should_prune() is False


def test_compressed_accuracy_is_the_compressed_models_and_leaves_the_model_alone() -> None:
    data = _data()
    torch.manual_seed(0)
    model = MLP(12, 2, width=64, depth=2, activation_name="relu", dropout=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = CompressionRecipe(prune_structured=0.5, low_rank=0.25, quantize="dynamic-int8")
    probed = compressed_accuracy(model, data, recipe)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    config = dataclasses.replace(TrainConfig.from_options({}), epochs=1)
    _, measured = compress(model, data, recipe, train_config=config, trial=RecordingTrial())
    assert probed == measured["val_accuracy"]
