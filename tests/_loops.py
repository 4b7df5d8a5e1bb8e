"""What the tests of every kind of training loop share (a loop through hpsearch.report, a command,
the Lightning and Hugging Face callbacks): the curve of an uninterrupted run, a study whose trial
is held mid-way, kill -9 and SIGTERM of its worker, and the checks on what each DDP rank saw."""

from __future__ import annotations

import functools
import json
import os
import runpy
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import EXPLOITED, PAUSED, RESUMED_FROM_EPOCH, SLOT
from hpsearch.search import create_study, load_spec_file, start_workers
from hpsearch.search.runtime._launch import available_cores

from ._support import PAUSING_TRIAL, RecordingTrial, study_toml, write_study_file
from .conftest import ROOT
from .test_engine import assert_resumed_like_uninterrupted, run_worker, start_and_wait
from .test_fault_tolerance import _trials

# The study of tests/test_engine.py's resume assertions: one configuration, lr 0.003, 8 epochs.
LR = 0.003
EPOCHS = 8


def uninterrupted_curve(train: Callable[[RecordingTrial], Any]) -> dict[int, float]:
    """The reports of ``train(trial)``, run here with the torch threads a lone worker takes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(available_cores())
    try:
        trial = RecordingTrial()
        train(trial)
    finally:
        torch.set_num_threads(threads)
    return dict(trial.reports)


def held_study(
    folder: Path,
    name: str,
    *,
    metric: str,
    training: dict[str, Any],
    objective: str | None = None,
    command: str | None = None,
) -> Path:
    """A one-trial study whose trial is held after epoch 1's report while ``folder / "pause"``
    exists. ``objective``: Python source that defines ``objective(trial, params)`` with the
    class ``Pausing`` (tests/_support.PAUSING_TRIAL) in scope; ``command``: a command study's
    command line instead (its script holds its trial itself)."""
    if command is None:
        (folder / "pausing.py").write_text(PAUSING_TRIAL + (objective or ""))
        objective = f"{folder / 'pausing.py'}:objective"
    path = folder / f"{name}.toml"
    path.write_text(
        study_toml(
            name=name,
            objective=None if command is not None else objective,
            command=command,
            n_trials=1,
            metric=metric,
            training={"epochs": EPOCHS, **training},
            space={"lr": {"type": "categorical", "choices": [LR]}},
            resources={
                "heartbeat_interval": 1,
                "grace_period": 3,
                "artifacts": str(folder / "a"),
            },
        )
    )
    return path


def kill_9_then_resume(
    url: str,
    folder: Path,
    name: str,
    study: Path,
    reference: dict[int, float],
    *,
    after_kill: Callable[[FrozenTrial], None] = lambda victim: None,
) -> FrozenTrial:
    """Kill -9 the worker of the held trial (then ``after_kill(trial)``), let a new worker
    retry it: the retry resumes with ``reference``'s curve. The killed trial."""
    create_study(load_spec_file(str(study)), url)
    parent, victim = start_and_wait(name, url, folder)
    os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
    parent.communicate(timeout=120)
    after_kill(victim)
    (folder / "pause").unlink()
    run_worker(name, url, folder)  # reaps the dead trial after its grace period, resumes it
    assert_resumed_like_uninterrupted(url, name, victim, reference)
    return victim


def sigterm_hands_back(folder: Path, name: str, study: Path) -> FrozenTrial:
    """SIGTERM to the worker of the held trial: it hands the trial back (failed, unused, a
    waiting retry with its parameters) and exits 0. The handed-back trial."""
    url = f"sqlite:///{folder / 'sigterm.db'}"
    create_study(load_spec_file(str(study)), url)
    parent, victim = start_and_wait(name, url, folder)
    parent.send_signal(signal.SIGTERM)
    _, log = parent.communicate(timeout=120)
    assert parent.returncode == 0, log[-3000:]
    assert "SIGTERM: handing the running trial back" in log
    trials = _trials(url, name)
    handed_back = next(t for t in trials if t.number == victim.number)
    assert handed_back.state == TrialState.FAIL and "error" not in handed_back.user_attrs
    (retry,) = [t for t in trials if t.number != victim.number]
    assert retry.state == TrialState.WAITING and retry.params == victim.params
    return victim


def seen_by_ranks(folder: Path, trial: FrozenTrial) -> list[dict[str, Any]]:
    """What ranks 0 and 1 wrote of ``trial`` (``trial-N-rank-R.json`` in ``folder``)."""
    return [
        json.loads((folder / f"trial-{trial.number}-rank-{rank}.json").read_text())
        for rank in (0, 1)
    ]


