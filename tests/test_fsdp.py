"""Sharded trials (strategy = "fsdp"): FSDP2 on 2 and 4 gloo ranks on this CPU trains what DDP
trains, its sharded checkpoints resume on a group of another size, and a study runs it through
`hpsearch run` and retrains from its export.

Why the tolerance: every layout computes the same effective batch in the same order; only the
order of floating-point sums differs (DDP all-reduces whole gradients, FSDP reduce-scatters
shards, 4 ranks add four partial sums where 2 add two). Across a few epochs that moves the
reported losses by about 1e-7 relative; 1e-5 leaves room and still catches a wrong gradient
scale, a lost micro-batch or a reshuffled epoch, each of which moves them by 1e-2 or more.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import runpy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hpsearch.objectives.context import TrialContext, trial_context
from hpsearch.objectives.distributed import end_process_group
from tests._support import RecordingTrial, study_toml
from tests.conftest import free_port, hpsearch_command

ROOT = Path(__file__).resolve().parent.parent
REGRESSION = ROOT / "examples" / "regression" / "regression.py"
CHARLM = ROOT / "examples" / "charlm" / "charlm.py"
METRIC = {REGRESSION: "mse", CHARLM: "perplexity"}
TOLERANCE = 1e-5


# A small character transformer (the LM example without dropout, whose random masks differ
# between layouts): 256 windows of 32 characters an epoch.
TRANSFORMER = {
    "width": 32,
    "depth": 2,
    "heads": 4,
    "dropout": 0.0,
    "context": 32,
    "windows": 256,
    "epochs": 2,
    "batch_size": 32,
    "micro_batch": 8,
    "lr": 3e-3,
}
MLP = {
    "width": 48,
    "depth": 2,
    "epochs": 4,
    "batch_size": 128,
    "micro_batch": 16,  # accumulation on every layout: 128 = 16 x 8 / 16 x 4 x 2 / 16 x 2 x 4
    "lr": 3e-3,
}


def _job(
    example: Path, strategy: str, *, stop_after: int | None = None, **extra: Any
) -> dict[str, Any]:
    base = MLP if example == REGRESSION else TRANSFORMER
    return {
        "example": str(example),
        "params": {**base, "strategy": strategy, **extra},
        "stop_after": stop_after,
    }


def _rank(rank: int, world: int, port: int, jobs: dict[str, dict[str, Any]], out: str) -> None:
    """One rank of a group that trains every job in turn (one group start for all of them)."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=dt.timedelta(seconds=120),
    )
    results: dict[str, Any] = {}
    for name, job in jobs.items():
        params = dict(job["params"])
        trial = RecordingTrial(stop_after=job["stop_after"])
        example = Path(job["example"])
        context = TrialContext(
            checkpoint=params.pop("checkpoint", None),
            metrics=(METRIC[example],),
            directions=("minimize",),
        )
        try:
            with trial_context(context):  # as a worker runs the example's objective
                runpy.run_path(str(example))["objective"](trial, params)
            results[name] = {"reports": trial.values, "attrs": trial.user_attrs}
        except KeyboardInterrupt:  # stopped after a checkpoint, as a preempted node
            results[name] = {"reports": trial.values, "attrs": trial.user_attrs}
        except ValueError as err:  # refused before any collective, on every rank alike
            results[name] = {"error": str(err)}
        dist.barrier()
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.barrier()
    end_process_group()


