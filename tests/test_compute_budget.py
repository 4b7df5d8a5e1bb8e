"""Compute budgets ([budget] epochs, device_hours): validated, spent within their bound, shown."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.attrs import BUDGET_STOP, EPOCHS, RETRY_OF
from hpsearch.errors import SpecError
from hpsearch.search import create_study, load_spec_file, load_study, start_workers
from hpsearch.search.results._progress import progress_line
from hpsearch.search.results._status import status_document
from hpsearch.search.runtime._compute import spent

from ._support import RESUMING, study_toml
from .conftest import ROOT, hpsearch_command

WORKERS = 3

# A tiny training loop: EPOCHS evaluations of SECONDS each. Each epoch trained is written to a
# file before it is reported (what was trained, counted apart from what the study counts), and
# each report's time is recorded (the evaluation intervals the device-hours bound is made of).
STEPS = """
import os, time
from pathlib import Path
import optuna

EPOCHS, SECONDS, HOLD_AT = {epochs}, {seconds}, {hold_at}

def hold_once(here):
    # The first trial here while the test's file `hold` exists waits mid-trial (epochs
    # reported, more to come) until the file `go` appears: the test signals its worker at that
    # known point, however slow the machine.
    try:
        os.rename(here / "hold", here / f"held-{{os.getpid()}}")
    except FileNotFoundError:
        return
    while not (here / "go").exists():
        time.sleep(0.05)

def steps(trial, params):
    log = Path(__file__).parent / "epochs-trained"
    times = []
    for epoch in range(EPOCHS):
        time.sleep(SECONDS)
        value = (params["x"] - 2.0) ** 2 + 1.0 / (epoch + 1)
        with open(log, "a") as f:
            f.write(f"{{trial.number}} {{epoch}}\\n")
        times.append(time.time())
        trial.set_user_attr("reported_at", times)
        trial.report(value, epoch)
        if epoch == HOLD_AT:
            # Before should_prune: a trial found over budget at this report is held all the
            # same (on MySQL, whose DATETIME keeps whole seconds, a trial's start is rounded
            # and a 2 s budget may look spent at the first report).
            hold_once(log.parent)
        if trial.should_prune():
            raise optuna.TrialPruned()
        if epoch == HOLD_AT:
            # While the test's file `hold-all` exists, every trial waits here too.
            while (log.parent / "hold-all").exists():
                time.sleep(0.05)
    return value
