"""`hpsearch export --weights FILE`: the best trial's trained weights from its kept checkpoint (a
plain file, a sharded folder, a loop's own state), loadable into the unsharded model, equal to
the weights that scored the trial's value; a clear line where there are none."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml

from hpsearch.search.cli import main

from ._support import write_study_file
from .conftest import ROOT

REGRESSION = ROOT / "examples" / "regression" / "regression.py"
OWN_LOOP = ROOT / "examples" / "own_loop" / "loop.py"


def _study(tmp_path: Path, objective: Path, training: dict[str, Any], **resources: Any) -> Path:
    return write_study_file(
        tmp_path / "study.toml",
        name="weights",
        objective=f"{objective}:objective",
        n_trials=2,
        metric="mse",
        sampler={"name": "random", "seed": 0},
        training={"epochs": 2, "batch_size": 64, "width": 24, **training},
        space={"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        resources={"artifacts": str(tmp_path / "artifacts"), **resources},
    )


def _export(tmp_path: Path, path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path / 'weights.db'}"
    assert main(["run", "-q", str(path), "--storage", url, "--workers", "1"]) == 0
    capsys.readouterr()
    weights = tmp_path / "out" / "best.pt"
    code = main(["export", "--study", "weights", "--storage", url, "--weights", str(weights)])
    out, err = capsys.readouterr()
    assert code == 0, err
    document: dict[str, Any] = yaml.safe_load(out)
    assert document["weights"] == str(weights)
    assert f"wrote trial {document['trial']}'s weights to {weights}" in err
    return document


def _validation_mse(model: torch.nn.Module) -> float:
    example = runpy.run_path(str(REGRESSION))
    val = example["CsvRows"](example["DATA"], 1600)
    with torch.no_grad():
        return float(F.mse_loss(model(val.x), val.y))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_exported_weights_score_the_best_trials_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], strategy: str
) -> None:
    """fit's checkpoint: a file (ddp), or a folder of shards (fsdp, gathered whole)."""
    training = {"depth": 1, "strategy": strategy, "device": "cpu"}
    document = _export(tmp_path, _study(tmp_path, REGRESSION, training), capsys)
    assert Path(document["checkpoint"]).is_dir() == (strategy == "fsdp")
    model = runpy.run_path(str(REGRESSION))["build"]({**document["training"]})
    model.load_state_dict(torch.load(document["weights"]))
    assert _validation_mse(model) == pytest.approx(document["value"], rel=1e-5)


def test_a_loops_own_state_gives_its_model_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _export(tmp_path, _study(tmp_path, OWN_LOOP, {}), capsys)
    width = document["training"]["width"]
    model = torch.nn.Sequential(
        torch.nn.Linear(10, width), torch.nn.SiLU(), torch.nn.Linear(width, 1)
    )
    model.load_state_dict(torch.load(document["weights"]))
    assert _validation_mse(model) == pytest.approx(document["value"], rel=1e-5)


def test_no_kept_checkpoint_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _study(tmp_path, REGRESSION, {"depth": 1}, keep_checkpoints="none")
    url = f"sqlite:///{tmp_path / 'weights.db'}"
    assert main(["run", "-q", str(path), "--storage", url, "--workers", "1"]) == 0
    capsys.readouterr()
    weights, document = tmp_path / "best.pt", tmp_path / "best.yaml"
    export = ["export", "--study", "weights", "--storage", url]
    code = main([*export, "--weights", str(weights), "-o", str(document)])
    err = capsys.readouterr().err
    assert code != 0
    assert "checkpoint is not there" in err and "hpsearch train" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not weights.exists() and not document.exists()


def test_a_lightning_trainers_checkpoint_gives_its_modules_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("lightning")
    model_file = ROOT / "examples" / "lightning" / "model.py"
    document = _export(tmp_path, _study(tmp_path, model_file, {}), capsys)
    example = runpy.run_path(str(model_file))
    module = example["Regression"](document["training"]["width"], 0.0)
    module.load_state_dict(torch.load(document["weights"]))
    assert _validation_mse(module) == pytest.approx(document["value"], rel=1e-5)


def test_a_trainers_checkpoint_folder_gives_the_models_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    transformers = pytest.importorskip("transformers")
    gpt2_file = ROOT / "examples" / "transformers" / "gpt2.py"
    path = write_study_file(
        tmp_path / "study.toml",
        name="weights",
        objective=f"{gpt2_file}:objective",
        n_trials=1,
        metric="loss",
        training={"epochs": 2, "batch_size": 16, "width": 32, "train_bytes": 4096},
        space={"lr": {"type": "categorical", "choices": [0.003]}},
        resources={"artifacts": str(tmp_path / "artifacts")},
    )
    document = _export(tmp_path, path, capsys)
    from safetensors.torch import load_file

    # The latest of the Trainer's checkpoints (the one its last evaluation scored), whole.
    (latest,) = Path(document["checkpoint"]).glob("checkpoint-*")
    assert latest.name == "checkpoint-8"  # 2 epochs of 4 steps
    saved, exported = load_file(latest / "model.safetensors"), torch.load(document["weights"])
    assert sorted(exported) == sorted(saved)
    assert all(torch.equal(exported[k], saved[k]) for k in saved)
    config = transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    missing = transformers.GPT2LMHeadModel(config).load_state_dict(exported, strict=False)
    assert missing.missing_keys == ["lm_head.weight"]  # tied to the token embedding
    assert missing.unexpected_keys == []
