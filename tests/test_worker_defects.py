"""The worker's own reports: a repeated error told apart from per-trial numbers, a killed training
process named by its signal, a pruned trial's reason on its log line, and no Optuna
ExperimentalWarning for the experimental features hpsearch itself uses."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.search import create_study, load_spec_file

from .conftest import hpsearch_command


def _hpsearch(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*hpsearch_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def _states(url: str, name: str) -> list[TrialState]:
    return [t.state for t in optuna.load_study(study_name=name, storage=url).get_trials()]


SHAPE_ERROR = """
def shapes(trial, params):
    width = params["width"]
    # The same mistake in every trial, its message holding the searched width.
    raise RuntimeError(
        f"mat1 and mat2 shapes cannot be multiplied (64x{width} and {width + 1}x10)"
    )
"""


@pytest.mark.slow
def test_a_repeated_error_holding_per_trial_numbers_stops_the_worker(
    tmp_path: Path, write_study: Any, study_name: str
) -> None:
    (tmp_path / "shapes.py").write_text(SHAPE_ERROR)
    path = write_study(
        "[resources]\nmax_consecutive_failures = 3\n",
        n_trials=20,
        objective="shapes.py:shapes",
        extra_space='[space.width]\ntype = "int"\nlow = 8\nhigh = 512\n',
    )
    url = f"sqlite:///{tmp_path / 'shapes.db'}"
    result = _hpsearch(["run", str(path), "--storage", url, "--workers", "1"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "stopped after 3 trials in a row failed with the same error: RuntimeError: mat1" in (
        result.stderr
    )
    assert _states(url, study_name).count(TrialState.FAIL) == 3  # 17 slots still waiting


KILLS_ITSELF = """
import os
import signal

def killed(trial, params):
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
"""


@pytest.mark.slow
def test_a_training_process_killed_by_a_signal_is_named(
    tmp_path: Path, write_study: Any, study_name: str
) -> None:
    (tmp_path / "killed.py").write_text(KILLS_ITSELF)
    path = write_study(n_trials=1, objective="killed.py:killed")
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    create_study(load_spec_file(str(path)), url)
    result = _hpsearch(["worker", "--study", study_name, "--storage", url], tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    killed = [line for line in lines if "was killed by" in line]
    assert killed, result.stderr
    assert (
        "trial 0's training process (hpsearch-worker-0) was killed by SIGKILL (signal 9)"
        in (killed[0])
    )
    # The closing line's "its error is above" now points at something.
    assert lines[-1].startswith("hpsearch: error: a worker process exited with code 1")


@pytest.mark.slow
def test_a_trial_pruned_for_a_nan_loss_says_why_on_the_worker_line(tmp_path: Path) -> None:
    from .test_engine import NAN_OBJECTIVE, run_worker
    from .test_engine import write_study as write_engine_study

    (tmp_path / "nan_loss.py").write_text(NAN_OBJECTIVE)
    path = write_engine_study(tmp_path, "nan-loss", objective="nan_loss.py:objective")
    url = f"sqlite:///{tmp_path / 'nan.db'}"
    create_study(load_spec_file(str(path)), url)
    log = run_worker("nan-loss", url, tmp_path)
    (line,) = [line for line in log.splitlines() if "trial 0 pruned" in line]
    assert "pruned in " in line and ": loss became NaN or infinite by step 4 of epoch 0" in line


API_SCRIPT = """
import warnings

import optuna
import hpsearch

url = "sqlite:///api.db"
hpsearch.create("study.toml", storage=url)
hpsearch.run("study.toml", storage=url, workers=1)
hpsearch.worker({name!r}, storage=url, workers=1, progress=False)
hpsearch.load({name!r}, storage=url)
hpsearch.status({name!r}, storage=url)
hpsearch.export({name!r}, storage=url)
hpsearch.studies(storage=url)
warnings.warn("the user's own, in the script", optuna.exceptions.ExperimentalWarning)
"""

USER_OBJECTIVE = """
import warnings

import optuna


def objective(trial, params):
    warnings.warn("the user's own, in the objective", optuna.exceptions.ExperimentalWarning)
    return (params["x"] - 2.0) ** 2
"""


def test_the_python_api_shows_only_the_users_experimental_warnings(
    tmp_path: Path, write_study: Any, study_name: str
) -> None:
    (tmp_path / "user.py").write_text(USER_OBJECTIVE)
    write_study(n_trials=2, objective="user.py:objective")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(API_SCRIPT.format(name=study_name))],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "ExperimentalWarning" in line]
    assert warned, result.stderr
    assert all("the user's own" in line for line in warned), result.stderr
    assert any("in the script" in line for line in warned), result.stderr
    assert any("in the objective" in line for line in warned), result.stderr


BARE_PRUNE = """
import optuna


def bare(trial, params):
    for step in range(3):
        trial.report(params["x"] ** 2, step)
    raise optuna.TrialPruned()  # as a hand-written loop does when should_prune() says so
"""


@pytest.mark.slow
def test_a_bare_prune_names_the_last_step_on_the_worker_line(
    tmp_path: Path, write_study: Any, study_name: str
) -> None:
    (tmp_path / "bare.py").write_text(BARE_PRUNE)
    path = write_study(n_trials=1, objective="bare.py:bare")
    url = f"sqlite:///{tmp_path / 'bare.db'}"
    create_study(load_spec_file(str(path)), url)
    result = _hpsearch(["worker", "--study", study_name, "--storage", url], tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "trial 0 pruned" in line]
    assert line.endswith(": by the pruner at step 2"), line
