"""Command objectives ([study] command): any script as a trial, reporting through printed lines
or through hpsearch.connect(); exit codes, crashes, hangs, prunes, kill -9 and SIGTERM handled
as for Python objectives; torchrun ranks with one set of parameters and decisions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from hpsearch.errors import SpecError
from hpsearch.search import create_study, load_spec_file, start_workers

from ._loops import (
    asha_pauses_and_resumes_the_loop,
    held_study,
    kill_9_then_resume,
    pbt_exploits_resume_the_loop,
    ranks_agree,
    seen_by_ranks,
    sigterm_hands_back,
)
from ._support import PAUSING_TRIAL, study_toml
from .conftest import ROOT, hpsearch_command
from .test_fault_tolerance import _trials
from .test_own_loop import uninterrupted  # noqa: F401  (a fixture)

TRAIN = ROOT / "examples" / "own_loop" / "train.py"
TRAIN_COMMAND = (
    f"python {TRAIN} --lr {{lr}} --batch-size {{batch_size}} --width {{width}} --epochs {{epochs}}"
)
RESUMES = {"command_resumes": True}  # train.py resumes from hpsearch.get_checkpoint

# Prints its reports: `hpsearch: step=N loss=V` (what a script in any language can do).
LINES = """
import os, sys, time
x = float(sys.argv[1])
with open(f"seen-{os.environ['HPSEARCH_TRIAL']}.json", "w") as f:
    f.write(" ".join(sys.argv[1:]))
mode = sys.argv[2] if len(sys.argv) > 2 else "ok"
for step in range(4):
    value = (x - 2) ** 2 + 1 / (step + 1)
    if mode == "first-best":  # trial 0 scores 10 at every step, the others 0
        value = 10.0 if os.environ["HPSEARCH_TRIAL"] == "0" else 0.0
    print(f"hpsearch: step={step} loss={value}", flush=True)
    print("an ordinary line of the script's own")
    if mode == "hang":
        time.sleep(600)
    if mode == "crash" and step == 1:
        print("about to fail", flush=True)
        sys.exit(3)
    if mode == "kill" and step == 1:
        os.kill(os.getpid(), 9)
    if mode == "first-best" and os.environ["HPSEARCH_TRIAL"] != "0":
        time.sleep(60)  # only the worker ends it early
