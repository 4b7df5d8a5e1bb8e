"""Trial groups across nodes when things go wrong: a node 0 that is not there, not this
machine, killed and restarted; a follower stopped for longer than the group waits; two workers
given one node rank. Real `hpsearch worker` commands on 127.0.0.1, torch's TCPStore and gloo,
with a small [resources] dist_timeout so that every wait is short."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.search.runtime._budget import budget_state

from ._support import node_worker_args, study_toml
from .conftest import free_port, hpsearch_command

REGRESSION = Path(__file__).resolve().parent.parent / "examples" / "regression" / "regression.py"
DIST_TIMEOUT = 8


class Node:
    """One `hpsearch worker` command of the group, its stderr read as it comes."""

    def __init__(self, study: str, url: str, rank: int, rendezvous: str, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [*hpsearch_command(), *node_worker_args(study, url, rank, rendezvous)],
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            start_new_session=True,  # its own process group: stopped and killed as a node
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def signal(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait()


def _error_lines(log: str) -> list[str]:
    """What a failed worker command says, less the node's progress line and the command's
    closing "a worker process exited with code 2; its error is above"."""
    return [
        line
        for line in log.strip().splitlines()
        if not re.match(r"\[[^]]*\] \d+/\d+ trials", line)
        and not line.startswith("hpsearch: error: a worker process exited")
    ]


def _until(condition: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _create(tmp_path: Path, name: str, epochs: int) -> tuple[str, str]:
    path = tmp_path / "nodes.toml"
    path.write_text(
        study_toml(
            name=name,
            objective=f"{REGRESSION}:objective",
            metric="mse",
            n_trials=2,
            sampler={"name": "random", "seed": 5},
            resources={
                "nodes_per_trial": 2,
                "dist_timeout": DIST_TIMEOUT,
                "heartbeat_interval": 1,
                "grace_period": 4,
            },
            training={"epochs": epochs, "batch_size": 200, "depth": 2, "width": 32},
            space={"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        )
    )
    url = f"sqlite:///{tmp_path / 'nodes.db'}"
    created = subprocess.run(
        [*hpsearch_command(), "create", str(path), "--storage", url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    return name, url


@pytest.fixture
def study(tmp_path: Path, study_name: str) -> tuple[str, str]:
    return _create(tmp_path, study_name, epochs=4)


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        node.kill()


def _trials(study: tuple[str, str]) -> list[optuna.trial.FrozenTrial]:
    name, url = study
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _mid_trial(study: tuple[str, str]) -> bool:
    return any(t.state == TrialState.RUNNING and t.intermediate_values for t in _trials(study))


def _assert_study_done(study: tuple[str, str]) -> None:
    state = budget_state(_trials(study), 2)
    assert state.used == 2 and state.complete == 2 and state.running == state.waiting == 0, state


@pytest.mark.slow
def test_a_follower_without_node_0_says_so_in_one_line(
    study: tuple[str, str], tmp_path: Path, nodes: list[Node]
) -> None:
    rendezvous = f"127.0.0.1:{free_port()}"  # nobody listens there
    nodes.append(follower := Node(*study, 1, rendezvous, tmp_path))
    assert follower.wait(timeout=120) == 2, follower.log
    lines = _error_lines(follower.log)
    assert len(lines) == 1, follower.log
    assert f"cannot reach the trial group's node 0 at {rendezvous}" in lines[0]
    assert f"within {DIST_TIMEOUT}s" in lines[0]


@pytest.mark.slow
def test_a_leader_given_another_machines_address_says_so_in_one_line(
    study: tuple[str, str], tmp_path: Path, nodes: list[Node]
) -> None:
    # 192.0.2.0/24 is TEST-NET-1: documentation only, never this machine's.
    nodes.append(leader := Node(*study, 0, f"192.0.2.7:{free_port()}", tmp_path))
    assert leader.wait(timeout=120) == 2, leader.log
    lines = _error_lines(leader.log)
    assert len(lines) == 1, leader.log
    assert "192.0.2.7 (192.0.2.7) is not an address of this machine" in lines[0]
    assert "in use" not in lines[0]
    assert all(t.state == TrialState.WAITING for t in _trials(study))


@pytest.mark.slow
def test_a_follower_waits_for_a_killed_node_0_and_rejoins_it_when_it_comes_back(
    study: tuple[str, str], tmp_path: Path, nodes: list[Node]
) -> None:
    rendezvous = f"127.0.0.1:{free_port()}"
    nodes.append(leader := Node(*study, 0, rendezvous, tmp_path))
    nodes.append(follower := Node(*study, 1, rendezvous, tmp_path))
    _until(lambda: _mid_trial(study), "no trial got an epoch in")
    leader.kill()  # node 0 dies with every process on it, no goodbye
    _until(
        lambda: (
            "waiting for it to come back" in follower.log or follower.process.poll() is not None
        ),
        "the follower neither waited for node 0 nor ended",
    )
    assert follower.process.poll() is None, follower.log[-3000:]
    nodes.append(leader := Node(*study, 0, rendezvous, tmp_path))  # node 0 comes back
    assert leader.wait(timeout=600) == 0, leader.log[-3000:]
    assert follower.wait(timeout=120) == 0, follower.log[-3000:]
    assert "Traceback" not in follower.log and "frame #" not in follower.log, follower.log
    _assert_study_done(study)


@pytest.mark.slow
def test_a_follower_stopped_past_twice_dist_timeout_rejoins_its_waiting_leader(
    study: tuple[str, str], tmp_path: Path, nodes: list[Node]
) -> None:
    rendezvous = f"127.0.0.1:{free_port()}"
    nodes.append(leader := Node(*study, 0, rendezvous, tmp_path))
    nodes.append(follower := Node(*study, 1, rendezvous, tmp_path))
    _until(lambda: _mid_trial(study), "no trial got an epoch in")
    follower.signal(signal.SIGSTOP)
    try:
        # The collective timed out (dist_timeout), then a generation waited dist_timeout more.
        _until(
            lambda: "did not form within" in leader.log,
            f"the leader did not re-form: {leader.log[-3000:]}",
        )
    finally:
        follower.signal(signal.SIGCONT)
    assert leader.wait(timeout=600) == 0, leader.log[-3000:]
    assert follower.wait(timeout=120) == 0, follower.log[-3000:]
    assert "Traceback" not in follower.log, follower.log
    _assert_study_done(study)


@pytest.mark.slow
def test_a_second_worker_given_a_taken_node_rank_is_refused_in_one_line(
    tmp_path: Path, study_name: str, nodes: list[Node]
) -> None:
    study = _create(tmp_path, study_name, epochs=200)  # the group trains while it is refused
    rendezvous = f"127.0.0.1:{free_port()}"
    nodes.append(leader := Node(*study, 0, rendezvous, tmp_path))
    nodes.append(follower := Node(*study, 1, rendezvous, tmp_path))
    _until(lambda: _mid_trial(study), "no trial got an epoch in")
    nodes.append(second := Node(*study, 1, rendezvous, tmp_path))
    assert second.wait(timeout=120) == 2, second.log
    lines = _error_lines(second.log)
    assert len(lines) == 1, second.log
    assert (
        f"node rank 1 of the trial group at {rendezvous} is held by a running worker" in (lines[0])
    )
    # The group it would have broken trains on: its trial reports further epochs.
    (running,) = [t for t in _trials(study) if t.state == TrialState.RUNNING]
    reported = len(running.intermediate_values)
    _until(
        lambda: (
            len(next(t for t in _trials(study) if t.number == running.number).intermediate_values)
            > reported
        ),
        "the group stopped training",
    )
    assert leader.process.poll() is None and follower.process.poll() is None
