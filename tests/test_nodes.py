"""Trials across nodes: two `hpsearch worker` commands, each one "node" with its own ranks, form
each trial's group through torch's TCPStore at the rendezvous (here 127.0.0.1), run a study to
its exact budget, and survive the loss of the follower node mid-trial."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.attrs import CHECKPOINT, RESUMED_FROM_EPOCH, SLOT
from hpsearch.objectives import sharding
from hpsearch.search.runtime._budget import budget_state

from ._support import node_worker_args
from .conftest import free_port, hpsearch_command
from .test_fault_tolerance import _children

REGRESSION = Path(__file__).resolve().parent.parent / "examples" / "regression" / "regression.py"

STUDY = """
[study]
name = "{name}"
objective = "{objective}"
metric = "mse"
direction = "minimize"

[budget]
n_trials = 2

[sampler]
name = "random"
seed = 5

[pruner]
name = "none"

[resources]
nodes_per_trial = 2
dist_timeout = 120
heartbeat_interval = 2
grace_period = 10

[training]
epochs = 6
strategy = "fsdp"
batch_size = 200  # 8 steps an epoch: each is a round of collectives between the two nodes
depth = 2

[space.lr]
type = "float"
low = 1e-3
high = 1e-2
log = true

[space.width]
type = "categorical"
choices = [32, 64]
"""


def _node(study: str, url: str, rank: int, rendezvous: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*hpsearch_command(), *node_worker_args(study, url, rank, rendezvous)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _checkpointed_epochs(path: str | None) -> int:
    """The epochs a trial's sharded checkpoint holds (0: none, or not complete yet)."""
    meta = sharding.load_meta(path) if path else None
    return 0 if meta is None else int(meta["epoch"])


@pytest.mark.slow
def test_a_two_node_group_survives_losing_its_follower_and_ends_the_study_exactly(
    tmp_path: Path, study_name: str
) -> None:
    path = tmp_path / "nodes.toml"
    path.write_text(STUDY.format(name=study_name, objective=f"{REGRESSION}:objective"))
    url = f"sqlite:///{tmp_path / 'nodes.db'}"
    created = subprocess.run(
        [*hpsearch_command(), "create", str(path), "--storage", url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    rendezvous = f"127.0.0.1:{free_port()}"
    leader = _node(study_name, url, 0, rendezvous, tmp_path)
    follower = _node(study_name, url, 1, rendezvous, tmp_path)
    try:
        # Mid-trial: a trial has reported two epochs of six, and the sharded checkpoint it
        # resumes from holds them (the engine writes it before the report: this waits on the
        # state asserted below, not on that order).
        deadline = time.monotonic() + 300
        while True:
            assert time.monotonic() < deadline, "no trial got two epochs in"
            running = [
                t
                for t in optuna.load_study(study_name=study_name, storage=url).get_trials()
                if t.state == TrialState.RUNNING
                and len(t.intermediate_values) >= 2
                and _checkpointed_epochs(t.user_attrs.get(CHECKPOINT)) >= 2
            ]
            if running:
                break
            time.sleep(0.2)
        victim = running[0]
        (rank_process,) = _children(follower.pid)
        os.kill(rank_process, signal.SIGKILL)  # the follower node's rank dies, no goodbye
        _, follower_log = follower.communicate(timeout=120)
        assert follower.returncode != 0, follower_log
        follower = _node(study_name, url, 1, rendezvous, tmp_path)  # the node comes back
        _, leader_log = leader.communicate(timeout=600)
        _, follower_log = follower.communicate(timeout=120)
    finally:
        for process in (leader, follower):
            if process.poll() is None:
                process.kill()
    assert leader.returncode == 0, leader_log[-3000:]
    assert follower.returncode == 0, follower_log[-3000:]
    assert "lost a rank of its group" in leader_log
    trials = optuna.load_study(study_name=study_name, storage=url).get_trials()
    state = budget_state(trials, 2)
    assert state.used == 2 and state.complete == 2 and state.running == state.waiting == 0, state
    # The lost trial went back uncounted and its retry resumed from the sharded checkpoint.
    (retry,) = [
        t
        for t in trials
        if t.system_attrs[SLOT] == victim.system_attrs[SLOT] and t.state == TrialState.COMPLETE
    ]
    assert retry.number != victim.number
    assert retry.user_attrs[RESUMED_FROM_EPOCH] >= 2
    assert retry.params == victim.params
    assert retry.user_attrs["batch"]["world_size"] == 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "give this node's place with --node-rank 0..1"),
        (["--node-rank", "2", "--rendezvous", "node0:29400"], "--node-rank 0..1"),
        (["--node-rank", "0"], "give node 0's HOST:PORT with --rendezvous"),
        (["--node-rank", "0", "--rendezvous", "node0"], "is not HOST:PORT"),
        (["--node-rank", "1", "--rendezvous", "node0:29400", "--workers", "2"], "--workers 2"),
    ],
)
def test_a_group_member_without_its_place_is_one_line_and_exit_2(
    args: list[str],
    expected: str,
    tmp_path: Path,
    study_name: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hpsearch.search.cli import main

    for name in ("HPSEARCH_NODE_RANK", "HPSEARCH_RENDEZVOUS", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "nodes.toml"
    path.write_text(STUDY.format(name=study_name, objective=f"{REGRESSION}:objective"))
    url = f"sqlite:///{tmp_path / 'nodes.db'}"
    assert main(["create", str(path), "--storage", url]) == 0
    capsys.readouterr()
    assert main(["worker", "--study", study_name, "--storage", url, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    # `run` is one machine: a study whose trials span nodes is refused before any worker.
    assert main(["run", str(path), "--storage", url]) == 2
    assert "nodes_per_trial = 2" in capsys.readouterr().err