"""


def _study(tmp_path: Path, command: str, **extra: Any) -> Any:
    (tmp_path / "lines.py").write_text(LINES)
    sections = {
        "name": "cmd",
        "command": command,
        "n_trials": 2,
        "metric": "loss",
        "space": {"x": {"type": "float", "low": 0.0, "high": 4.0}},
        **extra,
    }
    text = study_toml(**sections)
    path = tmp_path / "cmd.toml"
    path.write_text(text)
    return path


def _run(tmp_path: Path, path: Path, **options: Any) -> list[Any]:
    url = f"sqlite:///{tmp_path / 'cmd.db'}"
    spec = load_spec_file(str(path))
    create_study(spec, url)
    processes = start_workers(spec.name, url, workers=1, timeout=None, log_trials=True, **options)
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0]
    return _trials(url, spec.name)


# ---------------------------------------------------------------- the study file


@pytest.mark.parametrize(
    ("command", "extra", "message"),
    [
        (
            "python lines.py {x} {trail}",
            {},
            r"the placeholder \{trail\} names no parameter\. Did you mean 'trial'",
        ),
        ("python lines.py {x", {}, "the word '{x': expected '}' before end of string"),
        ("python 'lines.py {x}", {}, "cannot be split into words"),
        ("   ", {}, "command must be the command line to run per trial"),
        (
            "python lines.py {x}",
            {"resources": {"nodes_per_trial": 2}},
            "nodes_per_trial > 1 with a command",
        ),
        (
            "python lines.py {x}",
            {
                "pruner": None,
                "scheduler": {
                    "name": "asha",
                    "min_epochs": 1,
                    "max_epochs": 4,
                    "reduction_factor": 2,
                },
            },
            "set command_resumes = true under",
        ),
    ],
)
def test_a_bad_command_is_refused_at_create(
    tmp_path: Path, command: str, extra: dict[str, Any], message: str
) -> None:
    path = _study(tmp_path, command, **extra)
    with pytest.raises(SpecError, match=message):
        load_spec_file(str(path))


def test_a_command_and_an_objective_together_are_refused(tmp_path: Path) -> None:
    path = _study(tmp_path, "python lines.py {x}")
    path.write_text(path.read_text().replace("[study]\n", '[study]\nobjective = "digits-mlp"\n'))
    with pytest.raises(SpecError, match="give objective or command, not both"):
        load_spec_file(str(path))


def test_the_cli_refuses_a_bad_placeholder_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    path = _study(tmp_path, "python lines.py {lr}")
    url = f"sqlite:///{tmp_path / 'cmd.db'}"
    result = subprocess.run(
        [*hpsearch_command(), "create", str(path), "--storage", url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "{lr} names no parameter" in result.stderr


# ---------------------------------------------------------------- runs


def test_a_printing_script_reports_its_lines_and_gets_its_parameters(tmp_path: Path) -> None:
    trials = _run(tmp_path, _study(tmp_path, "python lines.py {x} ok {trial} {devices}"))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:
        x = trial.params["x"]
        assert trial.intermediate_values == {s: (x - 2) ** 2 + 1 / (s + 1) for s in range(4)}
        assert trial.value == pytest.approx((x - 2) ** 2 + 0.25)
        seen = (tmp_path / f"seen-{trial.number}.json").read_text().split()
        assert seen == [repr(x), "ok", str(trial.number), "1"]


def test_a_failing_crashing_or_silent_script_fails_its_trial_with_its_output(
    tmp_path: Path,
) -> None:
    study = _study(
        tmp_path,
        "python lines.py {x} {mode}",
        n_trials=3,
        sampler={"name": "grid"},
        space={
            "x": {"type": "categorical", "choices": [1.0]},
            "mode": {"type": "categorical", "choices": ["crash", "kill", "hang"]},
        },
        resources={"max_consecutive_failures": 5},
    )
    study.write_text(study.read_text().replace("[study]\n", "[study]\ncommand_timeout = 2\n"))
    started = time.monotonic()
    trials = {t.params["mode"]: t for t in _run(tmp_path, study)}
    assert time.monotonic() - started < 120  # the hang was ended by the timeout
    assert all(t.state == TrialState.FAIL for t in trials.values())
    assert "exited with code 3" in trials["crash"].user_attrs["error"]
    assert "about to fail" in trials["crash"].user_attrs["error"]  # the end of its output
    assert "was ended by SIGKILL" in trials["kill"].user_attrs["error"]
    assert "silent (no output, no report) for 2s" in trials["hang"].user_attrs["error"]
    assert sorted(trials["crash"].intermediate_values) == [0, 1]


def test_a_printed_report_that_the_pruner_stops_ends_the_script(tmp_path: Path) -> None:
    """Maximize: trial 0 scores 10, trial 1 scores 0 at its first report, below the median, so
    the pruner stops it there (minimized, it would go on); the script, which would sleep a
    minute, is ended by the worker."""
    study = _study(
        tmp_path,
        "python lines.py {x} first-best",
        direction="maximize",
        pruner={"name": "median", "options": {"n_startup_trials": 1, "n_warmup_steps": 0}},
    )
    started = time.monotonic()
    first, second = sorted(_run(tmp_path, study), key=lambda t: t.number)
    assert first.state == TrialState.COMPLETE and first.value == 10.0
    assert second.state == TrialState.PRUNED and second.last_step == 0
    assert time.monotonic() - started < 45


def test_a_script_without_a_report_of_the_metric_fails_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "quiet.py").write_text("print('trained, reported nothing')\n")
    trials = _run(tmp_path, _study(tmp_path, "python quiet.py {x}", n_trials=1))
    assert trials[0].state == TrialState.FAIL
    assert "print a line 'hpsearch: step=N loss=VALUE'" in trials[0].user_attrs["error"]


# ---------------------------------------------------------------- through hpsearch.connect()

# examples/own_loop/train.py, held after epoch 1's report while `pause` exists in its folder.
PAUSING = (
    PAUSING_TRIAL
    + f"""
import runpy, sys
import hpsearch

