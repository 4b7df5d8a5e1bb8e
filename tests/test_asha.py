"""Successive halving that pauses and promotes: ``[scheduler] name = "asha"``.

The rung arithmetic and the decision at a rung (fast); the study file's checks (fast); real
workers on every backend train the regression example (examples/regression) under the schedule:
the budget stays exact, paused trials are shown as paused, and a promoted configuration's curve
(its paused trial's reports, then its continuation's) is the curve of a run never paused, also
when another worker resumes it; two processes promoting one trial at once enqueue one
continuation; a worker killed (kill -9) as it pauses or as it resumes loses and duplicates
nothing.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

import hpsearch
from hpsearch.attrs import PAUSED, PAUSED_AT_RUNG, PROMOTED_FROM, RETRY_OF, SLOT, WORKER
from hpsearch.errors import SpecError
from hpsearch.search import budget_state, create_study, load_spec_file
from hpsearch.search._study import load_study
from hpsearch.search.results._progress import progress_line
from hpsearch.search.runtime._launch import available_cores
from hpsearch.search.runtime._scheduler import (
    AshaPruner,
    in_top,
    paused_rung,
    promote,
    promoted_from,
)
from hpsearch.search.spec._scheduler import Schedule

from ._support import RecordingTrial, study_toml
from .conftest import ROOT, hpsearch_command

EXAMPLE = ROOT / "examples" / "regression" / "regression.py"
TRAINING = {
    "batch_size": 128,
    "micro_batch": 64,
    "width": 16,
    "depth": 2,
    "optimizer": "adam",
    "schedule": "cosine",  # over max_epochs: a paused and resumed run must follow it exactly
    "device": "cpu",
}
MAX_EPOCHS = 4
SCHEDULER = {"name": "asha", "min_epochs": 1, "max_epochs": MAX_EPOCHS, "reduction_factor": 2}
LR_SPACE = {"lr": {"type": "float", "low": 0.0003, "high": 0.03, "log": True}}

# The example's objective, watched: files in the worker's directory arm one kill each.
WATCHED = f"""
import os
import runpy
import signal

import hpsearch

example = runpy.run_path({str(EXAMPLE)!r})


def armed(name):
    if os.path.exists(name):
        os.remove(name)  # one kill per file
        return True
    return False


class Watched:
    def __init__(self, trial):
        self.trial = trial

    def __getattr__(self, name):
        return getattr(self.trial, name)

    def report(self, value, step):
        # A continuation that trained an epoch past its rung, checkpoint written, report not.
        if "resumed_at_rung" in self.trial.user_attrs and armed("kill-resuming"):
            os.kill(os.getpid(), signal.SIGKILL)
        self.trial.report(value, step)

    def should_prune(self):
        decided = self.trial.should_prune()
        if decided and armed("kill-pausing"):  # paused at the rung, not yet ended
            os.kill(os.getpid(), signal.SIGKILL)
        return decided


@hpsearch.uses_engine(options=["width", "depth"])
def objective(trial, params):
    if os.path.exists("slot-0-only") and trial.number != 0 and os.environ.get("RANK", "0") == "0":
        os.kill(os.getpid(), signal.SIGTERM)  # this worker stops: the trial goes back, unused
    if os.path.exists("slot-0-best") and "slot-000000" not in str(trial.user_attrs["checkpoint"]):
        params = dict(params, lr=params["lr"] / 30)  # a worse configuration in other slots
    return example["objective"](Watched(trial), params)
