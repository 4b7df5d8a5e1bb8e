"""Export -> `hpsearch train` reproduces the trial's metric exactly on CPU, and saves the model."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from hpsearch.search.cli import main

from ._support import study_toml
from .conftest import hpsearch_command

DIGITS_STUDY = study_toml(
    name="digits-retrain",
    objective="digits-mlp",
    n_trials=3,
    direction=None,
    sampler={"name": "random", "seed": 7},
    resources={"workers": 1},
    training={"epochs": 3, "device": "cpu", "seed": 11},
    space={
        "lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True},
        "width": {"type": "int", "low": 16, "high": 64},
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    },
)


def _train(config: Path, output: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*hpsearch_command(), "train", str(config), "--output", str(output)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.slow
def test_retraining_an_export_reproduces_the_trial_metric(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # checkpoints and exports stay in the test's folder
    url = f"sqlite:///{tmp_path / 'digits.db'}"
    (tmp_path / "digits.toml").write_text(DIGITS_STUDY)
    assert main(["run", "digits.toml", "--storage", url, "--workers", "1"]) == 0
    export = tmp_path / "best.yaml"
    assert main(["export", "--study", "digits-retrain", "--storage", url, "-o", str(export)]) == 0
    capsys.readouterr()
    best = optuna.load_study(study_name="digits-retrain", storage=url).best_trial

    result = _train(export, tmp_path / "model", tmp_path)
    assert result.returncode == 0, result.stderr
    # Progress per epoch, then the metric next to the trial's.
    for epoch in (1, 2, 3):
        assert f"epoch {epoch}/3 val_accuracy " in result.stderr
    assert f"val_accuracy {best.value!r} (trial {best.number}: {best.value!r}, equal)" in (
        result.stdout
    )

    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["metrics"] == {"val_accuracy": best.value}  # bit for bit
    assert config["options"]["seed"] == 11 and config["options"]["epochs"] == 3
    assert {k: config["options"][k] for k in best.params} == best.params
    assert config["batch"] == best.user_attrs["batch"]

    # The saved weights are the trained model: they score the same on the validation split.
    from hpsearch.objectives.builtin import build_model
    from hpsearch.objectives.datasets import load_dataset
    from hpsearch.objectives.trainer import evaluate

    options = config["options"]
    data = load_dataset(
        options["dataset"], options["data_dir"], val_fraction=options["val_fraction"]
    )
    model = build_model("mlp", data, options)
    model.load_state_dict(torch.load(tmp_path / "model" / "model.pt", weights_only=True))
    assert evaluate(model, data.x_val, data.y_val) == best.value


@pytest.mark.slow
def test_retraining_a_user_objective_without_the_engine_reports_only_the_metric(
    tmp_path: Path, write_study: Any, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    path = write_study(n_trials=4, body="[training]\nsteps = 3\n")
    assert main(["run", str(path), "--storage", url, "--workers", "1"]) == 0
    export = tmp_path / "best.json"
    assert main(["export", "--study", study_name, "--storage", url, "-o", str(export)]) == 0
    capsys.readouterr()
    best = optuna.load_study(study_name=study_name, storage=url).best_trial

    result = _train(export, tmp_path / "model", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "epoch 3 loss " in result.stderr  # the objective reported 3 steps; no epoch count
    assert f"loss {best.value!r} (trial {best.number}: {best.value!r}, equal)" in result.stdout
    assert "the objective saved no model" in result.stdout
    assert not (tmp_path / "model").exists()
    assert json.loads(export.read_text())["checkpoint"] is None  # it never wrote one


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("absent.yaml", None, "Cannot read exported file"),
        ("broken.yaml", "objective: [unclosed\n", "Cannot parse exported file"),
        ("broken.toml", "objective = \n", "Cannot parse exported file"),
        ("list.json", "[1, 2]\n", "holds a list, not a table of keys"),
        ("nokey.yaml", "objective: digits-mlp\nparams: {}\n", "has no 'training' key"),
        (
            "badtype.yaml",
            "objective: digits-mlp\nparams: 3\ntraining: {}\nmetric: val_accuracy\n",
            "'params' is a int",
        ),
        (
            "unknown.yaml",
            "objective: nosuch-objective\nparams: {}\ntraining: {}\nmetric: m\n",
            "Unknown objective 'nosuch-objective'",
        ),
    ],
)
def test_a_bad_export_file_is_one_line_and_exit_2(
    tmp_path: Path, name: str, text: str | None, expected: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(textwrap.dedent(text))
    result = _train(path, tmp_path / "model", tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("hpsearch: error: ") and result.stderr.count("\n") == 1
    assert expected in result.stderr, result.stderr
    assert not (tmp_path / "model").exists()


@pytest.mark.slow
def test_retraining_a_compressed_export_saves_the_compressed_model(tmp_path: Path) -> None:
    """The export's compression recipe is reproduced: pruned and int8 layers, saved as measured."""
    export = tmp_path / "compressed.json"
    export.write_text(
        json.dumps(
            {
                "study": "by-hand",
                "objective": "digits-mlp",
                "metric": "val_accuracy",
                "value": 0.0,
                "trial": 0,
                "params": {"lr": 0.01, "prune_amount": 0.5, "quantize": "dynamic-int8"},
                "training": {"epochs": 2, "width": 64, "device": "cpu", "seed": 3},
            }
        )
    )
    result = _train(export, tmp_path / "model", tmp_path)
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    blob = (tmp_path / "model" / "model.pt").read_bytes()
    assert len(blob) == config["measurements"]["size_bytes"]

    from hpsearch.objectives.compression import load_serialized
    from hpsearch.objectives.trainer import evaluate

    # The bytes load back into the compressed architecture and score what was measured.
    rebuilt, data = _compressed_architecture(config["options"])
    load_serialized(rebuilt, blob)
    assert evaluate(rebuilt, data.x_val, data.y_val) == config["measurements"]["val_accuracy"]


