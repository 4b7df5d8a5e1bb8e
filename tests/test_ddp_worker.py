"""A worker that owns two devices runs every trial as a 2-rank DDP group (gloo on this CPU)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.search import create_study, load_spec_file, start_workers

from ._support import study_toml

# A real worker runs torch.distributed trials.
pytestmark = pytest.mark.slow

STUDY = study_toml(
    name="ddp",
    objective="digits-mlp",
    n_trials=3,
    direction=None,
    sampler={"name": "grid"},
    resources={"devices_per_trial": 2},
    training={"epochs": 2, "device": "cpu", "width": 32, "lr": 0.01},
    # 33 cannot be split over 2 ranks: that trial fails, the next go on
    space={"batch_size": {"type": "categorical", "choices": [33, 64, 128]}},
)


def test_worker_runs_ddp_trials_and_survives_a_failed_one(tmp_path: Path) -> None:
    path = tmp_path / "ddp.toml"
    path.write_text(STUDY)
    url = f"sqlite:///{tmp_path / 'ddp.db'}"
    spec = load_spec_file(str(path))
    create_study(spec, url)
    processes = start_workers(
        spec.name,
        url,
        workers=1,
        timeout=None,
        log_trials=True,
        devices_per_trial=spec.resources.devices_per_trial,
    )
    for process in processes:
        process.join(timeout=600)
    assert [p.exitcode for p in processes] == [0]
    trials = {
        t.params["batch_size"]: t for t in optuna.load_study(study_name="ddp", storage=url).trials
    }
    assert sorted(trials) == [33, 64, 128]
    failed = trials[33]
    assert failed.state == TrialState.FAIL
    assert "not divisible by the trial's 2 devices" in failed.user_attrs["error"]
    for batch in (64, 128):
        trial = trials[batch]
        assert trial.state == TrialState.COMPLETE, trial.user_attrs
        assert trial.user_attrs["batch"] == {
            "effective": batch,
            "micro": batch // 2,
            "accumulation": 1,
            "world_size": 2,
        }
        assert len(trial.intermediate_values) == 2 and trial.value > 0.5