open(f"command-{{os.environ['HPSEARCH_TRIAL']}}.pid", "w").write(str(os.getpid()))
connect = hpsearch.connect
hpsearch.connect = lambda: Pausing(connect())
sys.argv = [{str(TRAIN)!r}, *sys.argv[1:]]
runpy.run_path({str(TRAIN)!r}, run_name="__main__")
"""
)


def _held(folder: Path, name: str) -> Path:
    (folder / "pausing.py").write_text(PAUSING)
    command = (
        "python pausing.py --lr {lr} --batch-size {batch_size} --width {width} --epochs {epochs}"
    )
    training = {"batch_size": 128, "width": 32}
    return held_study(folder, name, metric="mse", training=training, command=command)


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_asha_pauses_a_resuming_command_and_its_promotion_continues_the_curve(
    tmp_path: Path,
) -> None:
    asha_pauses_and_resumes_the_loop(tmp_path, command=TRAIN_COMMAND, study=RESUMES)


@pytest.mark.slow
def test_a_pbt_exploit_resumes_a_command_from_the_donors_checkpoint(tmp_path: Path) -> None:
    pbt_exploits_resume_the_loop(tmp_path, command=TRAIN_COMMAND, study=RESUMES)


@pytest.mark.slow
def test_kill_9_of_the_worker_ends_the_command_and_its_retry_resumes_the_same_curve(
    postgres_url: str,
    tmp_path: Path,
    study_name: str,
    uninterrupted: dict[int, float],  # noqa: F811
) -> None:
    def command_ended(victim: Any) -> None:
        command = int((tmp_path / f"command-{victim.number}.pid").read_text())
        assert _gone(command, 30), "the command outlived its killed worker"

    study = _held(tmp_path, study_name)
    kill_9_then_resume(
        postgres_url, tmp_path, study_name, study, uninterrupted, after_kill=command_ended
    )


@pytest.mark.slow
def test_sigterm_ends_the_command_and_hands_the_trial_back(tmp_path: Path, study_name: str) -> None:
    victim = sigterm_hands_back(tmp_path, study_name, _held(tmp_path, study_name))
    assert _gone(int((tmp_path / f"command-{victim.number}.pid").read_text()), 5)


# Each torchrun rank records the parameters it was given and how each trial ended for it.
RANKS = """
import json, os, sys
import optuna
import torch.distributed as dist
import hpsearch

dist.init_process_group("gloo")
trial = hpsearch.connect()
rank = dist.get_rank()
x = float(sys.argv[1])
seen = {"argv": sys.argv[1:], "params": trial.params, "steps": [], "end": "complete"}
try:
    for step in range(4):
        # Rank 1's values are wrong on purpose: only rank 0's reports reach the study.
        seen["steps"].append(step)
        hpsearch.report(trial, {"score": x + step if rank == 0 else -1000.0}, step)
except optuna.TrialPruned:
    seen["end"] = "pruned"
with open(f"trial-{os.environ['HPSEARCH_TRIAL']}-rank-{rank}.json", "w") as f:
    json.dump(seen, f)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_ranks_get_the_same_parameters_and_decisions(tmp_path: Path) -> None:
    (tmp_path / "ranks.py").write_text(RANKS)
    path = tmp_path / "ranks.toml"
    path.write_text(
        study_toml(
            name="ranks",
            command="torchrun --standalone --nproc-per-node {devices} ranks.py {x}",
            n_trials=5,
            metric="score",
            direction="maximize",
            sampler={"name": "random", "seed": 1},
            pruner={"name": "median", "options": {"n_startup_trials": 2, "n_warmup_steps": 0}},
            space={"x": {"type": "float", "low": 0.0, "high": 10.0}},
            resources={"devices_per_trial": 2},
        )
    )
    trials = _run(tmp_path, path, devices_per_trial=2)
    assert len(trials) == 5
    ranks_agree(tmp_path, trials, maximize=True)
    for trial in trials:
        seen = seen_by_ranks(tmp_path, trial)
        assert seen[0]["params"] == {"x": trial.params["x"]}
        assert seen[0]["steps"] == seen[1]["steps"]
        assert trial.intermediate_values == {
            step: trial.params["x"] + step for step in seen[0]["steps"]
        }


CHARLM = ROOT / "examples" / "charlm"


@pytest.mark.slow
def test_the_charlm_torchrun_script_runs_by_hand_and_as_a_study(tmp_path: Path) -> None:
    """examples/charlm/train.py: unchanged under torchrun alone (2 ranks), then each trial of
    examples/charlm/torchrun.toml runs it on 2 ranks."""
    torchrun = Path(sys.executable).with_name("torchrun")
    by_hand = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "train.py", "--windows", "64"],
        cwd=CHARLM,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert by_hand.returncode == 0, by_hand.stderr[-3000:]
    assert by_hand.stdout.count("perplexity") == 1  # rank 0 prints it
    study = tmp_path / "torchrun.toml"
    study.write_text((CHARLM / "torchrun.toml").read_text().replace("n_trials = 3", "n_trials = 2"))
    for name in ("train.py", "charlm.py", "corpus.txt"):
        (tmp_path / name).write_text((CHARLM / name).read_text())
    trials = _run(tmp_path, study, devices_per_trial=2)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:
        assert sorted(trial.intermediate_values) == [0, 1]
        assert 1.0 < trial.value < 40.0  # perplexity over about 30 characters
        assert trial.value == trial.intermediate_values[1]
