"""Checkpoints: what the export names, sharded checkpoints on any group size, and the order of an
epoch's checkpoint and its report.

Real components throughout: a study run by the real command, real torch.distributed groups
(gloo on this CPU), real FSDP2 and torch.distributed.checkpoint folders.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import runpy
import shutil
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from hpsearch.attrs import CHECKPOINT
from hpsearch.objectives import sharding
from hpsearch.objectives.context import TrialContext, trial_context
from hpsearch.objectives.distributed import end_process_group
from hpsearch.search.cli import main

from ._support import RecordingTrial
from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
REGRESSION = ROOT / "examples" / "regression" / "regression.py"

# --- export --top names only checkpoints that exist --------------------------------------------

CHECKPOINTING = """
import os

from hpsearch.objectives.context import current_context


def objective(trial, params):
    # Writes its checkpoint as the engine would: the file the worker's context names.
    path = current_context().checkpoint
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(str(params["x"]))
    return (params["x"] - 2.0) ** 2
"""


def test_export_top_names_only_the_checkpoints_keep_best_kept(
    write_study: Any, tmp_path: Path, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "checkpointing.py").write_text(CHECKPOINTING)
    artifacts = tmp_path / "artifacts"
    path = write_study(
        f'[resources]\nartifacts = "{artifacts}"\nkeep_checkpoints = "best"\n',
        n_trials=4,
        objective="checkpointing.py:objective",
    )
    url = f"sqlite:///{tmp_path / 'top.db'}"
    assert main(["run", "-q", str(path), "--storage", url, "--workers", "1"]) == 0
    assert main(["export", "--study", study_name, "--storage", url, "--top", "4"]) == 0
    document = yaml.safe_load(capsys.readouterr().out)
    study = optuna.load_study(study_name=study_name, storage=url)
    # Every trial wrote one and is still named by its attribute; only the best's file is kept.
    assert all(t.user_attrs.get(CHECKPOINT) for t in study.trials)
    (kept,) = [p for p in artifacts.rglob("checkpoint.pt")]
    assert document["checkpoint"] == str(kept) == study.best_trial.user_attrs[CHECKPOINT]
    assert [entry["checkpoint"] for entry in document["top"]] == [str(kept), None, None, None]


# --- an epoch's checkpoint is complete before its report; sharded ones load on one process -----

MLP = {"width": 48, "depth": 2, "epochs": 4, "batch_size": 128, "micro_batch": 16, "lr": 3e-3}
# Every layout sums the same effective batches in another order: tests/test_fsdp.py's reasoning.
TOLERANCE = 1e-5


def _complete_epoch(path: str) -> int | None:
    """The epoch the checkpoint at ``path`` resumes at, read whole as a retry would (None: no
    checkpoint there)."""
    from torch.distributed.checkpoint import state_dict_loader

    if os.path.isdir(path):
        meta = sharding.load_meta(path)
        assert meta is not None, os.listdir(path)
        # Every shard is there and readable: the whole model loads from them, in this process.
        model = runpy.run_path(str(REGRESSION))["build"](MLP)
        state = {"model": model.state_dict()}
        with warnings.catch_warnings():  # "assuming ... a single process": it is one
            warnings.simplefilter("ignore", UserWarning)
            state_dict_loader.load(state, checkpoint_id=path, no_dist=True)
        model.load_state_dict(state["model"])
        return int(meta["epoch"])
    if os.path.exists(path):
        return int(torch.load(path, weights_only=False)["epoch"])
    return None


class Watcher(RecordingTrial):
    """A trial that, at the moment each report arrives (before the report is visible to anyone),
    records which epoch's checkpoint is complete; ``snapshot``: at the second report, it copies
    the checkpoint there, which is what a kill after two reported epochs leaves. ``checkpoint``
    None: it only records the reports (the other ranks of a group)."""

    def __init__(self, checkpoint: str | None, snapshot: str | None = None) -> None:
        super().__init__()
        self.checkpoint, self.snapshot = checkpoint, snapshot
        self.seen: list[int | None] = []

    def report(self, value: float, step: int) -> None:
        super().report(value, step)
        if self.checkpoint is None:
            return
        self.seen.append(_complete_epoch(self.checkpoint))
        if self.snapshot is not None and step == 1:
            shutil.copytree(self.checkpoint, self.snapshot)


def _train(trial: Any, params: dict[str, Any], checkpoint: str) -> None:
    context = TrialContext(checkpoint=checkpoint, metrics=("mse",), directions=("minimize",))
    with trial_context(context):  # as a worker runs the example's objective
        runpy.run_path(str(REGRESSION))["objective"](trial, params)


def _rank(rank: int, port: int, folder: str) -> None:
    """A rank of a 2-rank FSDP trial; rank 0 watches the checkpoint at each report."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=dt.timedelta(seconds=120),
    )
    checkpoint = os.path.join(folder, "slot-000000", "checkpoint.pt")
    snapshot = os.path.join(folder, "after-two-epochs", "checkpoint.pt")
    watcher = Watcher(checkpoint, snapshot) if rank == 0 else Watcher(None)
    _train(watcher, {**MLP, "strategy": "fsdp"}, checkpoint)
    if rank == 0:
        seen = {"reports": watcher.values, "seen": watcher.seen, "snapshot": snapshot}
        Path(folder, "rank0.json").write_text(json.dumps(seen))
    dist.barrier()
    end_process_group()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-rank FSDP trial of 4 epochs, watched at each report by its rank 0."""
    folder = tmp_path_factory.mktemp("sharded")
    mp.start_processes(_rank, args=(free_port(), str(folder)), nprocs=2, start_method="spawn")
    result: dict[str, Any] = json.loads((folder / "rank0.json").read_text())
    return result


def test_each_epochs_checkpoint_is_complete_before_its_report_on_one_process(
    tmp_path: Path,
) -> None:
    checkpoint = str(tmp_path / "slot-000000" / "checkpoint.pt")
    watcher = Watcher(checkpoint)
    _train(watcher, {**MLP, "epochs": 3}, checkpoint)
    # At the report of epoch k (0-based), the checkpoint resumes at epoch k + 1: k is in it.
    assert watcher.seen == [1, 2, 3]


@pytest.mark.slow
def test_each_epochs_sharded_checkpoint_is_complete_before_its_report(
    sharded: dict[str, Any],
) -> None:
    assert sharded["seen"] == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_sharded_checkpoint_of_2_ranks_resumes_on_one_process_and_keeps_saving(
    sharded: dict[str, Any],
) -> None:
    """A sharded trial retried on a worker with one device: no process group, a whole model."""
    checkpoint = sharded["snapshot"]  # what a kill after two reported epochs left
    trial = Watcher(checkpoint)
    _train(trial, {**MLP, "strategy": "fsdp"}, checkpoint)
    assert trial.user_attrs["resumed_from_epoch"] == 2
    reference = sharded["reports"][2:]  # the 2-rank trial's own epochs 2 and 3
    assert len(trial.values) == len(reference) == 2
    for resumed, expected in zip(trial.values, reference, strict=True):
        assert math.isfinite(resumed) and resumed == pytest.approx(expected, rel=TOLERANCE)
    # It saved every epoch, in the folder a retry on any number of devices resumes from.
    assert trial.seen == [3, 4] and Path(checkpoint).is_dir()
