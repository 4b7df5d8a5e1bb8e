"""A training loop of your own through hpsearch.report / get_checkpoint / safe_point: pruning in
the study's direction, resume with the same curve after kill -9, a stop that hands the trial
back, one decision for every DDP rank, a sharded state, and pausing schedules that accept it."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

import hpsearch
from hpsearch.errors import SpecError
from hpsearch.objectives import interrupt
from hpsearch.objectives.context import TrialContext, trial_context
from hpsearch.search import create_study, load_spec_file, start_workers

from ._loops import (
    asha_pauses_and_resumes_the_loop,
    held_study,
    kill_9_then_resume,
    pbt_exploits_resume_the_loop,
    ranks_agree,
    seen_by_ranks,
    sigterm_hands_back,
    uninterrupted_curve,
)
from ._support import RecordingTrial, study_toml, write_study_file
from .conftest import ROOT
from .test_fault_tolerance import _trials

EXAMPLE = ROOT / "examples" / "own_loop" / "loop.py"
EPOCHS = 8  # as tests/test_engine.py's study, whose resume assertions these tests share
PARAMS = {"epochs": EPOCHS, "batch_size": 128, "width": 32, "lr": 0.003}


def _example() -> Any:
    return runpy.run_path(str(EXAMPLE))["objective"]


def _context(tmp_path: Path, **fields: Any) -> TrialContext:
    values: dict[str, Any] = {
        "checkpoint": str(tmp_path / "slot" / "checkpoint.pt"),
        "metrics": ("mse",),
        "directions": ("minimize",),
        "report_on_resume": True,
    }
    return TrialContext(**{**values, **fields})


# ---------------------------------------------------------------- in one process


def test_a_loop_resumes_from_its_last_report_with_the_curve_of_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    objective = _example()
    whole = RecordingTrial()
    objective(whole, dict(PARAMS))  # outside a worker: no checkpoint, nothing saved
    curve = dict(whole.reports)
    assert sorted(curve) == list(range(EPOCHS))
    assert not (tmp_path / "slot").exists()

    with trial_context(_context(tmp_path)):
        stopped = RecordingTrial(stop_after=3)  # a preempted node, after epoch 2's checkpoint
        with pytest.raises(KeyboardInterrupt):
            objective(stopped, dict(PARAMS))
        resumed = RecordingTrial()
        value = objective(resumed, dict(PARAMS))
    # The resumed run reports epoch 2 again (a kill may have come before its decision), then
    # goes on as if it had never stopped.
    assert [step for step, _ in resumed.reports] == list(range(2, EPOCHS))
    assert resumed.user_attrs["resumed_from_epoch"] == 3
    for step, loss in resumed.reports:
        assert loss == pytest.approx(curve[step], rel=1e-6), step
    assert value == pytest.approx(curve[EPOCHS - 1], rel=1e-6)


def test_pruning_follows_the_study_direction() -> None:
    """A maximized score: the median pruner stops the trial below the median, not the one
    above it (and the prune decision is raised as optuna.TrialPruned)."""

    def objective(trial: optuna.Trial) -> float:
        score = trial.suggest_float("score", 0, 10)
        for step in range(4):
            hpsearch.report(trial, {"score": score, "other": -score}, step)
        return score

    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )
    for score in (5.0, 6.0, 7.0, 1.0, 9.0):
        study.enqueue_trial({"score": score})
    context = TrialContext(metrics=("score",), directions=("maximize",), prunes=True)
    with trial_context(context):
        study.optimize(objective, n_trials=5)
    states = {t.params["score"]: t.state for t in study.trials}
    assert states[1.0] == TrialState.PRUNED
    assert states[9.0] == TrialState.COMPLETE
    assert study.trials[3].last_step == 0  # pruned at its first report


def test_a_resumed_trial_is_asked_again_about_its_last_report(tmp_path: Path) -> None:
    """A kill between a checkpoint and the pruner's decision: the retry decides first."""
    objective = _example()
    with trial_context(_context(tmp_path)):
        with pytest.raises(KeyboardInterrupt):
            objective(RecordingTrial(stop_after=2), dict(PARAMS))
        retry = RecordingTrial(prune_at=0)  # its pruner prunes at the first report it sees
        with pytest.raises(optuna.TrialPruned, match="pruned at step 1 with mse"):
            objective(retry, dict(PARAMS))
    assert retry.reports[0][0] == 1  # the checkpoint's step, reported again before any training


