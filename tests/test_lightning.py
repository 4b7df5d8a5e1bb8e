"""Lightning through HpsearchCallback (the `lightning` extra): kill -9 of the worker resumes the
Trainer from its checkpoint with the curve of an uninterrupted run, SIGTERM hands the trial back,
and two DDP ranks under torchrun get the same parameters and prune decisions."""

from __future__ import annotations

import json
import os
import runpy
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from optuna.trial import TrialState

from hpsearch.search import create_study, load_spec_file
from hpsearch.search.runtime._launch import available_cores

from ._support import PAUSING_TRIAL, RecordingTrial, study_toml
from .conftest import ROOT
from .test_command import _run
from .test_engine import assert_resumed_like_uninterrupted, run_worker, start_and_wait
from .test_fault_tolerance import _trials

pytest.importorskip("lightning")

MODEL = ROOT / "examples" / "lightning" / "model.py"
PARAMS = {"epochs": 8, "batch_size": 128, "width": 32, "lr": 0.003}

PAUSING = (
    PAUSING_TRIAL
    + f"""
import runpy

model = runpy.run_path({str(MODEL)!r})


def objective(trial, params):
    return model["objective"](Pausing(trial), params)
"""
)


def _study(folder: Path, name: str) -> Path:
    (folder / "pausing.py").write_text(PAUSING)
    path = folder / f"{name}.toml"
    path.write_text(
        study_toml(
            name=name,
            objective=f"{folder / 'pausing.py'}:objective",
            n_trials=1,
            metric="mse",
            training={k: v for k, v in PARAMS.items() if k != "lr"},
            space={"lr": {"type": "categorical", "choices": [PARAMS["lr"]]}},
            resources={"heartbeat_interval": 1, "grace_period": 3, "artifacts": str(folder / "a")},
        )
    )
    return path


@pytest.fixture(scope="module")
def uninterrupted() -> dict[int, float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(available_cores())
    try:
        trial = RecordingTrial()
        runpy.run_path(str(MODEL))["objective"](trial, dict(PARAMS))
    finally:
        torch.set_num_threads(threads)
    return dict(trial.reports)


@pytest.mark.slow
def test_kill_9_resumes_the_trainer_with_the_curve_of_an_uninterrupted_run(
    postgres_url: str, tmp_path: Path, study_name: str, uninterrupted: dict[int, float]
) -> None:
    create_study(load_spec_file(str(_study(tmp_path, study_name))), postgres_url)
    parent, victim = start_and_wait(study_name, postgres_url, tmp_path)
    os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
    parent.communicate(timeout=120)
    (tmp_path / "pause").unlink()
    run_worker(study_name, postgres_url, tmp_path)
    assert_resumed_like_uninterrupted(postgres_url, study_name, victim, uninterrupted)


@pytest.mark.slow
def test_sigterm_hands_the_trainer_trial_back_with_its_checkpoint(
    tmp_path: Path, study_name: str
) -> None:
    url = f"sqlite:///{tmp_path / 'sigterm.db'}"
    create_study(load_spec_file(str(_study(tmp_path, study_name))), url)
    parent, victim = start_and_wait(study_name, url, tmp_path)
    parent.send_signal(signal.SIGTERM)
    _, log = parent.communicate(timeout=120)
    assert parent.returncode == 0, log[-3000:]
    assert "SIGTERM: handing the running trial back" in log
    trials = _trials(url, study_name)
    assert next(t for t in trials if t.number == victim.number).state == TrialState.FAIL
    (retry,) = [t for t in trials if t.number != victim.number]
    assert retry.state == TrialState.WAITING
    saved = torch.load(victim.user_attrs["checkpoint"], weights_only=False)
    assert saved["epoch"] == 1 and saved["hpsearch"]["step"] == 1  # after epoch 1's validation


# Each torchrun rank trains a module that logs score = x + epoch (the same on both ranks),
# and records the parameters it was given and how its trial ended.
RANKS = """
import json, os, sys
import lightning.pytorch as pl
import optuna
import torch
from torch.utils.data import DataLoader, TensorDataset
from hpsearch.objectives.lightning import HpsearchCallback

x = float(sys.argv[1])


class Scored(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, _):
        return (self.w - batch[0]).pow(2).mean()

    def validation_step(self, batch, _):
        self.log("score", torch.tensor(x + self.current_epoch), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


callback = HpsearchCallback()
data = DataLoader(TensorDataset(torch.ones(8, 1)), batch_size=4)
seen = {"argv": sys.argv[1:], "end": "complete"}
try:
    pl.Trainer(max_epochs=4, accelerator="cpu", devices=2, strategy="ddp", callbacks=[callback],
               logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(Scored(), data, data)
except optuna.TrialPruned:
    seen["end"] = "pruned"
seen["params"] = callback.trial.params
seen["value"] = callback.value
rank = int(os.environ["RANK"])
with open(f"trial-{os.environ['HPSEARCH_TRIAL']}-rank-{rank}.json", "w") as f:
    json.dump(seen, f)
"""


@pytest.mark.slow
def test_two_ddp_ranks_under_torchrun_get_the_same_parameters_and_decisions(
    tmp_path: Path,
) -> None:
    (tmp_path / "ranks.py").write_text(RANKS)
    text = study_toml(
        name="lightning-ranks",
        objective="placeholder",
        n_trials=4,
        metric="score",
        direction="maximize",
        sampler={"name": "random", "seed": 1},
        pruner={"name": "median", "options": {"n_startup_trials": 2, "n_warmup_steps": 0}},
        space={"x": {"type": "float", "low": 0.0, "high": 10.0}},
        resources={"devices_per_trial": 2},
    )
    command = "torchrun --standalone --nproc-per-node {devices} ranks.py {x}"
    path = tmp_path / "ranks.toml"
    path.write_text(text.replace('objective = "placeholder"', f"command = {json.dumps(command)}"))
    trials = _run(tmp_path, path, devices_per_trial=2)
    assert len(trials) == 4
    ends = set()
    for trial in trials:
        seen: list[dict[str, Any]] = [
            json.loads((tmp_path / f"trial-{trial.number}-rank-{rank}.json").read_text())
            for rank in (0, 1)
        ]
        assert seen[0]["params"] == seen[1]["params"] == {"x": trial.params["x"]}
        assert seen[0]["end"] == seen[1]["end"] and seen[0]["value"] == seen[1]["value"]
        steps = sorted(trial.intermediate_values)
        # Logged as float32 tensors: x + epoch to 7 digits.
        assert trial.intermediate_values == {
            s: pytest.approx(trial.params["x"] + s, rel=1e-6) for s in steps
        }
        expected = TrialState.PRUNED if seen[0]["end"] == "pruned" else TrialState.COMPLETE
        assert trial.state == expected
        ends.add(seen[0]["end"])
    assert ends == {"pruned", "complete"}
    # Maximized: a pruned trial scored below a completed one at its last step, never above all.
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    for pruned in [t for t in trials if t.state == TrialState.PRUNED]:
        step = max(pruned.intermediate_values)
        assert any(
            c.intermediate_values[step] > pruned.intermediate_values[step] for c in complete
        ), pruned.number
