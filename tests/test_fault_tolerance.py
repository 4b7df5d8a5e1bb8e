"""Workers that survive kill -9, SIGTERM, database restarts, and many workers at once.

Real worker processes on real PostgreSQL/MySQL/SQLite; the trials train the digits MLP long
enough (many short epochs) to be interrupted mid-way, and resume from their checkpoints.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from hpsearch.search import budget_state, create_study, load_spec_file, start_workers

from ._support import Relay, study_toml
from .conftest import hpsearch_command

# Every test here runs real workers for many seconds.
pytestmark = pytest.mark.slow

EPOCHS = 30


def long_study_toml(*, name: str, artifacts: str | Path, n_trials: int) -> str:
    """The digits MLP for many short epochs: long enough to be interrupted mid-trial."""
    return study_toml(
        name=name,
        objective="digits-mlp",
        n_trials=n_trials,
        direction=None,
        resources={"heartbeat_interval": 1, "grace_period": 3, "artifacts": str(artifacts)},
        training={"epochs": EPOCHS, "batch_size": 32, "width": 256, "device": "cpu"},
        space={"lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
    )


def _long_study(tmp_path: Path, url: str, name: str) -> str:
    path = tmp_path / "long.toml"
    path.write_text(long_study_toml(name=name, artifacts=tmp_path / "artifacts", n_trials=3))
    create_study(load_spec_file(str(path)), url)
    return name


def _trials(url: str, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _wait_for_running(
    url: str, name: str, pids: set[int], epochs: int, timeout: float = 180
) -> FrozenTrial:
    """A RUNNING trial of one of ``pids`` that has reported at least ``epochs`` epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for trial in _trials(url, name):
            if (
                trial.state == TrialState.RUNNING
                and trial.user_attrs.get("worker", {}).get("pid") in pids
                and len(trial.intermediate_values) >= epochs
            ):
                return trial
        time.sleep(0.2)
    raise AssertionError(f"no trial of {pids} reached epoch {epochs} in {timeout}s")


def _assert_resumed(
    url: str, name: str, victim: FrozenTrial, at_least: int, n_trials: int = 3
) -> None:
    trials = {t.number: t for t in _trials(url, name)}
    state = budget_state(trials.values(), n_trials)
    assert state.used == n_trials and state.running == 0 and state.waiting == 0, state
    assert trials[victim.number].state == TrialState.FAIL
    assert "error" not in trials[victim.number].user_attrs  # not the objective's fault: not counted
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, "the interrupted trial ran again exactly once"
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == victim.params
    assert retry.user_attrs["resumed_from_epoch"] >= at_least
    # The curve is whole: the values reported before the interruption were kept.
    assert sorted(retry.intermediate_values) == list(range(EPOCHS))


# PostgreSQL's run of this is tests/test_engine.py's, on a model of the user's own.
@pytest.mark.parametrize("storage_url", ["sqlite", "mysql"], indirect=True)
def test_kill_9_mid_trial_resumes_from_the_checkpoint(
    storage_url: str, tmp_path: Path, study_name: str
) -> None:
    name = _long_study(tmp_path, storage_url, study_name)
    victim_worker = start_workers(name, storage_url, workers=1, timeout=None, log_trials=True)[0]
    survivor = start_workers(name, storage_url, workers=1, timeout=None, log_trials=True)[0]
    assert victim_worker.pid is not None
    victim = _wait_for_running(storage_url, name, {victim_worker.pid}, epochs=4)
    os.kill(victim_worker.pid, signal.SIGKILL)
    victim_worker.join()
    survivor.join(timeout=600)
    assert survivor.exitcode == 0
    # Killed after >= 4 reported epochs: the checkpoint holds at least 3 of them.
    _assert_resumed(storage_url, name, victim, at_least=3)


