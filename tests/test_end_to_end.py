"""The README's main command, exactly as a user runs it: the built-in study on embedded SQLite."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml

from .conftest import ROOT, hpsearch_command

# The README's command, run to the end.
pytestmark = pytest.mark.slow


def test_readme_run_on_the_embedded_default(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "studies", tmp_path / "studies")
    env = {k: v for k, v in os.environ.items() if k != "HPSEARCH_STORAGE"}
    result = subprocess.run(
        [*hpsearch_command(), "run", "studies/digits.toml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    # The summary ends with the best configuration, as YAML.
    best = yaml.safe_load(
        result.stdout.split("best configuration (`hpsearch export` writes it to a file):")[1]
    )
    assert best["study"] == "digits-mlp" and best["metric"] == "val_accuracy"
    assert best["value"] > 0.9
    study = optuna.load_study(
        study_name="digits-mlp", storage=f"sqlite:///{tmp_path / 'hpsearch.db'}"
    )
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == len(study.trials) == 30
    assert study.best_trial.number == best["trial"]

    # Running it again resumes the finished study: nothing more to do, same answer.
    again = subprocess.run(
        [*hpsearch_command(), "run", "studies/digits.toml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming study 'digits-mlp'" in again.stderr
    assert (
        len(
            optuna.load_study(
                study_name="digits-mlp", storage=f"sqlite:///{tmp_path / 'hpsearch.db'}"
            ).trials
        )
        == 30
    )
