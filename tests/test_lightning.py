"""Lightning through HpsearchCallback (the `lightning` extra): kill -9 of the worker resumes the
Trainer from its checkpoint with the curve of an uninterrupted run, SIGTERM hands the trial back,
and two DDP ranks under torchrun get the same parameters and prune decisions."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

from ._loops import (
    held_study,
    kill_9_then_resume,
    ranks_agree,
    seen_by_ranks,
    sigterm_hands_back,
    uninterrupted_curve,
)
from ._support import study_toml
from .conftest import ROOT
from .test_command import _run

pytest.importorskip("lightning")

MODEL = ROOT / "examples" / "lightning" / "model.py"
PARAMS = {"epochs": 8, "batch_size": 128, "width": 32, "lr": 0.003}
HELD = f"""
import runpy

model = runpy.run_path({str(MODEL)!r})


def objective(trial, params):
    return model["objective"](Pausing(trial), params)
"""


def _held(folder: Path, name: str) -> Path:
    training = {"batch_size": 128, "width": 32}
    return held_study(folder, name, metric="mse", training=training, objective=HELD)


@pytest.fixture(scope="module")
def uninterrupted() -> dict[int, float]:
    return uninterrupted_curve(
        lambda trial: runpy.run_path(str(MODEL))["objective"](trial, dict(PARAMS))
    )


@pytest.mark.slow
def test_kill_9_resumes_the_trainer_with_the_curve_of_an_uninterrupted_run(
    postgres_url: str, tmp_path: Path, study_name: str, uninterrupted: dict[int, float]
) -> None:
    study = _held(tmp_path, study_name)
    kill_9_then_resume(postgres_url, tmp_path, study_name, study, uninterrupted)


@pytest.mark.slow
def test_sigterm_hands_the_trainer_trial_back_with_its_checkpoint(
    tmp_path: Path, study_name: str
) -> None:
    victim = sigterm_hands_back(tmp_path, study_name, _held(tmp_path, study_name))
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
    path = tmp_path / "ranks.toml"
    path.write_text(
        study_toml(
            name="lightning-ranks",
            command="torchrun --standalone --nproc-per-node {devices} ranks.py {x}",
            n_trials=4,
            metric="score",
            direction="maximize",
            sampler={"name": "random", "seed": 1},
            pruner={"name": "median", "options": {"n_startup_trials": 2, "n_warmup_steps": 0}},
            space={"x": {"type": "float", "low": 0.0, "high": 10.0}},
            resources={"devices_per_trial": 2},
        )
    )
    trials = _run(tmp_path, path, devices_per_trial=2)
    assert len(trials) == 4
    ranks_agree(tmp_path, trials, maximize=True)
    for trial in trials:
        seen = seen_by_ranks(tmp_path, trial)
        assert seen[0]["params"] == {"x": trial.params["x"]}
        assert seen[0]["value"] == seen[1]["value"]
        # Logged as float32 tensors: x + epoch to 7 digits.
        assert trial.intermediate_values == {
            s: pytest.approx(trial.params["x"] + s, rel=1e-6) for s in trial.intermediate_values
        }