def _compressed_architecture(options: dict[str, object]) -> tuple[torch.nn.Module, object]:
    from hpsearch.objectives.builtin import build_model
    from hpsearch.objectives.datasets import load_dataset

    data = load_dataset("digits", val_fraction=float(options["val_fraction"]))  # type: ignore[arg-type]
    model = build_model("mlp", data, options)
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8), data


REGRESSION = Path(__file__).resolve().parent.parent / "examples" / "regression"


@pytest.mark.slow
def test_retraining_a_user_model_saves_it_and_reproduces_the_trial_metric(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The regression example trains through hpsearch.fit: its export names the checkpoint it
    wrote, and `hpsearch train` saves model.pt, which loads back into the example's model."""
    monkeypatch.chdir(tmp_path)
    study = (REGRESSION / "study.toml").read_text()
    study = study.replace("n_trials = 12", "n_trials = 2").replace("epochs = 8", "epochs = 2")
    study = study.replace(
        'objective = "regression.py:objective"',
        (f'objective = "{REGRESSION / "regression.py"}:objective"'),
    )
    (tmp_path / "study.toml").write_text(study)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert main(["run", "study.toml", "--storage", url, "--workers", "1"]) == 0
    export = tmp_path / "best.yaml"
    assert main(["export", "--study", "regression", "--storage", url, "-o", str(export)]) == 0
    capsys.readouterr()
    best = optuna.load_study(study_name="regression", storage=url).best_trial
    assert Path(best.user_attrs["checkpoint"]).is_file()

    result = _train(export, tmp_path / "model", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "epoch 2/2 mse " in result.stderr
    assert f"mse {best.value!r} (trial {best.number}: {best.value!r}, equal)" in result.stdout
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["metrics"] == {"mse": best.value}

    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "regression_example", REGRESSION / "regression.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model = example.build(best.params)
    model.load_state_dict(torch.load(tmp_path / "model" / "model.pt"))
    val = example.CsvRows(example.DATA, 1600)
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(model(val.x), val.y).item()
    assert mse == pytest.approx(best.value, rel=1e-5)