def _group(world: int, jobs: dict[str, dict[str, Any]], folder: Path) -> dict[str, Any]:
    out = folder / f"group-{world}.json"
    mp.start_processes(
        _rank, args=(world, free_port(), jobs, str(out)), nprocs=world, start_method="spawn"
    )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every training of this file, on a group of 4 ranks, then one of 2.

    The 4 ranks stop the MLP after 2 of its 4 epochs (a preempted node), after its sharded
    checkpoint; the 2 ranks then resume it from that checkpoint, as a retried trial would.
    """
    folder = tmp_path_factory.mktemp("fsdp")
    checkpoint = str(folder / "slot-000000" / "checkpoint.pt")
    runs = _group(
        4,
        {
            "mlp-fsdp-4-stopped": _job(REGRESSION, "fsdp", checkpoint=checkpoint, stop_after=2),
            "lm-fsdp-4": _job(CHARLM, "fsdp"),
        },
        folder,
    )
    shards = [p for p in Path(checkpoint).iterdir() if p.suffix == ".distcp"]
    runs["shards-after-4"] = len(shards)
    runs |= _group(
        2,
        {
            "mlp-ddp-2": _job(REGRESSION, "ddp"),
            "mlp-fsdp-2": _job(REGRESSION, "fsdp"),
            "mlp-fsdp-2-resumed": _job(REGRESSION, "fsdp", checkpoint=checkpoint),
            "lm-ddp-2": _job(CHARLM, "ddp"),
            "lm-fsdp-2": _job(CHARLM, "fsdp"),
            "mlp-fsdp-2-l1": _job(REGRESSION, "fsdp", l1=1e-4),
        },
        folder,
    )
    return runs


def _assert_close(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b) and all(math.isfinite(x) for x in a), (a, b)
    for x, y in zip(a, b, strict=True):
        assert x == pytest.approx(y, rel=TOLERANCE), (a, b)


@pytest.mark.slow
def test_fsdp_on_2_and_4_ranks_trains_the_mlp_as_ddp_does(trained: dict[str, Any]) -> None:
    ddp = trained["mlp-ddp-2"]["reports"]
    assert len(ddp) == 4 and ddp[-1] < ddp[0] / 2  # it learns: not two flat lines compared
    _assert_close(trained["mlp-fsdp-2"]["reports"], ddp)
    _assert_close(trained["mlp-fsdp-4-stopped"]["reports"], ddp[:2])


@pytest.mark.slow
def test_a_sharded_checkpoint_written_by_4_ranks_resumes_on_2(trained: dict[str, Any]) -> None:
    assert trained["shards-after-4"] == 4  # one folder: a shard file per rank, the metadata
    resumed = trained["mlp-fsdp-2-resumed"]
    assert resumed["attrs"]["resumed_from_epoch"] == 2
    _assert_close(resumed["reports"], trained["mlp-ddp-2"]["reports"][2:])  # the same curve


@pytest.mark.slow
def test_fsdp_on_2_and_4_ranks_trains_the_transformer_as_ddp_does(
    trained: dict[str, Any],
) -> None:
    """Per-block sharding of the LM example's encoder layers."""
    ddp = trained["lm-ddp-2"]["reports"]
    assert len(ddp) == 2 and ddp[-1] < ddp[0]
    _assert_close(trained["lm-fsdp-2"]["reports"], ddp)
    _assert_close(trained["lm-fsdp-4"]["reports"], ddp)


@pytest.mark.slow
def test_l1_with_sharded_weights_is_refused_in_one_line(trained: dict[str, Any]) -> None:
    assert "l1 needs whole weights and strategy fsdp" in trained["mlp-fsdp-2-l1"]["error"]


FSDP_STUDY = {
    "n_trials": 1,
    "metric": "mse",
    "sampler": {"name": "random", "seed": 3},
    "resources": {"devices_per_trial": 2},
    "training": {"epochs": 2, "strategy": "fsdp", "micro_batch": 16, "depth": 2},
    "space": {
        "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "width": {"type": "categorical", "choices": [32, 48]},
        "batch_size": {"type": "categorical", "choices": [100, 200]},
    },
}


@pytest.mark.slow
def test_a_study_runs_sharded_trials_and_retrains_from_the_export(
    tmp_path: Path, study_name: str
) -> None:
    study = tmp_path / "fsdp.toml"
    study.write_text(study_toml(name=study_name, objective=f"{REGRESSION}:objective", **FSDP_STUDY))
    url = f"sqlite:///{tmp_path / 'fsdp.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def hpsearch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*hpsearch_command(), *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=600,
        )

    run = hpsearch("run", str(study), "--storage", url, "--workers", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    export = tmp_path / "best.json"
    exported = hpsearch("export", "--study", study_name, "--storage", url, "-o", str(export))
    assert exported.returncode == 0, exported.stderr
    document = json.loads(export.read_text())
    assert document["batch"]["world_size"] == 2
    assert Path(document["checkpoint"]).is_dir()  # the best trial's sharded checkpoint
    trained = hpsearch("train", str(export), "--output", str(tmp_path / "model"))
    assert trained.returncode == 0, trained.stderr
    # One process retrains what two sharded ranks trained: the same batches, other sums.
    retrained = json.loads((tmp_path / "model" / "config.json").read_text())["metrics"]["mse"]
    assert retrained == pytest.approx(document["value"], rel=1e-4)
    example = runpy.run_path(str(REGRESSION))
    model = example["build"]({**document["training"], **document["params"]})
    model.load_state_dict(torch.load(tmp_path / "model" / "model.pt"))  # a whole state_dict
