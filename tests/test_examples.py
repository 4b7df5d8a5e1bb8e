"""Each example in examples/ run end to end through the real CLI, on a smaller budget.

A test writes a reduced copy of the example's study file (fewer trials and epochs, the
objective named by its absolute path, data folders under tmp_path) and runs ``hpsearch run``
on a SQLite file in tmp_path, from tmp_path, so that checkpoints land there too.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna
import pytest
import tomli_w
import torch

from hpsearch import attrs

from .conftest import ROOT, hpsearch_command
from .test_datasets import write_cifar10

EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.slow


def example_module(path: Path) -> ModuleType:
    """Import an example's file by path, under a name of its own (never on sys.path)."""
    spec = importlib.util.spec_from_file_location(f"_example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module


def reduced_study(
    example: str, tmp_path: Path, *, n_trials: int, training: dict[str, Any], **space: Any
) -> Path:
    """A copy of ``examples/EXAMPLE/study.toml`` with a smaller budget, written to tmp_path.

    ``training`` overrides ``[training]`` entries; ``space`` replaces whole ``[space.NAME]``
    tables.
    """
    folder = EXAMPLES / example
    spec = tomllib.loads((folder / "study.toml").read_text())
    file, function = spec["study"]["objective"].split(":")
    spec["study"]["objective"] = f"{folder / file}:{function}"
    spec["budget"] = {"n_trials": n_trials}
    spec["training"].update(training)
    spec["space"].update(space)
    path = tmp_path / f"{example}.toml"
    path.write_text(tomli_w.dumps(spec))
    return path


def run_study(study_file: Path, tmp_path: Path, *, timeout: float = 300) -> optuna.Study:
    """``hpsearch run STUDY --storage sqlite:///tmp_path/x.db``; the finished study."""
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    env = {k: v for k, v in os.environ.items() if k != "HPSEARCH_STORAGE"}
    result = subprocess.run(
        [*hpsearch_command(), "run", str(study_file), "--storage", storage],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    name = tomllib.loads(study_file.read_text())["study"]["name"]
    return optuna.load_study(study_name=name, storage=storage)


def assert_exact_budget(study: optuna.Study, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    """Every slot of the budget ran to an end, none failed, and no more were added."""
    states = [t.state for t in study.trials]
    assert len(states) == n_trials, states
    assert all(
        s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states
    ), states
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete, "every trial was pruned"
    return complete


def test_charlm_corpus_is_the_generators_output() -> None:
    make_corpus = example_module(EXAMPLES / "charlm" / "make_corpus.py")
    shipped = (EXAMPLES / "charlm" / "corpus.txt").read_text(encoding="utf-8")
    assert shipped == make_corpus.generate()
    assert 250_000 < len(shipped) < 500_000


def test_charlm_beats_the_unigram_baseline(tmp_path: Path) -> None:
    charlm = example_module(EXAMPLES / "charlm" / "charlm.py")
    training = tomllib.loads((EXAMPLES / "charlm" / "study.toml").read_text())["training"]
    # exp of the cross-entropy of the training text's character frequencies on the validation
    # characters the model is scored on: what a model that ignores context gets.
    baseline = charlm.baseline(int(training["context"]))
    assert baseline == pytest.approx(22.49, abs=0.01)

    n_trials = 2
    study_file = reduced_study("charlm", tmp_path, n_trials=n_trials, training={"epochs": 2})
    study = run_study(study_file, tmp_path)
    complete = assert_exact_budget(study, n_trials)
    values = [t.value for t in complete]
    assert all(v is not None and math.isfinite(v) and v > 1.0 for v in values), values
    # Two epochs of 65k characters already learn spelling: clearly below the baseline.
    assert study.best_value < 0.6 * baseline, (study.best_value, baseline)
    # The engine's batch plan: batch_size windows per step, in micro-batches of at most 16.
    for trial in study.trials:
        plan = trial.user_attrs[attrs.BATCH]
        assert plan["effective"] == trial.params["batch_size"]
        assert plan["micro"] == min(16, trial.params["batch_size"])


def test_vision_trains_a_torchvision_model_on_cifar10_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_cifar10(data)  # 20 tiny images in the real python-pickle batch layout: 18 train
    n_trials = 2
    study_file = reduced_study(
        "vision",
        tmp_path,
        n_trials=n_trials,
        training={"epochs": 1, "data_dir": str(data), "device": "cpu", "micro_batch": 4},
        batch_size={"type": "categorical", "choices": [4, 8]},
    )
    study = run_study(study_file, tmp_path)
    complete = assert_exact_budget(study, n_trials)
    archs = tomllib.loads(study_file.read_text())["space"]["arch"]["choices"]
    for trial in complete:
        # Two validation images: the accuracy is a share of them, nothing more to expect.
        assert trial.value is not None and 0.0 <= trial.value <= 1.0
        assert trial.params["arch"] in archs
        assert trial.user_attrs[attrs.BATCH]["micro"] == 4  # 8 accumulates two micro-batches


def test_vision_every_searched_arch_classifies_32_pixel_images() -> None:
    vision = example_module(EXAMPLES / "vision" / "vision.py")
    spec = tomllib.loads((EXAMPLES / "vision" / "study.toml").read_text())
    for arch in spec["space"]["arch"]["choices"]:
        model = vision.build({**spec["training"], "arch": arch})
        model.train()  # batch norm on a batch of two, as in training
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10), arch
    resnet = vision.build({"arch": "resnet18", "small_stem": True})
    assert resnet.conv1.stride == (1, 1) and isinstance(resnet.maxpool, torch.nn.Identity)


def test_keras_mirrored_strategy_with_pruning_callback(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    n_trials = 2
    study_file = reduced_study(
        "keras",
        tmp_path,
        n_trials=n_trials,
        training={"epochs": 3},
        batch_size={"type": "categorical", "choices": [64, 128]},
    )
    study = run_study(study_file, tmp_path)
    complete = assert_exact_budget(study, n_trials)
    # The callback reported every epoch of every trial that ran to the end.
    for trial in complete:
        assert sorted(trial.intermediate_values) == [0, 1, 2]
        assert trial.value == trial.intermediate_values[2]
    assert study.best_value > 0.5  # ten classes: chance is 0.1
