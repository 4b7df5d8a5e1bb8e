"""Device assignment, tested without GPUs: the logic, and two `hpsearch worker` commands."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from hpsearch.search import HpsearchError, create_study, load_spec_file
from hpsearch.search.runtime._devices import assign_devices, parse_gpus

from .conftest import hpsearch_command


def test_groups_of_gpus_become_workers() -> None:
    plan = assign_devices(
        gpus=[0, 1, 2, 3], visible_gpus=4, gpus_per_trial=2, workers=None, cores=16
    )
    assert [(w.gpus, w.ranks) for w in plan] == [((0, 1), 2), ((2, 3), 2)]
    assert [w.cuda_visible_devices for w in plan] == ["0,1", "2,3"]
    assert all(w.threads == 4 for w in plan)  # 16 cores over 4 ranks


def test_defaults_all_visible_gpus_one_per_trial() -> None:
    plan = assign_devices(gpus=None, visible_gpus=3, gpus_per_trial=None, workers=None, cores=12)
    assert [w.gpus for w in plan] == [(0,), (1,), (2,)]
    assert [w.ranks for w in plan] == [1, 1, 1]


def test_no_gpus_means_cpu_workers_sharing_the_cores() -> None:
    plan = assign_devices(gpus=None, visible_gpus=0, gpus_per_trial=None, workers=3, cores=12)
    assert [(w.gpus, w.threads) for w in plan] == [((), 4), ((), 4), ((), 4)]
    assert plan[0].describe() == "worker 0: CPU, 4 CPU thread(s) per rank"


def test_bad_gpu_lists_are_clear() -> None:
    with pytest.raises(HpsearchError, match="do not split into groups of --gpus-per-trial 2"):
        assign_devices(gpus=[0, 1, 2], visible_gpus=4, gpus_per_trial=2, workers=None, cores=8)
    with pytest.raises(HpsearchError, match="--workers 3 needs 3 GPUs"):
        assign_devices(gpus=[0, 1], visible_gpus=2, gpus_per_trial=1, workers=3, cores=8)
    with pytest.raises(HpsearchError, match="distinct"):
        parse_gpus("0,0")
    with pytest.raises(HpsearchError, match="expected GPU ids"):
        parse_gpus("0,x")
    assert parse_gpus("all") is None and parse_gpus("none") == []


@pytest.mark.slow
def test_two_worker_commands_show_their_assignment(tmp_path: Path, write_study: Any) -> None:
    """As on two nodes with four GPUs each: each command prints the assignment it would make."""
    path = write_study()
    url = f"sqlite:///{tmp_path / 'a.db'}"
    create_study(load_spec_file(str(path)), url)
    name = load_spec_file(str(path)).name
    base = [*hpsearch_command(), "worker", "--study", name, "--storage", url, "--dry-run"]
    first = subprocess.run(
        [*base, "--gpus", "0,1,2,3", "--gpus-per-trial", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    second = subprocess.run(
        [*base, "--gpus", "0,1,2,3"], capture_output=True, text=True, check=False
    )
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "2 worker process(es)" in first.stdout
    assert "worker 0: CUDA_VISIBLE_DEVICES=0,1, 2 ranks per trial (DDP)" in first.stdout
    assert "worker 1: CUDA_VISIBLE_DEVICES=2,3, 2 ranks per trial (DDP)" in first.stdout
    assert "4 worker process(es)" in second.stdout
    assert "worker 3: CUDA_VISIBLE_DEVICES=3," in second.stdout
    bad = subprocess.run(
        [*base, "--gpus", "0,1,2", "--gpus-per-trial", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "do not split" in bad.stderr
    # Without --dry-run, GPUs this machine lacks are refused by the node smoke test.
    refused = subprocess.run(
        [*base[:-1], "--gpus", "0"], capture_output=True, text=True, check=False
    )
    assert refused.returncode == 2 and "not available on this node" in refused.stderr


def test_smoke_test_refuses_a_node_without_the_data(tmp_path: Path) -> None:
    study = tmp_path / "m.toml"
    study.write_text(
        '[study]\nname = "m"\nobjective = "mnist-mlp"\n[budget]\nn_trials = 2\n'
        '[training]\ndata_dir = "nowhere"\n[space.lr]\ntype = "float"\nlow = 0.001\nhigh = 0.1\n'
    )
    url = f"sqlite:///{tmp_path / 'm.db'}"
    create = subprocess.run(
        [*hpsearch_command(), "create", str(study), "--storage", url],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert create.returncode == 0, create.stderr
    result = subprocess.run(
        [*hpsearch_command(), "worker", "--study", "m", "--storage", url],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "cannot run study 'm'" in result.stderr and "nowhere" in result.stderr