def ranks_agree(folder: Path, trials: list[FrozenTrial], *, maximize: bool) -> None:
    """Each trial's ranks 0 and 1 wrote ``trial-N-rank-R.json`` with the parameters they got
    (``params``) and how the trial ended for them (``end``: complete or pruned): the same on
    both ranks and as the study recorded; some trials pruned, some not, and each pruned one
    worse, in the study's direction, than a completed one at its last step."""
    for trial in trials:
        seen = seen_by_ranks(folder, trial)
        assert seen[0]["params"] == seen[1]["params"], trial.number
        assert seen[0]["end"] == seen[1]["end"], trial.number
        assert trial.state == (
            TrialState.PRUNED if seen[0]["end"] == "pruned" else TrialState.COMPLETE
        )
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert complete and pruned, [t.state for t in trials]
    for trial in pruned:
        step = max(trial.intermediate_values)
        value = trial.intermediate_values[step]
        better = [c.intermediate_values[step] for c in complete]
        assert any((b > value) if maximize else (b < value) for b in better), trial.number


def _run_with_one_worker(path: Path, url: str) -> list[FrozenTrial]:
    """The study file at ``path`` created in ``url`` and run to its end by one worker; its
    trials."""
    spec = load_spec_file(str(path))
    create_study(spec, url)
    processes = start_workers(spec.name, url, workers=1, timeout=None, log_trials=True)
    for process in processes:
        process.join(timeout=600)
    assert [p.exitcode for p in processes] == [0]
    return _trials(url, spec.name)


OWN_LOOP = ROOT / "examples" / "own_loop" / "loop.py"


def asha_pauses_and_resumes_the_loop(folder: Path, **study: Any) -> None:
    """``examples/own_loop``'s loop (``study``: ``objective=`` the loop, or ``command=`` its
    script, with any more study_toml sections) under ASHA over 4 learning rates with one worker:
    some configuration is paused and promoted, and each promoted one that completes has the
    curve of an uninterrupted run."""
    import pytest

    rates = [0.0003, 0.001, 0.003, 0.01]
    path = write_study_file(
        folder / "asha.toml",
        name="asha-loop",
        n_trials=len(rates),
        metric="mse",
        pruner=None,
        sampler={"name": "grid"},
        scheduler={"name": "asha", "min_epochs": 1, "max_epochs": 4, "reduction_factor": 2},
        training={"batch_size": 128, "width": 32},
        space={"lr": {"type": "categorical", "choices": rates}},
        resources={"artifacts": str(folder / "artifacts")},  # not the test's directory
        **study,
    )
    url = f"sqlite:///{folder / 'asha.db'}"
    trials = _run_with_one_worker(path, url)
    continued = [t for t in trials if "resumed_at_rung" in t.user_attrs]
    assert continued, "no paused trial was promoted"
    loop = runpy.run_path(str(OWN_LOOP))["objective"]
    for trial in continued:
        if trial.state != TrialState.COMPLETE:
            continue  # paused again at a higher rung
        assert trial.user_attrs["resumed_from_epoch"] >= 1
        params = {"epochs": 4, "batch_size": 128, "width": 32, "lr": trial.params["lr"]}
        reference = uninterrupted_curve(functools.partial(loop, params=params))
        assert sorted(trial.intermediate_values) == [0, 1, 2, 3]
        for step, value in reference.items():
            assert trial.intermediate_values[step] == pytest.approx(value, rel=1e-6), step
    assert any(t.state == TrialState.COMPLETE for t in continued)


def pbt_exploits_resume_the_loop(folder: Path, **study: Any) -> None:
    """``examples/own_loop``'s loop (as for :func:`asha_pauses_and_resumes_the_loop`) as a PBT
    population of 4 exploring lr, compared every epoch up to 3, with one worker: every member
    ends once, COMPLETE after 3 epochs; and some member took another's checkpoint: it resumed at
    the exploit's epoch with the donor's curve up to there."""
    path = write_study_file(
        folder / "pbt.toml",
        name="pbt-loop",
        n_trials=4,
        metric="mse",
        pruner=None,
        sampler={"name": "random", "seed": 0},
        scheduler={"name": "pbt", "population": 4, "interval_epochs": 1, "max_epochs": 3},
        training={"batch_size": 128, "width": 32},
        space={"lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True}},
        resources={"artifacts": str(folder / "artifacts")},
        **study,
    )
    url = f"sqlite:///{folder / 'pbt.db'}"
    trials = _run_with_one_worker(path, url)
    finals = sorted(int(t.system_attrs[SLOT]) for t in trials if t.state == TrialState.COMPLETE)
    assert finals == [0, 1, 2, 3]
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            assert sorted(trial.intermediate_values) == [0, 1, 2]
    exploits = [t for t in trials if EXPLOITED in t.user_attrs]
    assert exploits, "no member took another's checkpoint"
    for trial in exploits:
        epoch, donor = (
            trial.user_attrs[EXPLOITED]["at_epoch"],
            trial.user_attrs[EXPLOITED]["from_slot"],
        )
        assert trial.user_attrs[RESUMED_FROM_EPOCH] == epoch
        (pause,) = [
            t
            for t in trials
            if t.system_attrs.get(SLOT) == donor
            and t.system_attrs.get(PAUSED, [None, None]) == [t.number, epoch - 1]
        ]
        for step in range(epoch):
            assert trial.intermediate_values[step] == pause.intermediate_values[step]
