"""Checkpoints after a study: only the best trial's is kept, and it is in the artifact store."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import optuna.artifacts
import pytest
from optuna.trial import TrialState

from hpsearch.search import create_study, load_spec_file, start_workers

from ._support import study_toml

# Real workers train the digits MLP to a study's budget.
pytestmark = pytest.mark.slow

STUDY = {
    "name": "ckpt",
    "objective": "digits-mlp",
    "n_trials": 4,
    "direction": None,
    "sampler": {"name": "random", "seed": 1},
    "training": {"epochs": 2, "width": 32, "device": "cpu"},
    "space": {"lr": {"type": "float", "low": 0.0001, "high": 0.1, "log": True}},
}


def test_only_the_best_checkpoint_is_kept_and_published(tmp_path: Path) -> None:
    artifacts = tmp_path / "art"
    path = tmp_path / "ckpt.toml"
    path.write_text(study_toml(**STUDY, resources={"artifacts": str(artifacts)}))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    create_study(load_spec_file(str(path)), url)
    for process in start_workers("ckpt", url, workers=1, timeout=None, log_trials=False):
        process.join(timeout=300)
    study = optuna.load_study(study_name="ckpt", storage=url)
    best = study.best_trial
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    kept = [t for t in complete if os.path.exists(t.user_attrs["checkpoint"])]
    assert [t.number for t in kept] == [best.number]
    assert best.user_attrs["checkpoint"].startswith(str(artifacts))
    # The artifact store holds each trial that was the best when it finished, the last one too.
    published = [meta.filename for meta in optuna.artifacts.get_all_artifact_meta(study)]
    improvements, best_so_far = [], -1.0
    for trial in sorted(complete, key=lambda t: t.datetime_complete or 0):
        if trial.value is not None and trial.value > best_so_far:
            best_so_far = trial.value
            improvements.append(f"trial-{trial.number:06d}-checkpoint.pt")
    assert sorted(published) == sorted(improvements)
    assert f"trial-{best.number:06d}-checkpoint.pt" in published
    store = artifacts / "store"
    assert len([f for f in store.rglob("*") if f.is_file()]) == len(published)