"""


# --- the rungs and the decision ---------------------------------------------------------------


def test_rungs_are_min_epochs_times_powers_of_the_reduction_factor() -> None:
    assert Schedule(1, 27, 3).rungs == [1, 3, 9]
    assert Schedule(2, 20, 2).rungs == [2, 4, 8, 16]
    assert Schedule(1, 2, 4).rungs == [1]
    schedule = Schedule(1, 27, 3)
    assert [schedule.rung_at(step) for step in (0, 1, 2, 8, 26)] == [0, None, 1, 2, None]


def test_the_top_floor_n_over_eta_of_a_rung_goes_on() -> None:
    assert not in_top(0.1, [0.1], 2, maximize=False)  # one of one: floor(1/2) = 0 go on
    assert in_top(0.1, [0.1, 0.5], 2, maximize=False)
    assert not in_top(0.5, [0.1, 0.5], 2, maximize=False)
    assert in_top(0.5, [0.1, 0.5], 2, maximize=True)
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert [in_top(v, values, 3, maximize=False) for v in values] == [True, True] + [False] * 5


def _trial(number: int, slot: int, values: dict[int, float], *, paused: int | None = None) -> Any:
    system: dict[str, Any] = {SLOT: slot}
    if paused is not None:
        system[PAUSED] = [number, paused]
    return optuna.trial.create_trial(
        state=TrialState.PRUNED,
        params={"lr": 0.001 * (slot + 1)},
        distributions={"lr": FloatDistribution(1e-4, 1.0)},
        intermediate_values=values,
        system_attrs=system,
    )


def test_a_rung_counts_paused_configurations_and_a_paused_one_is_promoted_once() -> None:
    study = optuna.create_study(direction="minimize")
    schedule = Schedule(1, 4, 2)
    # Three configurations paused at rung 0 (epoch 1): none was in the top floor(n/2) then.
    for number, value in enumerate([0.5, 0.3, 0.9]):
        study.add_trial(_trial(number, number, {0: value}, paused=0))
    assert [paused_rung(t) for t in study.trials] == [0, 0, 0]
    # A fourth reaches the rung: floor(4/2) = 2 go on, it is second best: it goes on.
    study.pruner = AshaPruner(schedule)
    second = study.ask()
    second.report(0.4, 0)
    assert second.should_prune() is False
    study.tell(second, 0.4)
    # A fifth, worse than the top 2 of 5: paused at rung 0, and marked so.
    worse = study.ask()
    worse.report(0.8, 0)
    assert worse.should_prune() is True
    frozen = study.tell(worse, state=TrialState.PRUNED)
    assert paused_rung(frozen) == 0 and frozen.user_attrs[PAUSED_AT_RUNG] == 0
    # Now 0.3 (trial 1) is in the top 2 of its rung: promoted, once, with its curve and slot.
    assert promote(study, None, schedule, last=False)
    assert not promote(study, None, schedule, last=False)
    (continuation,) = [t for t in study.trials if promoted_from(t) is not None]
    assert continuation.state == TrialState.WAITING
    assert (promoted_from(continuation), continuation.system_attrs[SLOT]) == (1, 1)
    assert continuation.params == study.trials[1].params
    assert continuation.intermediate_values == {0: 0.3}


# --- the study file ---------------------------------------------------------------------------


def _spec(tmp_path: Path, **changes: Any) -> Any:
    study: dict[str, Any] = {
        "name": "asha",
        "objective": f"{EXAMPLE}:objective",
        "n_trials": 4,
        "metric": "mse",
        "training": dict(TRAINING),
        "scheduler": dict(SCHEDULER),
        "space": LR_SPACE,
        **changes,
    }
    path = tmp_path / "asha.toml"
    path.write_text(study_toml(**study))
    return load_spec_file(str(path))


def test_a_schedule_trains_every_configuration_towards_max_epochs(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    assert spec.scheduler == Schedule(1, MAX_EPOCHS, 2)
    assert spec.training["epochs"] == MAX_EPOCHS
    assert spec.pruner.name == "none"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"scheduler": {**SCHEDULER, "max_epoch": 3}},
            "[scheduler]: unknown key 'max_epoch'. Did you mean 'max_epochs'?",
        ),
        ({"scheduler": {**SCHEDULER, "name": "ashaa"}}, "unknown scheduler 'ashaa'."),
        (
            {"scheduler": {**SCHEDULER, "min_epochs": 4}},
            "max_epochs (4) must be larger than min_epochs (4)",
        ),
        ({"scheduler": {**SCHEDULER, "reduction_factor": 1}}, "reduction_factor must be >= 2"),
        (
            {"scheduler": {"name": "asha", "max_epochs": 4, "reduction_factor": 2}},
            "min_epochs is required",
        ),
        ({"training": {**TRAINING, "epochs": 9}}, "[training]: epochs: [scheduler] max_epochs"),
        ({"pruner": {"name": "median"}}, "[pruner]: name = 'median': [scheduler] decides"),
    ],
)
def test_a_bad_schedule_is_refused_in_one_line(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError) as raised:
        _spec(tmp_path, **changes)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_an_objective_that_cannot_resume_is_refused_at_create(
    tmp_path: Path, write_study: Any
) -> None:
    path = write_study(body=f"[scheduler]\n{_toml(SCHEDULER)}")
    url = f"sqlite:///{tmp_path / 'refused.db'}"
    result = subprocess.run(
        [*hpsearch_command(), "create", str(path), "--storage", url],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "quadratic.py:quadratic' does not train through hpsearch.fit" in line
    assert "@hpsearch.uses_engine" in line
    assert not (tmp_path / "refused.db").exists()


def _toml(table: dict[str, Any]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())


# --- real workers -----------------------------------------------------------------------------


def _write(
    folder: Path,
    name: str,
    n_trials: int,
    space: dict[str, Any] = LR_SPACE,
    sampler: dict[str, Any] | None = None,
    **training: Any,
) -> Path:
    (folder / "watched.py").write_text(WATCHED)
    path = folder / f"{name}.toml"
    path.write_text(
        study_toml(
            name=name,
            objective=f"{folder / 'watched.py'}:objective",
            n_trials=n_trials,
            metric="mse",
            sampler=sampler or {"name": "random", "seed": 5},
            training={**TRAINING, **training},
            scheduler=SCHEDULER,
            resources={
                "heartbeat_interval": 1,
                "grace_period": 3,
                "artifacts": str(folder / "artifacts"),
            },
            space=space,
        )
    )
    return path


def _worker(name: str, url: str, cwd: Path, *options: str, ok: bool = True) -> str:
    command = [*hpsearch_command(), "worker", "--study", name, "--storage", url, "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if options else None
    result = subprocess.run(
        [*command, *options], capture_output=True, text=True, cwd=cwd, timeout=600, env=env
    )
    if ok:
        assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def _trials(url: str, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _reference(lr: float, **training: Any) -> dict[int, float]:
    """The curve of a run with these params never paused: the example's objective called as a
    lone worker calls it (as many torch threads)."""
    import runpy

    example = runpy.run_path(str(EXAMPLE))
    threads = torch.get_num_threads()
    torch.set_num_threads(available_cores())
    try:
        trial = RecordingTrial()
        example["objective"](trial, {**TRAINING, **training, "epochs": MAX_EPOCHS, "lr": lr})
    finally:
        torch.set_num_threads(threads)
    return dict(trial.reports)


def assert_budget_exact(trials: Iterable[FrozenTrial], n_trials: int) -> None:
    """Every slot ends once: one COMPLETE trial, or one paused trial never promoted; each
    paused trial is promoted by one continuation at most; nothing is left to run."""
    trials = list(trials)
    state = budget_state(trials, n_trials)
    assert (state.used, state.running, state.waiting, state.failed) == (n_trials, 0, 0, 0), state
    continuations = [promoted_from(t) for t in trials if PROMOTED_FROM in t.system_attrs]
    # A retry of a killed continuation carries its paused trial too: count the first ones.
    first = [
        promoted_from(t)
        for t in trials
        if PROMOTED_FROM in t.system_attrs and RETRY_OF not in t.system_attrs
    ]
    assert len(first) == len(set(first)), continuations
    final: dict[int, list[int]] = {}
    promoted = set(first)
    for t in trials:
        if t.state == TrialState.COMPLETE or (
            paused_rung(t) is not None and t.number not in promoted
        ):
            final.setdefault(int(t.system_attrs[SLOT]), []).append(t.number)
    assert sorted(final) == list(range(n_trials)), final
    assert all(len(numbers) == 1 for numbers in final.values()), final
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == list(range(MAX_EPOCHS)), t.number


def assert_curve(trial: FrozenTrial, reference: dict[int, float]) -> None:
    assert sorted(trial.intermediate_values) == sorted(reference)
    for epoch, value in reference.items():
        assert trial.intermediate_values[epoch] == pytest.approx(value, rel=1e-6, abs=1e-9), epoch


@pytest.mark.slow
def test_a_study_pauses_promotes_and_keeps_its_budget_on_every_backend(
    storage_url: str, tmp_path: Path, study_name: str
) -> None:
    n_trials = 6
    create_study(load_spec_file(str(_write(tmp_path, study_name, n_trials))), storage_url)
    log = _worker(study_name, storage_url, tmp_path)
    assert "paused at rung 0" in log
    trials = _trials(storage_url, study_name)
    assert_budget_exact(trials, n_trials)
    by_number = {t.number: t for t in trials}
    resumed = [t for t in trials if promoted_from(t) is not None]
    assert resumed, "no configuration was promoted"
    for continuation in resumed:
        paused = by_number[promoted_from(continuation)]  # type: ignore[index]
        assert paused.state == TrialState.PRUNED and paused_rung(paused) is not None
        assert continuation.params == paused.params
        # Its log line names the paused trial it resumes.
        assert f"trial {continuation.number} (resumes trial {paused.number}) " in log
        # The continuation holds the curve so far and goes on from its rung's checkpoint.
        rung_epoch = max(paused.intermediate_values) + 1
        assert {k: v for k, v in continuation.intermediate_values.items() if k < rung_epoch} == (
            paused.intermediate_values
        )
        if continuation.state == TrialState.COMPLETE:
            assert continuation.user_attrs["resumed_from_epoch"] == rung_epoch
            assert_curve(continuation, _reference(continuation.params["lr"]))
    # The final result of a configuration is an ordinary COMPLETE trial.
    best = optuna.load_study(study_name=study_name, storage=storage_url).best_trial
    assert best.state == TrialState.COMPLETE

    # status: paused trials with their rung, never failed.
    result = subprocess.run(
        [*hpsearch_command(), "status", "--study", study_name, "--storage", storage_url, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    status = json.loads(result.stdout)
    still_paused = [
        t
        for t in trials
        if paused_rung(t) is not None and t.number not in {promoted_from(c) for c in resumed}
    ]
    assert status["budget"]["used"] == n_trials
    assert status["states"]["failed"] == 0
    assert status["states"]["paused"] == len(still_paused)
    assert {(p["trial"], p["rung"]) for p in status["paused"]} == {
        (t.number, paused_rung(t)) for t in still_paused
    }
    text = subprocess.run(
        [*hpsearch_command(), "status", "--study", study_name, "--storage", storage_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if still_paused:
        assert f"paused     trial {still_paused[0].number} at rung" in text
        loaded = load_study(study_name, storage_url)
        line = progress_line(loaded.study, loaded.spec, time.monotonic())
        assert (
            f"{n_trials}/{n_trials} trials (0 pruned, 0 failed, {len(still_paused)} paused)" in line
        )
    # studies: a paused configuration's slot is done, and counted as paused.
    listing = subprocess.run(
        [*hpsearch_command(), "studies", "--storage", storage_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert listing[0].split() == [
        "study", "objective", "done", "pruned", "paused", "failed", "running", "best"
    ]  # fmt: skip
    [row] = [line.split() for line in listing[1:] if line.split()[0] == study_name]
    assert row[2:7] == [f"{n_trials}/{n_trials}", "0", str(len(still_paused)), "0", "0"], row
    [summary] = [r for r in hpsearch.studies(storage=storage_url) if r["study"] == study_name]
    assert (summary["used"], summary["paused"]) == (n_trials, len(still_paused))


@pytest.mark.slow
def test_an_asha_study_whose_budget_is_raised_ends_each_new_slot_once(
    tmp_path: Path, study_name: str
) -> None:
    url = f"sqlite:///{tmp_path / 'raised.db'}"
    create_study(load_spec_file(str(_write(tmp_path, study_name, 3))), url)
    _worker(study_name, url, tmp_path)
    assert_budget_exact(_trials(url, study_name), 3)
    result = create_study(load_spec_file(str(_write(tmp_path, study_name, 7))), url)
    assert result.raised == ("n_trials 3 -> 7",)
    _worker(study_name, url, tmp_path)
    assert_budget_exact(_trials(url, study_name), 7)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["grid", "tpe", "qmc"])
def test_every_sampler_leaves_a_continuation_its_parameters(
    tmp_path: Path, study_name: str, sampler: str
) -> None:
    """A continuation carries its parameters as an enqueued trial does: no sampler proposes
    new ones for it, and a grid sampler that stops the study once its grid is used up still
    lets the paused configurations be promoted and finished."""
    url = f"sqlite:///{tmp_path / 'samplers.db'}"
    space = {"lr": {"type": "categorical", "choices": [0.0003, 0.001, 0.003, 0.01]}}
    path = _write(tmp_path, study_name, 4, space, {"name": sampler, "seed": 2})
    create_study(load_spec_file(str(path)), url)
    _worker(study_name, url, tmp_path)
    trials = _trials(url, study_name)
    assert_budget_exact(trials, 4)
    by_number = {t.number: t for t in trials}
    resumed = [t for t in trials if promoted_from(t) is not None]
    assert any(t.state == TrialState.COMPLETE for t in resumed)
    for continuation in resumed:
        assert continuation.params == by_number[promoted_from(continuation)].params  # type: ignore[index]
    if sampler == "grid":  # the grid ran each point once
        first = [t for t in trials if promoted_from(t) is None]
        assert sorted(t.params["lr"] for t in first) == [0.0003, 0.001, 0.003, 0.01]


@pytest.mark.slow
def test_a_paused_trial_resumes_on_another_worker_with_the_curve_of_an_uninterrupted_run(
    tmp_path: Path, study_name: str
) -> None:
    url = f"sqlite:///{tmp_path / 'moved.db'}"
    # One configuration in every slot: the first to reach a rung is paused there (one of one).
    space = {"lr": {"type": "categorical", "choices": [0.003]}}
    create_study(load_spec_file(str(_write(tmp_path, study_name, 2, space))), url)
    # Worker A runs slot 0 to its pause at rung 0, then stops as it starts slot 1.
    (tmp_path / "slot-0-only").touch()
    _worker(study_name, url, tmp_path, ok=False)
    (paused,) = [t for t in _trials(url, study_name) if paused_rung(t) is not None]
    assert (paused.system_attrs[SLOT], paused_rung(paused)) == (0, 0)
    # Worker B (another process) finishes the study and resumes it.
    (tmp_path / "slot-0-only").unlink()
    _worker(study_name, url, tmp_path)
    trials = _trials(url, study_name)
    assert_budget_exact(trials, 2)
    (continuation,) = [t for t in trials if promoted_from(t) == paused.number]
    assert continuation.user_attrs[WORKER]["pid"] != paused.user_attrs[WORKER]["pid"]
    assert continuation.state == TrialState.COMPLETE
    assert continuation.user_attrs["resumed_from_epoch"] == 1
    assert_curve(continuation, _reference(0.003))


@pytest.mark.slow
def test_a_configuration_paused_on_two_sharded_ranks_resumes_on_one_device(
    tmp_path: Path, study_name: str
) -> None:
    url = f"sqlite:///{tmp_path / 'sharded.db'}"
    space = {"lr": {"type": "categorical", "choices": [0.003]}}
    path = _write(tmp_path, study_name, 2, space, strategy="fsdp")
    create_study(load_spec_file(str(path)), url)
    (tmp_path / "slot-0-only").touch()
    (tmp_path / "slot-0-best").touch()
    _worker(study_name, url, tmp_path, "--devices-per-trial", "2", ok=False)
    (paused,) = [t for t in _trials(url, study_name) if paused_rung(t) is not None]
    assert paused.user_attrs["batch"]["world_size"] == 2
    assert Path(paused.user_attrs["checkpoint"]).is_dir()  # a folder of shards
    (tmp_path / "slot-0-only").unlink()
    _worker(study_name, url, tmp_path, "--devices-per-trial", "1")
    trials = _trials(url, study_name)
    assert_budget_exact(trials, 2)
    (continuation,) = [t for t in trials if promoted_from(t) == paused.number]
    assert continuation.user_attrs["batch"]["world_size"] == 1
    assert continuation.user_attrs["resumed_from_epoch"] == 1
    (final,) = [t for t in trials if t.state == TrialState.COMPLETE]
    assert final.system_attrs[SLOT] == 0
    # One device sums what two ranks summed in another order: the same curve, to rounding.
    reference = _reference(0.003, strategy="fsdp")
    assert sorted(final.intermediate_values) == sorted(reference)
    for epoch, value in reference.items():
        assert final.intermediate_values[epoch] == pytest.approx(value, rel=1e-4), epoch


def _promote_in_a_process(name: str, url: str, start: Any, results: Any) -> None:
    loaded = load_study(name, url)
    schedule = loaded.spec.scheduler
    assert schedule is not None
    start.wait()
    results.put(promote(loaded.study, loaded.storage, schedule, last=False))


@pytest.mark.slow
def test_two_workers_racing_for_one_promotion_enqueue_one_continuation(
    storage_url: str, tmp_path: Path, study_name: str
) -> None:
    create_study(load_spec_file(str(_write(tmp_path, study_name, 2))), storage_url)
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    # Slots 0 and 1 are ours, paused at rung 0: slot 1 (the better) is now promotable.
    for trial in study.get_trials(states=(TrialState.WAITING,)):
        study._storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING)
        study._storage.set_trial_intermediate_value(trial._trial_id, 0, 1.0 - trial.number / 2)
        study._storage.set_trial_system_attr(trial._trial_id, PAUSED, [trial.number, 0])
        study._storage.set_trial_state_values(trial._trial_id, TrialState.PRUNED)
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    racers = [
        context.Process(
            target=_promote_in_a_process, args=(study_name, storage_url, start, results)
        )
        for _ in range(4)
    ]
    for racer in racers:
        racer.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in racers]
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0
    assert outcomes.count(True) == 1
    continuations = [t for t in _trials(storage_url, study_name) if promoted_from(t) is not None]
    assert [(promoted_from(t), t.state) for t in continuations] == [(1, TrialState.WAITING)]


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["kill-pausing", "kill-resuming"])
def test_a_worker_killed_as_it_pauses_or_resumes_loses_and_duplicates_nothing(
    postgres_url: str, tmp_path: Path, study_name: str, kill: str
) -> None:
    n_trials = 4
    create_study(load_spec_file(str(_write(tmp_path, study_name, n_trials))), postgres_url)
    (tmp_path / kill).touch()
    log = _worker(study_name, postgres_url, tmp_path, ok=False)
    assert not (tmp_path / kill).exists(), log[-3000:]  # it was killed there
    # Another worker reaps the dead trial after its grace period and finishes the study.
    _worker(study_name, postgres_url, tmp_path)
    trials = _trials(postgres_url, study_name)
    assert_budget_exact(trials, n_trials)
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]
    assert "error" not in dead.user_attrs
    (retry,) = [t for t in trials if t.system_attrs.get(RETRY_OF) == dead.number]
    assert retry.system_attrs[SLOT] == dead.system_attrs[SLOT]
    assert promoted_from(retry) == promoted_from(dead)
    # The retry resumed from the dead trial's checkpoint and the decision the dead trial was
    # taking is taken again: no report and no pause is lost.
    assert set(dead.intermediate_values) <= set(retry.intermediate_values)
    assert retry.user_attrs["resumed_from_epoch"] >= 1
    if kill == "kill-pausing":
        # The first configuration at rung 0 is one of one: paused, then and again.
        assert dead.system_attrs[PAUSED] == [dead.number, 0]
        assert paused_rung(retry) == 0
        assert sorted(retry.intermediate_values) == [0]
    else:
        # Killed with the epoch after its rung checkpointed and not reported: the retry
        # reports it from the checkpoint.
        assert promoted_from(dead) is not None
        assert max(dead.intermediate_values) + 1 in retry.intermediate_values
        if retry.state == TrialState.COMPLETE:
            assert_curve(retry, _reference(retry.params["lr"]))