def _children(pid: int) -> set[int]:
    """The worker processes ``pid`` started: its children but multiprocessing's resource
    tracker, which a spawning parent may start first (looking for the worker among a single
    child would then wait on the tracker)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                command = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"resource_tracker" not in command:
                found.add(int(entry))
    return found


def test_sigterm_hands_the_trial_back_and_exits_0(
    postgres_url: str, tmp_path: Path, study_name: str
) -> None:
    name = _long_study(tmp_path, postgres_url, study_name)
    command = [
        *hpsearch_command(),
        "worker",
        "--study",
        name,
        "--storage",
        postgres_url,
        "--workers",
        "1",
    ]
    stopped = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    other = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not _children(stopped.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    victim = _wait_for_running(postgres_url, name, _children(stopped.pid), epochs=3)
    sent = time.monotonic()
    stopped.send_signal(signal.SIGTERM)
    _, stopped_log = stopped.communicate(timeout=60)
    assert stopped.returncode == 0, stopped_log
    assert (
        time.monotonic() - sent < 35
    )  # within the bound (30 s for an objective that never yields)
    assert "SIGTERM: handing the running trial back" in stopped_log
    _, other_log = other.communicate(timeout=600)
    assert other.returncode == 0, other_log
    _assert_resumed(postgres_url, name, victim, at_least=2)


def quick_toml(*, name: str, objective: str, n_trials: int) -> str:
    return study_toml(name=name, objective=objective, n_trials=n_trials, training={"steps": 1})


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_four_workers_300_trials_exact_budget(
    backend: str, server_urls: dict[str, str], write_study: Any, tmp_path: Path, study_name: str
) -> None:
    """No deadlock, no 'already finished' error, exactly the budget (random sampler: the
    coordination is under test, not TPE's cost)."""
    url = server_urls[backend]
    write_study()  # writes quadratic.py beside the study file
    path = tmp_path / "quick.toml"
    path.write_text(quick_toml(name=study_name, objective="quadratic.py:quadratic", n_trials=300))
    result = subprocess.run(
        [*hpsearch_command(), "run", str(path), "--storage", url, "--workers", "4"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for marker in ("already finished", "Traceback", "Deadlock", "deadlock"):
        assert marker not in result.stderr
    trials = _trials(url, study_name)
    assert len(trials) == 300 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 4


SLOW_OBJECTIVE = """
import time

def slow(trial, params):
    time.sleep(0.3)
    trial.report(params["x"] ** 2, 0)
    return params["x"] ** 2
"""


def test_postgres_restart_while_workers_run(
    postgres_url: str, tmp_path: Path, study_name: str
) -> None:
    """The server goes away under running workers and comes back: they ride it out. The
    outage is a relay in front of the shared server, cut and restored (stopping the server
    itself would break every other session using it)."""
    (tmp_path / "slow.py").write_text(SLOW_OBJECTIVE)
    path = tmp_path / "slow.toml"
    path.write_text(quick_toml(name=study_name, objective="slow.py:slow", n_trials=40))
    assert (
        subprocess.run(
            [*hpsearch_command(), "create", str(path), "--storage", postgres_url],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    real = sqlalchemy.make_url(postgres_url)
    relay = Relay((real.host or "127.0.0.1", real.port or 5432))
    relayed = real.set(port=relay.port).render_as_string(hide_password=False)
    log_path = tmp_path / "workers.log"
    with log_path.open("w") as log_file:
        workers = subprocess.Popen(
            [
                *hpsearch_command(),
                "worker",
                "--study",
                study_name,
                "--storage",
                relayed,
                "--workers",
                "2",
            ],
            stderr=log_file,
            text=True,
            cwd=tmp_path,
        )
    deadline = time.monotonic() + 120
    before: dict[int, float] = {}
    while len(before) < 6 and time.monotonic() < deadline:
        time.sleep(0.5)
        before = {
            t.number: t.value
            for t in _trials(postgres_url, study_name)
            if t.state == TrialState.COMPLETE and t.value is not None
        }
    assert len(before) >= 6
    relay.cut()
    try:
        # Down until the workers have met the outage (a quick blip could fall between two
        # storage calls, and the pool's pre-ping would reconnect without one to ride out).
        deadline = time.monotonic() + 120
        while "unreachable" not in log_path.read_text():
            assert time.monotonic() < deadline and workers.poll() is None, log_path.read_text()
            time.sleep(0.2)
    finally:  # the database comes back whatever happens
        relay.restore()
    workers.wait(timeout=600)
    log = log_path.read_text()
    assert workers.returncode == 0, log[-3000:]
    assert "unreachable" in log and "reachable again" in log  # one line each way, then on
    after = {t.number: t for t in _trials(postgres_url, study_name)}
    for number, value in before.items():  # nothing completed before the outage was lost
        assert after[number].state == TrialState.COMPLETE and after[number].value == value
    state = budget_state(after.values(), 40)
    assert state.used == 40 and state.running == 0 and state.waiting == 0, (state, log[-3000:])