def test_a_stop_is_honoured_at_the_next_report_after_the_checkpoint(tmp_path: Path) -> None:
    objective = _example()
    interrupt.STOP.set()
    try:
        with trial_context(_context(tmp_path)), pytest.raises(hpsearch.TrialInterrupted):
            objective(RecordingTrial(), dict(PARAMS))
    finally:
        interrupt.STOP.clear()
    saved = torch.load(tmp_path / "slot" / "checkpoint.pt", weights_only=False)
    assert (saved["step"], saved["state"]["epoch"]) == (0, 0)  # epoch 0 is kept for the retry


def test_a_report_without_the_study_metric_names_it(tmp_path: Path) -> None:
    with (
        trial_context(_context(tmp_path)),
        pytest.raises(ValueError, match=r"the study's metric 'mse' is not among .*\['loss'\]"),
    ):
        hpsearch.report(RecordingTrial(), {"loss": 1.0}, 0, checkpoint={"epoch": 0})
    assert not (tmp_path / "slot").exists()  # nothing saved for a report that was refused


def test_a_sharded_state_round_trips_on_one_process(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    with trial_context(_context(tmp_path)):
        hpsearch.report(
            RecordingTrial(),
            0.5,
            4,
            checkpoint=hpsearch.Sharded(model, optimizer, {"epoch": 4}),
        )
        assert (tmp_path / "slot" / "checkpoint.pt").is_dir()
        fresh = torch.nn.Linear(4, 2)
        fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.1)
        trial = RecordingTrial()
        with pytest.raises(ValueError, match="is sharded: pass the model and optimizer"):
            hpsearch.get_checkpoint(trial)
        state = hpsearch.get_checkpoint(trial, into=hpsearch.Sharded(fresh, fresh_optimizer))
    assert state == {"epoch": 4}
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 1


def test_a_foreign_file_in_the_slot_starts_over(tmp_path: Path) -> None:
    (tmp_path / "slot").mkdir()
    torch.save({"model": {}}, tmp_path / "slot" / "checkpoint.pt")
    with trial_context(_context(tmp_path)):
        assert hpsearch.get_checkpoint(RecordingTrial()) is None