"""


def _study(
    write_study: Any, tmp_path: Path, budget: str, *, epochs: int, seconds: float, hold_at: int = 1
) -> Any:
    """``hold_at``: the epoch after whose report a trial may be held (see ``hold_once``)."""
    (tmp_path / "steps.py").write_text(
        STEPS.format(epochs=epochs, seconds=seconds, hold_at=hold_at)
    )
    path = write_study(objective="steps.py:steps", n_trials=200)
    text = path.read_text().replace("[budget]\n", f"[budget]\n{budget}\n", 1)
    # A dead worker's trial is reaped quickly; its retry may then run if budget is left.
    path.write_text(text + "\n[resources]\nheartbeat_interval = 1\ngrace_period = 3\n")
    spec = load_spec_file(str(path))
    return spec


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _signal_a_worker_mid_trial(tmp_path: Path, signum: int) -> int:
    """Send ``signum`` to the worker whose trial waits in ``hold_once`` (mid-trial, epochs
    reported), then let it go on; its pid. The test put the file ``hold`` there before the
    workers started."""
    deadline = time.monotonic() + 120
    while not (held := list(tmp_path.glob("held-*"))):
        assert time.monotonic() < deadline, "no trial was held mid-trial"
        time.sleep(0.05)
    victim = int(held[0].name.split("-")[1])
    os.kill(victim, signum)
    (tmp_path / "go").touch()
    return victim


def _epochs_trained(tmp_path: Path) -> int:
    return len((tmp_path / "epochs-trained").read_text().splitlines())


# ---------------------------------------------------------------- the study file


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("epoch = 10", "unknown key 'epoch'. Did you mean 'epochs'?"),
        ("device_hour = 1.0", "Did you mean 'device_hours'?"),
        ("epochs = 0", "epochs must be >= 1, got 0."),
        ("epochs = 2.5", "epochs must be an integer, got 2.5."),
        ("device_hours = 0", "device_hours must be > 0"),
        ("device_hours = -1.5", "got -1.5"),
        ('device_hours = "2h"', "device_hours must be a number, got '2h'."),
    ],
)
def test_a_bad_compute_budget_is_refused_with_the_fix(
    write_study: Any, line: str, message: str
) -> None:
    path = write_study()
    path.write_text(path.read_text().replace("[budget]\n", f"[budget]\n{line}\n", 1))
    with pytest.raises(SpecError, match="budget") as err:
        load_spec_file(str(path))
    assert message in str(err.value)


def test_the_cli_refuses_a_misspelt_budget_in_one_line_and_creates_nothing(
    write_study: Any, tmp_path: Path
) -> None:
    path = write_study()
    path.write_text(path.read_text().replace("[budget]\n", "[budget]\ndevice_hour = 2\n", 1))
    db = tmp_path / "never.db"
    result = subprocess.run(
        [*hpsearch_command(), "create", str(path), "--storage", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "[budget]" in result.stderr and "'device_hours'" in result.stderr
    assert not db.exists()


CURVES = ROOT / "studies" / "curves.toml"  # [training] epochs = 27


@pytest.mark.parametrize(
    ("scheduler", "needed", "message"),
    [
        ("", 27, "before any configuration has trained to the end ([training] epochs = 27)"),
        (
            '[scheduler]\nname = "asha"\nmin_epochs = 3\nmax_epochs = 9\nreduction_factor = 3\n',
            9,
            "before any configuration has trained to the end ([scheduler] max_epochs = 9)",
        ),
        (
            '[scheduler]\nname = "pbt"\npopulation = 4\ninterval_epochs = 3\nmax_epochs = 9\n',
            36,
            "before its population has trained to the end (each of its 4 members trains to "
            "[scheduler] max_epochs = 9, 36 epochs in all)",
        ),
    ],
)
def test_an_epochs_budget_no_configuration_can_finish_in_is_refused(
    tmp_path: Path, scheduler: str, needed: int, message: str
) -> None:
    """Such a study would end with nothing to export. The least budget that can is accepted."""
    text = CURVES.read_text().replace("epochs = 27\n", "" if scheduler else "epochs = 27\n")
    text = text.replace('name = "median"', 'name = "none"') + scheduler
    if "pbt" in scheduler:  # its population is its n_trials
        text = text.replace("n_trials = 60\n", "")

    def spec(epochs: int) -> Any:
        path = tmp_path / "study.toml"
        path.write_text(text.replace("[budget]\n", f"[budget]\nepochs = {epochs}\n", 1))
        return load_spec_file(str(path))

    with pytest.raises(SpecError) as err:
        spec(needed - 1)
    assert str(err.value) == (
        f"{tmp_path / 'study.toml'} [budget]: epochs = {needed - 1} ends the study {message}, "
        f"with no result to export; set epochs >= {needed}, or remove it."
    )
    assert spec(needed).budget_epochs == needed


def test_a_compute_budget_without_n_trials_is_refused_with_the_fix(write_study: Any) -> None:
    path = write_study()
    path.write_text(path.read_text().replace("n_trials = 12\n", "epochs = 100\n", 1))
    with pytest.raises(SpecError) as err:
        load_spec_file(str(path))
    assert str(err.value).endswith(
        "[budget]: n_trials is required: the number of trials across all workers (beside epochs, "
        "it bounds the configurations tried); add e.g. n_trials = 100."
    )


def test_a_compute_budget_is_stored_and_a_study_without_one_is_unchanged(write_study: Any) -> None:
    path = write_study()
    plain = load_spec_file(str(path))
    assert plain.budget_epochs is None and plain.budget_device_hours is None
    assert set(plain.data["budget"]) == {"n_trials", "timeout"}  # older studies' identity
    path.write_text(
        path.read_text().replace("[budget]\n", "[budget]\nepochs = 40\ndevice_hours = 2\n", 1)
    )
    spec = load_spec_file(str(path))
    assert (spec.budget_epochs, spec.budget_device_hours) == (40, 2.0)


# ---------------------------------------------------------------- real workers, every backend


@pytest.mark.slow
def test_an_epochs_budget_ends_the_study_within_its_bound(
    storage_url: str, write_study: Any, tmp_path: Path
) -> None:
    budget = 30
    spec = _study(write_study, tmp_path, f"epochs = {budget}", epochs=4, seconds=0.05)
    create_study(spec, storage_url)
    processes = start_workers(
        spec.name, storage_url, workers=WORKERS, timeout=None, log_trials=False
    )
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * WORKERS
    trials = _trials(storage_url, spec.name)
    counted = spent(trials).epochs
    # Reached, and over by at most one evaluation of each other running trial.
    assert budget <= counted <= budget + WORKERS - 1, counted
    assert _epochs_trained(tmp_path) == counted  # nothing trained goes uncounted
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = [t for t in trials if t.user_attrs.get(BUDGET_STOP) == "epochs"]
    assert stopped and all(t.state == TrialState.PRUNED for t in stopped)
    assert all(t.value is not None for t in stopped), "a stopped trial keeps its last value"
    _assert_shown(storage_url, spec.name, "epochs", budget, counted)


@pytest.mark.parametrize("scheduler", **RESUMING)
def test_a_resumed_configuration_counts_each_epoch_it_trained_once(
    scheduler: dict[str, Any], tmp_path: Path
) -> None:
    """A continuation resumes from its checkpoint and reports the restored epoch again (a
    decision a kill interrupted is made): the epochs budget counts what was trained, not that."""
    text = study_toml(
        name="resumed",
        objective="hpsearch.objectives.curves:learning_curve",
        n_trials=scheduler.get("population", 8),
        metric="val_loss",
        space={
            "lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
            "l2": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
        },
        scheduler=scheduler,
        resources={"artifacts": str(tmp_path / "artifacts")},
    ).replace("[budget]\n", "[budget]\nepochs = 1000\n", 1)  # never reached
    (tmp_path / "resumed.toml").write_text(text)
    url = f"sqlite:///{tmp_path / 'resumed.db'}"
    result = subprocess.run(
        [*hpsearch_command(), "-q", "run", str(tmp_path / "resumed.toml"), "--storage", url],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = _trials(url, "resumed")
    assert [t for t in trials if "resumed_from_epoch" in t.user_attrs], "nothing resumed"
    if scheduler["name"] == "pbt":
        trained = scheduler["population"] * scheduler["max_epochs"]  # every member, to the end
    else:  # each configuration's curve, as far as it got, trained once
        furthest: dict[int, int] = {}
        for trial in trials:
            slot = trial.system_attrs["hpsearch:slot"]
            furthest[slot] = max(furthest.get(slot, 0), len(trial.intermediate_values))
        trained = sum(furthest.values())
    assert spent(trials).epochs == trained


def test_the_eta_is_the_first_budget_reached_at_the_rate_it_is_spent(
    write_study: Any, tmp_path: Path
) -> None:
    spec = _study(write_study, tmp_path, "epochs = 40", epochs=4, seconds=0.05)  # 200 trials
    url = f"sqlite:///{tmp_path / 'eta.db'}"
    create_study(spec, url)
    study = optuna.load_study(study_name=spec.name, storage=url)
    began = dt.datetime.now() - dt.timedelta(hours=1)
    for i in range(5):  # the last hour: 5 trials of 2 epochs, one after the other
        number = len(study.trials)
        study.add_trial(
            optuna.trial.FrozenTrial(
                number=number,
                trial_id=number,
                state=TrialState.COMPLETE,
                value=1.0,
                datetime_start=began + dt.timedelta(minutes=12 * i),
                datetime_complete=began + dt.timedelta(minutes=12 * (i + 1)),
                params={},
                distributions={},
                user_attrs={},
                system_attrs={EPOCHS: [number, 2]},
                intermediate_values={0: 1.0, 1: 1.0},
            )
        )
    document = status_document(study, spec)
    assert document["trials_per_hour"] == pytest.approx(5)
    # 195 trials left at 5 an hour would be 39 hours; 30 epochs left at 10 an hour end it in 3.
    assert document["eta_seconds"] == pytest.approx(3 * 3600, rel=0.01)


@pytest.mark.slow
def test_a_device_hours_budget_ends_the_study_within_its_bound(
    storage_url: str, write_study: Any, tmp_path: Path
) -> None:
    seconds = 6.0  # several trials' worth: some complete, so there is a best to export
    spec = _study(
        write_study, tmp_path, f"device_hours = {seconds / 3600!r}", epochs=2, seconds=0.1
    )
    create_study(spec, storage_url)
    processes = start_workers(
        spec.name, storage_url, workers=WORKERS, timeout=None, log_trials=False
    )
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * WORKERS
    trials = [t for t in _trials(storage_url, spec.name) if t.datetime_start is not None]
    used = spent(trials).device_seconds
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # The bound: one evaluation interval per running trial, each interval as this study's
    # trials measured it (claim to first report, report to report, last report to the end).
    longest = max(_intervals(t) for t in trials)
    assert seconds <= used <= seconds + WORKERS * longest, (used, longest)
    assert any(t.user_attrs.get(BUDGET_STOP) == "device_hours" for t in trials)
    _assert_shown(storage_url, spec.name, "device_hours", seconds / 3600, used / 3600)


def _intervals(trial: optuna.trial.FrozenTrial) -> float:
    assert trial.datetime_start is not None and trial.datetime_complete is not None
    marks = [
        trial.datetime_start.timestamp(),
        *trial.user_attrs.get("reported_at", []),
        trial.datetime_complete.timestamp(),
    ]
    return max(b - a for a, b in itertools.pairwise(marks))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_stopped_worker_keeps_the_epochs_budget_within_its_bound(
    storage_url: str, write_study: Any, tmp_path: Path, signum: int
) -> None:
    budget = 45  # room for the stopped worker's trial to be retried before the budget is spent
    spec = _study(write_study, tmp_path, f"epochs = {budget}", epochs=6, seconds=0.2)
    create_study(spec, storage_url)
    (tmp_path / "hold").touch()
    # The survivors wait mid-trial until the dead worker's trial is reaped, so its retry is
    # claimed (retries first) while budget is left, however slow the machine.
    (tmp_path / "hold-all").touch()
    processes = start_workers(
        spec.name, storage_url, workers=WORKERS, timeout=None, log_trials=False
    )
    # Stop a worker mid-trial, with counted work behind it.
    victim = _signal_a_worker_mid_trial(tmp_path, signum)
    if signum == signal.SIGKILL:
        deadline = time.monotonic() + 120
        while not [
            t
            for t in _trials(storage_url, spec.name)
            if t.system_attrs.get(RETRY_OF) is not None and t.state == TrialState.WAITING
        ]:
            assert time.monotonic() < deadline, "the dead worker's trial was not reaped"
            time.sleep(0.1)
    (tmp_path / "hold-all").unlink()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes if p.pid != victim] == [0] * (WORKERS - 1)
    trials = _trials(storage_url, spec.name)
    counted = spent(trials).epochs
    assert budget <= counted <= budget + WORKERS - 1, counted
    # The stopped trial's reported epochs stay counted; the one it was training is lost work.
    assert counted <= _epochs_trained(tmp_path) <= counted + 1
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    if signum == signal.SIGTERM:
        return  # its trial ended as trials end (this objective never checks for a stop)
    # The killed worker's trial failed without an error when it was reaped ...
    [dead] = [
        t
        for t in trials
        if t.state == TrialState.FAIL and t.user_attrs.get("worker", {}).get("pid") == victim
    ]
    assert "error" not in dead.user_attrs
    # ... and was retried; the retry counted only what it trained itself (its copy of the dead
    # trial's count is not its own).
    [retry] = [t for t in trials if t.system_attrs.get(RETRY_OF) == dead.number]
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    own = [line for line in _epoch_lines(tmp_path) if line.split()[0] == str(retry.number)]
    assert spent([retry]).epochs == len(own) > 0


@pytest.mark.slow
def test_a_killed_worker_is_reaped_before_a_device_hours_study_ends(
    storage_url: str, write_study: Any, tmp_path: Path
) -> None:
    """The budget is spent before the dead worker's grace period ends: the survivors wait for
    its trial to be reaped, so what the study spent is final, not growing with a zombie."""
    seconds = 2.0
    spec = _study(
        write_study,
        tmp_path,
        f"device_hours = {seconds / 3600!r}",
        epochs=4,
        seconds=0.1,
        hold_at=0,  # the first report: the small budget may be spent before a second one
    )
    create_study(spec, storage_url)
    (tmp_path / "hold").touch()
    processes = start_workers(
        spec.name, storage_url, workers=WORKERS, timeout=None, log_trials=False
    )
    victim = _signal_a_worker_mid_trial(tmp_path, signal.SIGKILL)
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes if p.pid != victim] == [0] * (WORKERS - 1)
    trials = [t for t in _trials(storage_url, spec.name) if t.datetime_start is not None]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    [dead] = [
        t
        for t in trials
        if t.user_attrs["worker"]["pid"] == victim
        and t.state not in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    assert dead.state == TrialState.FAIL  # reaped; its retry waits, unclaimed
    used = spent(trials).device_seconds
    # Lost work counts, up to the reap: the dead trial's last interval ends there.
    assert seconds <= used <= seconds + WORKERS * max(_intervals(t) for t in trials), used


def _epoch_lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "epochs-trained").read_text().splitlines()


def _assert_shown(url: str, name: str, unit: str, limit: float, counted: float) -> None:
    """status --json, the status text, export and the progress line show spent and remaining."""

    def run(*args: str) -> str:
        result = subprocess.run(
            [*hpsearch_command(), *args, "--study", name, "--storage", url],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    document = json.loads(run("status", "--json"))
    assert document["eta_seconds"] is None  # the study is over, trials left or not
    status = document["budget"][unit]
    assert status["limit"] == limit
    assert status["spent"] == pytest.approx(counted, abs=1e-5)
    assert status["remaining"] == 0
    text = run("status")
    shown = "epochs" if unit == "epochs" else "device-hours"
    assert f"{shown} spent, 0 remaining: the study is over, no further trial starts" in text, text
    exported = json.loads(run("export", "--format", "json"))["budget"][unit]
    assert exported == status
    loaded = load_study(name, url)
    line = progress_line(loaded.study, loaded.spec, time.monotonic())
    assert f"/{limit:g} {unit.replace('_', '-')}" in line, line


# ---------------------------------------------------------------- a trial at its reports


def _metered(tmp_path: Path, epochs: int, directions: list[str]) -> tuple[Any, Any]:
    from hpsearch.search.runtime._compute import ComputeBudget, ComputeMeter

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'm.db'}", directions=directions)
    meter = ComputeMeter(study, ComputeBudget(epochs=epochs, device_hours=None))
    asked = study.ask()
    return study, meter.trial(study, asked._trial_id)


@pytest.mark.parametrize("directions", [["minimize"], ["minimize", "maximize"]])
def test_a_trial_is_stopped_at_the_report_that_spends_the_budget(
    tmp_path: Path, directions: list[str]
) -> None:
    study, trial = _metered(tmp_path, 2, directions)
    trial.report(1.0, 0)
    assert not trial.should_prune()
    trial.report(0.5, 1)
    assert trial.should_prune()  # the engine raises TrialPruned here
    study.tell(trial, state=TrialState.PRUNED)
    [done] = study.get_trials()
    assert done.user_attrs[BUDGET_STOP] == "epochs"
    assert spent([done]).epochs == 2


def test_an_objective_that_never_asks_is_stopped_at_its_next_report(tmp_path: Path) -> None:
    _, trial = _metered(tmp_path, 1, ["minimize"])
    trial.report(1.0, 0)  # spends the budget
    with pytest.raises(optuna.TrialPruned, match="epochs budget is spent"):
        trial.report(0.5, 1)


ENGINE_STUDY = """
[study]
name = "{name}"
objective = "digits-mlp"

