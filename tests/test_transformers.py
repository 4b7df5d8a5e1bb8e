"""Hugging Face's Trainer through HpsearchCallback (the `transformers` extra): kill -9 of the
worker resumes through the Trainer's own checkpoints with the curve of an uninterrupted run,
SIGTERM hands the trial back, two DDP ranks under torchrun get the same parameters and prune
decisions; export --weights writes the model's weights."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

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

pytest.importorskip("transformers")

GPT2 = ROOT / "examples" / "transformers" / "gpt2.py"
# 4096 bytes of text: 64 windows, 4 optimizer steps an epoch.
PARAMS = {"epochs": 8, "batch_size": 16, "width": 32, "train_bytes": 4096, "lr": 0.003}

HELD = f"""
import runpy

gpt2 = runpy.run_path({str(GPT2)!r})


def objective(trial, params):
    return gpt2["objective"](Pausing(trial), params)
"""


def _held(folder: Path, name: str) -> Path:
    training = {k: v for k, v in PARAMS.items() if k not in ("lr", "epochs")}
    return held_study(folder, name, metric="loss", training=training, objective=HELD)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    output = str(tmp_path_factory.mktemp("reference") / "out")
    return uninterrupted_curve(
        lambda trial: runpy.run_path(str(GPT2))["fit"](trial, dict(PARAMS), output)
    )


@pytest.mark.slow
def test_kill_9_resumes_the_trainer_from_its_checkpoint_with_the_same_curve(
    postgres_url: str, tmp_path: Path, study_name: str, uninterrupted: dict[int, float]
) -> None:
    study = _held(tmp_path, study_name)
    kill_9_then_resume(postgres_url, tmp_path, study_name, study, uninterrupted)


@pytest.mark.slow
def test_sigterm_hands_the_trainer_trial_back_with_its_checkpoints(
    tmp_path: Path, study_name: str
) -> None:
    victim = sigterm_hands_back(tmp_path, study_name, _held(tmp_path, study_name))
    # The Trainer's checkpoint of epoch 2 (8 optimizer steps), which the retry resumes from.
    assert (Path(victim.user_attrs["checkpoint"]) / "checkpoint-8").is_dir()


# Each torchrun rank trains with the callback connected, and records the parameters it was
# given and how its trial ended.
RANKS = f"""
import json, os, runpy, sys
import optuna
import hpsearch

gpt2 = runpy.run_path({str(GPT2)!r})
lr = float(sys.argv[1])
seen = {{"end": "complete", "value": None}}
try:
    seen["value"] = gpt2["fit"](None, {{"epochs": 3, "batch_size": 8, "width": 32,
                                        "train_bytes": 4096, "lr": lr}})
except optuna.TrialPruned:
    seen["end"] = "pruned"
seen["params"] = json.loads(os.environ["HPSEARCH_PARAMS"])
with open(f"trial-{{os.environ['HPSEARCH_TRIAL']}}-rank-{{os.environ['RANK']}}.json", "w") as f:
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
            name="trainer-ranks",
            command="torchrun --standalone --nproc-per-node {devices} ranks.py {lr}",
            n_trials=4,
            metric="loss",
            # Seeded: one worker draws the grid in the same order every run, so which trials the
            # median prunes is the same every run.
            sampler={"name": "grid", "seed": 0},
            pruner={"name": "median", "options": {"n_startup_trials": 1, "n_warmup_steps": 0}},
            # Rates that learn next to nothing (1e-6, 2e-6) against ones that learn.
            space={"lr": {"type": "categorical", "choices": [3e-3, 1e-6, 1e-3, 2e-6]}},
            resources={"devices_per_trial": 2},
        )
    )
    trials = _run(tmp_path, path, devices_per_trial=2)
    assert len(trials) == 4
    ranks_agree(tmp_path, trials, maximize=False)
    for trial in trials:
        seen = seen_by_ranks(tmp_path, trial)
        assert seen[0]["params"] == {"lr": trial.params["lr"]}
        assert seen[0]["value"] == seen[1]["value"]