def test_a_pausing_schedule_takes_a_resumable_loop_and_refuses_a_plain_one(
    tmp_path: Path,
) -> None:
    (tmp_path / "plain.py").write_text("def objective(trial, params):\n    return 0.0\n")
    (tmp_path / "loop.py").write_text(EXAMPLE.read_text())
    scheduler = {"name": "asha", "min_epochs": 1, "max_epochs": 6, "reduction_factor": 3}
    for objective, refused in (("plain.py:objective", True), ("loop.py:objective", False)):
        path = write_study_file(
            tmp_path / f"{objective[:4]}.toml",
            name="asha",
            objective=objective,
            n_trials=6,
            metric="mse",
            pruner=None,
            scheduler=scheduler,
            space={"lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
        )
        if refused:
            with pytest.raises(SpecError, match=r"@hpsearch\.resumable"):
                load_spec_file(str(path))
        else:
            assert load_spec_file(str(path)).scheduler is not None


# ---------------------------------------------------------------- through a worker

HELD = f"""
import runpy

loop = runpy.run_path({str(EXAMPLE)!r})["objective"]


def objective(trial, params):
    return loop(Pausing(trial), params)
"""


def _held(folder: Path, name: str) -> Path:
    training = {k: v for k, v in PARAMS.items() if k not in ("lr", "epochs")}
    return held_study(folder, name, metric="mse", training=training, objective=HELD)


@pytest.fixture(scope="module")
def uninterrupted() -> dict[int, float]:
    return uninterrupted_curve(lambda trial: _example()(trial, dict(PARAMS)))


@pytest.mark.slow
def test_kill_9_of_the_worker_resumes_the_loop_with_the_same_curve(
    postgres_url: str, tmp_path: Path, study_name: str, uninterrupted: dict[int, float]
) -> None:
    study = _held(tmp_path, study_name)
    kill_9_then_resume(postgres_url, tmp_path, study_name, study, uninterrupted)


@pytest.mark.slow
def test_sigterm_hands_the_loop_trial_back_with_its_checkpoint(
    tmp_path: Path, study_name: str
) -> None:
    victim = sigterm_hands_back(tmp_path, study_name, _held(tmp_path, study_name))
    saved = torch.load(victim.user_attrs["checkpoint"], weights_only=False)
    assert saved["state"]["epoch"] == 1  # the retry resumes after epoch 1


# Each rank records what it saw: the parameters, and how each trial ended for it.
RANKS = """
import json, os
import optuna
import torch.distributed as dist
import hpsearch


def objective(trial, params):
    rank = dist.get_rank()
    seen = {"rank": rank, "params": params, "steps": []}
    path = os.path.join(os.path.dirname(__file__), f"trial-{trial.number}-rank-{rank}.json")
    try:
        for step in range(4):
            # Rank 1's values are wrong on purpose: only rank 0's report may reach the study.
            score = params["x"] + step if rank == 0 else -1000.0
            seen["steps"].append(step)
            hpsearch.report(trial, {"score": score}, step)
        seen["end"] = "complete"
        return params["x"] + 3
    except optuna.TrialPruned:
        seen["end"] = "pruned"
        raise
    finally:
        with open(path, "w") as handle:
            json.dump(seen, handle)
"""


@pytest.mark.slow
def test_two_ddp_ranks_get_the_same_parameters_and_decisions(tmp_path: Path) -> None:
    (tmp_path / "ranks.py").write_text(RANKS)
    path = tmp_path / "ranks.toml"
    path.write_text(
        study_toml(
            name="ranks",
            objective="ranks.py:objective",
            n_trials=6,
            metric="score",
            direction="maximize",
            sampler={"name": "random", "seed": 1},
            pruner={"name": "median", "options": {"n_startup_trials": 2, "n_warmup_steps": 0}},
            space={"x": {"type": "float", "low": 0.0, "high": 10.0}},
            resources={"devices_per_trial": 2},
        )
    )
    url = f"sqlite:///{tmp_path / 'ranks.db'}"
    spec = load_spec_file(str(path))
    create_study(spec, url)
    processes = start_workers(
        spec.name, url, workers=1, timeout=None, log_trials=True, devices_per_trial=2
    )
    for process in processes:
        process.join(timeout=600)
    assert [p.exitcode for p in processes] == [0]
    trials = _trials(url, "ranks")
    assert len(trials) == 6
    ranks_agree(tmp_path, trials, maximize=True)
    for trial in trials:
        seen = seen_by_ranks(tmp_path, trial)
        assert seen[0]["params"]["x"] == trial.params["x"]
        assert seen[0]["steps"] == seen[1]["steps"]
        # Only rank 0 reported: every value the study holds is rank 0's.
        assert trial.intermediate_values == {
            step: trial.params["x"] + step for step in seen[0]["steps"]
        }


@pytest.mark.slow
def test_asha_pauses_the_loop_and_resumes_it_with_the_curve_of_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    asha_pauses_and_resumes_the_loop(tmp_path, objective=f"{EXAMPLE}:objective")


@pytest.mark.slow
def test_a_pbt_exploit_resumes_the_loop_from_the_donors_checkpoint(tmp_path: Path) -> None:
    pbt_exploits_resume_the_loop(tmp_path, objective=f"{EXAMPLE}:objective")
