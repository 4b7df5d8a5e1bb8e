"""Workers on every backend: the global budget is exact, failures stay inside their trial."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.attrs import SLOT
from hpsearch.search import budget_state, create_study, load_spec_file, load_study, start_workers
from hpsearch.search.runtime._budget import BATCH

from .conftest import hpsearch_command

# Every test runs real worker processes to a study's budget.
pytestmark = pytest.mark.slow


def _finished(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def assert_exact_budget(url: str, name: str, n_trials: int) -> None:
    trials = _finished(url, name)
    state = budget_state(trials, n_trials)
    assert state.used == n_trials, state
    assert state.running == 0 and state.waiting == 0, state
    assert len(trials) == n_trials, [t.state for t in trials]
    slots = sorted(t.system_attrs[SLOT] for t in trials)
    assert slots == list(range(n_trials)), "each budget slot ran exactly once"


# Each trial waits (up to a minute) until a second worker process has started a trial: with
# millisecond trials, the first worker up could otherwise run the whole budget alone while the
# others are still importing.
RENDEZVOUS = """
import os, time
from pathlib import Path

def rendezvous(trial, params):
    seen = Path(__file__).parent / "worker-pids"
    seen.mkdir(exist_ok=True)
    (seen / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(seen.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return (params["x"] - 2.0) ** 2
"""


def test_spawned_workers_reach_exact_budget(
    storage_url: str, write_study: Any, tmp_path: Path
) -> None:
    n_trials = BATCH + 6  # crosses a batch boundary: one worker must enqueue the next batch
    (tmp_path / "rendezvous.py").write_text(RENDEZVOUS)
    spec = load_spec_file(str(write_study(n_trials=n_trials, objective="rendezvous.py:rendezvous")))
    create_study(spec, storage_url)
    processes = start_workers(spec.name, storage_url, workers=3, timeout=None, log_trials=False)
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    assert_exact_budget(storage_url, spec.name, n_trials)
    trials = _finished(storage_url, spec.name)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) >= 2, "several workers took part"


def test_two_worker_commands_share_one_budget(
    storage_url: str, write_study: Any, tmp_path: Path
) -> None:
    """As on two nodes: two `hpsearch worker` commands started independently."""
    n_trials = 20
    path = write_study(n_trials=n_trials)
    assert (
        subprocess.run(
            [*hpsearch_command(), "create", str(path), "--storage", storage_url],
            check=False,
            capture_output=True,
            text=True,
        ).returncode
        == 0
    )
    name = load_spec_file(str(path)).name
    command = [
        *hpsearch_command(),
        "worker",
        "--study",
        name,
        "--storage",
        storage_url,
        "--workers",
        "2",
    ]
    nodes = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
        )
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert_exact_budget(storage_url, name, n_trials)
    assert "Traceback" not in "".join(out + err for out, err in outputs)


def test_failing_trials_are_recorded_and_the_worker_goes_on(
    storage_url: str, write_study: Any
) -> None:
    n_trials = 15
    spec = load_spec_file(str(write_study(n_trials=n_trials, objective="flaky.py:flaky")))
    create_study(spec, storage_url)
    processes = start_workers(spec.name, storage_url, workers=2, timeout=None, log_trials=True)
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0, 0]
    trials = _finished(storage_url, spec.name)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.number for t in failed) == [0, 3, 6, 9, 12]
    assert len(complete) == 10
    for trial in failed:
        assert (
            trial.user_attrs["error"] == "RuntimeError: this objective fails on every third trial"
        )
        assert "flaky.py" in trial.user_attrs["traceback"]
    assert_exact_budget(storage_url, spec.name, n_trials)  # failed trials use their slot


def test_pruned_trials_count_and_conditional_space(storage_url: str, write_study: Any) -> None:
    n_trials = 16
    path = write_study(
        n_trials=n_trials,
        pruner='name = "median"\noptions = { n_startup_trials = 2, n_warmup_steps = 0 }',
        extra_space="""
        [space.shape]
        type = "categorical"
        choices = ["smooth", "bumpy"]
        [space.y]
        type = "float"
        low = -5.0
        high = 5.0
        when = { shape = "bumpy" }
        """,
    )
    spec = load_spec_file(str(path))
    create_study(spec, storage_url)
    processes = start_workers(spec.name, storage_url, workers=2, timeout=None, log_trials=False)
    for process in processes:
        process.join(timeout=300)
    assert_exact_budget(storage_url, spec.name, n_trials)
    trials = _finished(storage_url, spec.name)
    for trial in trials:
        assert ("y" in trial.params) == (trial.params["shape"] == "bumpy")
    assert any(t.state == TrialState.PRUNED for t in trials)


def test_resume_after_timeout(storage_url: str, write_study: Any) -> None:
    """A worker stopped by its timeout leaves the rest of the queue for the next one."""
    n_trials = 10
    spec = load_spec_file(str(write_study(n_trials=n_trials, body="[training]\nsteps = 3\n")))
    create_study(spec, storage_url)
    loaded = load_study(spec.name, storage_url)
    assert budget_state(loaded.study.get_trials(), n_trials).waiting == min(n_trials, BATCH)
    processes = start_workers(spec.name, storage_url, workers=1, timeout=0.001, log_trials=False)
    for process in processes:
        process.join(timeout=120)
    state = budget_state(_finished(storage_url, spec.name), n_trials)
    assert state.used < n_trials and state.running == 0
    processes = start_workers(spec.name, storage_url, workers=2, timeout=None, log_trials=False)
    for process in processes:
        process.join(timeout=300)
    assert_exact_budget(storage_url, spec.name, n_trials)


def test_worker_warm_up_loads_what_the_first_trial_would(tmp_path: Path, write_study: Any) -> None:
    """A worker loads the built-in's dataset and torch's optimizer machinery before its first
    claim (in a fresh interpreter, as a spawned worker starts); a user's objective gets none."""
    script = (
        "import sys\n"
        "from hpsearch.objectives.data import load_digits\n"
        "from hpsearch.search import load_spec_file\n"
        "from hpsearch.search.runtime._preflight import warm_up\n"
        "warm_up(load_spec_file(sys.argv[1]))\n"
        "print('torch._dynamo' in sys.modules, load_digits.cache_info().currsize)\n"
    )
    root = Path(__file__).resolve().parent.parent
    builtin = subprocess.run(
        [sys.executable, "-c", script, str(root / "studies" / "digits.toml")],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert builtin.returncode == 0, builtin.stderr
    assert builtin.stdout.split() == ["True", "1"]
    custom = subprocess.run(
        [sys.executable, "-c", script, write_study(n_trials=1)],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert custom.returncode == 0, custom.stderr
    assert custom.stdout.split() == ["False", "0"]


IMPORTS = """
import sys

def imports(trial, params):
    trial.set_user_attr("heavy", sorted({"torch", "sklearn"} & set(sys.modules)))
    return (params["x"] - 2.0) ** 2
"""


def test_a_worker_imports_torch_only_if_its_objective_does(
    tmp_path: Path, write_study: Any
) -> None:
    """A user objective that never imports torch runs in workers that never import it (nor
    scikit-learn): seconds of start-up per worker, and memory, for nothing."""
    (tmp_path / "imports.py").write_text(IMPORTS)
    path = write_study(n_trials=3, objective="imports.py:imports")
    url = f"sqlite:///{tmp_path / 'imports.db'}"
    result = subprocess.run(
        [*hpsearch_command(), "run", str(path), "--storage", url, "--workers", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    trials = _finished(url, load_spec_file(str(path)).name)
    assert [t.user_attrs["heavy"] for t in trials] == [[], [], []]