[budget]
n_trials = 50
epochs = {budget}

[sampler]
name = "random"
seed = 0

[pruner]
name = "none"

[resources]
workers = 2

[training]
epochs = 3
device = "cpu"
seed = 0

[space.lr]
type = "float"
low = 1e-3
high = 1e-1
log = true

[space.width]
type = "int"
low = 8
high = 16
"""


@pytest.mark.slow
def test_the_training_engine_spends_an_epochs_budget_through_hpsearch_run(
    tmp_path: Path, study_name: str
) -> None:
    budget = 7  # not a multiple of the trials' 3 epochs: the last trials are stopped part-way
    (tmp_path / "study.toml").write_text(ENGINE_STUDY.format(name=study_name, budget=budget))
    url = f"sqlite:///{tmp_path / 'hpsearch.db'}"
    result = subprocess.run(
        [*hpsearch_command(), "run", "study.toml", "--storage", url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    trials = _trials(url, study_name)
    counted = spent(trials).epochs
    assert budget <= counted <= budget + 1, counted  # two workers: one other running trial
    # Each epoch the engine trained is one it reported: a trial's epochs are its evaluations.
    assert counted == sum(len(t.intermediate_values) for t in trials)
    assert "epochs budget is spent" in result.stderr
    stopped = [t for t in trials if t.user_attrs.get(BUDGET_STOP) == "epochs"]
    assert stopped and all(t.state == TrialState.PRUNED for t in stopped)
    # Run again: the study is over, no worker starts, nothing more is spent.
    again = subprocess.run(
        [*hpsearch_command(), "run", "study.toml", "--storage", url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (
        "the study's epochs budget is spent: no worker started (raise [budget] epochs in the "
        "file to go on)"
    ) in again.stderr
    assert spent(_trials(url, study_name)).epochs == counted


@pytest.mark.slow
def test_a_ddp_trial_counts_its_devices_and_stops_on_every_rank(
    tmp_path: Path, study_name: str
) -> None:
    """Two CPU ranks (gloo): device time counts twice, and every rank stops at one report."""
    path = tmp_path / "ddp.toml"
    path.write_text(
        study_toml(
            name=study_name,
            objective="digits-mlp",
            n_trials=10,
            direction=None,
            resources={"devices_per_trial": 2},
            training={"epochs": 4, "device": "cpu", "width": 16, "lr": 0.01},
            space={"batch_size": {"type": "categorical", "choices": [32, 64]}},
            budget={"n_trials": 10, "epochs": 6},
        )
    )
    url = f"sqlite:///{tmp_path / 'ddp.db'}"
    spec = load_spec_file(str(path))
    create_study(spec, url)
    [worker] = start_workers(
        spec.name, url, workers=1, timeout=None, log_trials=False, devices_per_trial=2
    )
    worker.join(timeout=600)
    assert worker.exitcode == 0
    trials = [t for t in _trials(url, study_name) if t.datetime_start is not None]
    # One worker, so no overshoot: trial 0 trains its 4 epochs, trial 1 stops after 2.
    assert [(t.state, len(t.intermediate_values)) for t in trials] == [
        (TrialState.COMPLETE, 4),
        (TrialState.PRUNED, 2),
    ]
    assert spent(trials).epochs == 6
    assert trials[1].user_attrs[BUDGET_STOP] == "epochs"
    assert all(t.user_attrs["worker"]["world_size"] == 2 for t in trials)
    wall = sum(
        t.datetime_complete.timestamp() - t.datetime_start.timestamp()
        for t in trials
        if t.datetime_complete and t.datetime_start
    )
    assert spent(trials).device_seconds == pytest.approx(2 * wall)
