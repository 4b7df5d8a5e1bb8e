"""No budget wasted: proposals tied to the slot, retries first, failures that stop a worker,
objectives that exit, dead workers reaped on a timer, workers that die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.attrs import RETRY_HISTORY, RETRY_OF, SLOT
from hpsearch.search import create_study, load_spec_file, load_study, start_workers
from hpsearch.search.runtime._budget import claim_slot, enqueue_batch, reap_stale_trials

from ._support import write_study_file
from .conftest import hpsearch_command
from .test_fault_tolerance import _children
from .test_workers import assert_exact_budget

SPACE = {
    "x": {"type": "float", "low": -10.0, "high": 10.0},
    "k": {"type": "int", "low": 0, "high": 1000},
}


def _study(
    folder: Path,
    name: str,
    *,
    objective: str = "quad.py:fn",
    code: str = "def fn(trial, params):\n    return params['x'] ** 2\n",
    n_trials: int = 8,
    sampler: str = "random",
    resources: Mapping[str, Any] | None = None,
    grace: int = 2,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / objective.split(":")[0]).write_text(textwrap.dedent(code))
    return write_study_file(
        folder / f"{name}.toml",
        name=name,
        objective=objective,
        n_trials=n_trials,
        sampler={"name": sampler, "seed": 7},
        pruner=None,
        resources={"heartbeat_interval": 1, "grace_period": grace, **(resources or {})},
        space=SPACE,
    )


def _run_worker_commands(name: str, url: str, *, commands: int = 1) -> None:
    """``commands`` worker commands of one worker each, side by side, run to their end."""
    started = [
        start_workers(name, url, workers=1, timeout=None, log_trials=False) for _ in range(commands)
    ]
    for process in [p for command in started for p in command]:
        process.join(timeout=300)
        assert process.exitcode == 0


def _params_by_slot(url: str, name: str) -> dict[int, dict[str, Any]]:
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    return {t.system_attrs[SLOT]: t.params for t in trials if t.state == TrialState.COMPLETE}


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["random", "tpe", "auto"])
def test_a_seeded_study_proposes_per_slot_whoever_claims_it(
    sampler: str, tmp_path: Path, postgres_url: str, study_name: str
) -> None:
    """Two worker commands on one host (alike in everything a per-worker seed was made of) on
    PostgreSQL propose what one worker alone proposes, slot by slot; none repeats another."""
    n_trials = 10  # all within TPE's and GP's (auto's here) start-up phase (10 random trials)
    path = _study(tmp_path, study_name, n_trials=n_trials, sampler=sampler)
    spec = load_spec_file(str(path))
    alone = f"sqlite:///{tmp_path / 'alone.db'}"
    create_study(spec, alone)
    _run_worker_commands(spec.name, alone)
    create_study(spec, postgres_url)
    _run_worker_commands(spec.name, postgres_url, commands=2)
    assert_exact_budget(postgres_url, spec.name, n_trials)
    shared = _params_by_slot(postgres_url, spec.name)
    assert shared == _params_by_slot(alone, spec.name)
    assert len({tuple(sorted(p.items())) for p in shared.values()}) == n_trials


@pytest.mark.parametrize("path", ["storage", "generic"])
def test_a_dead_workers_retry_is_claimed_before_fresh_slots(
    path: str, storage_url: str, tmp_path: Path, study_name: str
) -> None:
    spec = load_spec_file(str(_study(tmp_path, study_name, n_trials=20)))
    create_study(spec, storage_url)
    loaded = load_study(spec.name, storage_url)
    # The generic path is what storages without a claim query (the gRPC proxy) go through.
    storage = loaded.storage if path == "storage" else object()
    dead = claim_slot(loaded.study, storage)  # slot 0, claimed by a worker that then dies
    assert dead is not None and dead.system_attrs[SLOT] == 0
    loaded.storage.record_heartbeat(dead._trial_id)
    deadline = time.monotonic() + 60
    while not _failed(loaded, dead):
        assert time.monotonic() < deadline, "the dead worker's trial was never reaped"
        time.sleep(0.5)
        optuna.storages.fail_stale_trials(loaded.study)
    claimed = claim_slot(loaded.study, storage)
    assert claimed is not None
    assert claimed.system_attrs.get(RETRY_OF) == dead.number  # not slot 1, the oldest fresh one
    assert claimed.system_attrs[SLOT] == 0


def _failed(loaded: Any, trial: optuna.trial.FrozenTrial) -> bool:
    return bool(loaded.study._storage.get_trial(trial._trial_id).state == TrialState.FAIL)


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*hpsearch_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_an_objective_that_exits_fails_its_trial_and_the_worker_goes_on(tmp_path: Path) -> None:
    code = """
    import sys

    def fn(trial, params):
        if trial.number % 2 == 0:
            sys.exit(3)
        return params["x"] ** 2
    """
    path = _study(tmp_path, "exits", code=code, n_trials=6)
    url = f"sqlite:///{tmp_path / 'exits.db'}"
    result = _run(["run", str(path), "--storage", url, "--workers", "1"], tmp_path)
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="exits", storage=url).get_trials()
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 3
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 3 and {t.user_attrs["error"] for t in failed} == {"SystemExit: 3"}
    assert_exact_budget(url, "exits", 6)


@pytest.mark.slow
def test_a_worker_stops_after_failures_with_the_same_error(tmp_path: Path) -> None:
    code = """
    def fn(trial, params):
        return params["learning_rate"]  # a typo: the space names x and k
    """
    path = _study(
        tmp_path, "typo", code=code, n_trials=40, resources={"max_consecutive_failures": 3}
    )
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    result = _run(["run", str(path), "--storage", url, "--workers", "1"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "stopped after 3 trials in a row failed with the same error: KeyError:" in result.stderr
    trials = optuna.load_study(study_name="typo", storage=url).get_trials()
    assert [t.state for t in trials].count(TrialState.FAIL) == 3  # 37 slots still waiting
    assert "Traceback" not in result.stderr.split("hpsearch: error:")[-1]


@pytest.mark.slow
def test_a_study_with_only_failed_trials_ends_non_zero_in_one_line(tmp_path: Path) -> None:
    code = """
    def fn(trial, params):
        raise RuntimeError(f"broken objective {trial.number}")  # a different error each time
    """
    path = _study(tmp_path, "broken", code=code, n_trials=4)
    url = f"sqlite:///{tmp_path / 'broken.db'}"
    result = _run(["run", str(path), "--storage", url, "--workers", "1"], tmp_path)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hpsearch: error: no trial of 'broken' completed: 4 failed")
    assert "broken objective 3" in last
    assert "hpsearch worker --study" not in result.stdout  # no advice to run more of the same


def test_create_refuses_builtin_options_out_of_range(tmp_path: Path) -> None:
    study = tmp_path / "digits.toml"
    study.write_text(
        '[study]\nname = "bad"\nobjective = "digits-mlp"\n\n[budget]\nn_trials = 2\n'
        "\n[training]\nepochs = -2\n"
        '\n[space.lr]\ntype = "float"\nlow = 0.0\nhigh = 0.1\n'
    )
    url = f"sqlite:///{tmp_path / 'bad.db'}"
    result = _run(["create", str(study), "--storage", url], tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.endswith("[training]: epochs = -2 is out of range; it must be >= 1."), line
    assert not (tmp_path / "bad.db").exists()
    study.write_text(study.read_text().replace("epochs = -2", "epochs = 2"))
    result = _run(["create", str(study), "--storage", url], tmp_path)
    assert result.returncode == 2
    assert "[space.lr]: lr = 0.0 is out of range; it must be > 0." in result.stderr


@pytest.mark.slow
def test_an_objective_returning_text_is_named_as_such(tmp_path: Path) -> None:
    code = 'def fn(trial, params):\n    return "0.5"\n'
    path = _study(
        tmp_path, "text", code=code, n_trials=2, resources={"max_consecutive_failures": 2}
    )
    url = f"sqlite:///{tmp_path / 'text.db'}"
    result = _run(["run", str(path), "--storage", url, "--workers", "1"], tmp_path)
    assert result.returncode == 2
    assert "objective returned a str ('0.5'); return a float" in result.stderr


def test_a_sampler_without_options_says_so(tmp_path: Path) -> None:
    path = _study(tmp_path, "opts", n_trials=2)
    path.write_text(path.read_text().replace("seed = 7", "seed = 7\noptions = { n_startup = 3 }"))
    result = _run(["create", str(path), "--storage", f"sqlite:///{tmp_path / 'o.db'}"], tmp_path)
    assert result.returncode == 2
    assert "RandomSampler takes no options: remove [sampler.options]." in result.stderr
    assert "Allowed: ." not in result.stderr


@pytest.mark.slow
def test_the_timeout_counts_from_when_a_worker_is_ready(tmp_path: Path) -> None:
    code = """
    import time
    time.sleep(4)  # a slow import: longer than the whole timeout

    def fn(trial, params):
        return params["x"] ** 2
    """
    path = _study(tmp_path, "slowstart", code=code, n_trials=1000)
    url = f"sqlite:///{tmp_path / 'slow.db'}"
    result = _run(
        ["run", str(path), "--storage", url, "--workers", "1", "--timeout", "3"], tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "the timeout of 3s has passed: no further trial starts" in result.stderr
    trials = optuna.load_study(study_name="slowstart", storage=url).get_trials()
    assert any(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.slow
def test_a_dead_workers_trial_is_reaped_while_others_run_long_trials(tmp_path: Path) -> None:
    """The survivor is inside one long trial the whole time: the reaping comes from its
    heartbeat thread, not from between its trials."""
    release = tmp_path / "release"
    code = f"""
    import os, time

    def fn(trial, params):
        while not os.path.exists({str(release)!r}):
            time.sleep(0.1)
        return params["x"] ** 2
    """
    path = _study(tmp_path, "reap", code=code, n_trials=2, grace=5)
    spec = load_spec_file(str(path))
    url = f"sqlite:///{tmp_path / 'reap.db'}"
    create_study(spec, url)
    loaded = load_study(spec.name, url)
    dead = claim_slot(loaded.study, loaded.storage)  # slot 0, beating until the survivor runs
    assert dead is not None
    alive = threading.Event()
    alive.set()

    def beat() -> None:  # the "dead" worker while it lives, on a thread of its own
        while alive.is_set():
            loaded.storage.record_heartbeat(dead._trial_id)
            time.sleep(0.3)

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    (survivor,) = start_workers(spec.name, url, workers=1, timeout=None, log_trials=True)
    try:
        deadline = time.monotonic() + 120
        while _running_slots(loaded) != [0, 1]:
            assert time.monotonic() < deadline, "the survivor never started its trial"
            time.sleep(0.2)
        alive.clear()  # now the dead trial's worker "dies": no more heartbeats
        beating.join()
        while not _failed(loaded, dead):
            assert time.monotonic() < deadline, "the dead worker's trial stayed RUNNING"
            time.sleep(0.2)
        # The survivor's own trial (slot 1) is still running: it was never between trials.
        assert _running_slots(loaded) == [1]
    finally:
        release.touch()
        survivor.join(timeout=120)
    assert survivor.exitcode == 0
    done = optuna.load_study(study_name=spec.name, storage=url).get_trials()
    assert sorted(t.system_attrs[SLOT] for t in done if t.state == TrialState.COMPLETE) == [0, 1]
    assert [t.number for t in done if t.state == TrialState.FAIL] == [dead.number]


def _running_slots(loaded: Any) -> list[int]:
    backend = loaded.study._storage._backend
    running = backend.get_all_trials(
        loaded.study._study_id, deepcopy=False, states=(TrialState.RUNNING,)
    )
    return sorted(t.system_attrs[SLOT] for t in running)


@pytest.mark.slow
def test_workers_die_with_their_parent(tmp_path: Path) -> None:
    code = """
    import time

    def fn(trial, params):
        time.sleep(600)
        return 0.0
    """
    path = _study(tmp_path, "orphans", code=code, n_trials=2)
    url = f"sqlite:///{tmp_path / 'orphans.db'}"
    assert _run(["create", str(path), "--storage", url], tmp_path).returncode == 0
    parent = subprocess.Popen(
        [*hpsearch_command(), "worker", "--study", "orphans", "--storage", url],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (running := _running_in(url, _children(parent.pid))):
        assert time.monotonic() < deadline, "no worker process started a trial"
        time.sleep(0.2)
    children = _children(parent.pid)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 60  # the orphan stops as on SIGTERM: within its 30 s bound
    while any(_alive(pid) for pid in children):
        assert time.monotonic() < deadline, f"worker {children} outlived its parent"
        time.sleep(0.2)
    # It handed its trial back, as on any stop: failed without an error, its retry queued.
    trials = optuna.load_study(study_name="orphans", storage=url).get_trials()
    handed_back = next(t for t in trials if t.number == running[0])
    assert handed_back.state == TrialState.FAIL and "error" not in handed_back.user_attrs
    retries = [t for t in trials if t.system_attrs.get(RETRY_OF) == handed_back.number]
    assert [t.state for t in retries] == [TrialState.WAITING]


def _running_in(url: str, pids: set[int]) -> list[int]:
    """The numbers of the RUNNING trials of one of ``pids``."""
    trials = optuna.load_study(study_name="orphans", storage=url).get_trials(deepcopy=False)
    return [
        t.number
        for t in trials
        if t.state == TrialState.RUNNING and t.user_attrs.get("worker", {}).get("pid") in pids
    ]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent could reap it


def test_the_python_api_raises_for_a_broken_study(tmp_path: Path) -> None:
    import hpsearch

    code = "def fn(trial, params):\n    raise ValueError('nope')\n"
    path = _study(tmp_path, "api-broken", code=code, n_trials=2)
    with pytest.raises(hpsearch.HpsearchError, match="no trial of 'api-broken' completed"):
        hpsearch.run(path, storage=f"sqlite:///{tmp_path / 'api.db'}", workers=1, progress=False)


def test_a_batch_and_a_retry_are_enqueued_once_however_often_asked(
    storage_url: str, tmp_path: Path, study_name: str
) -> None:
    """A retried insert after a lost acknowledgement, or two workers doing one duty, must not
    put a slot (or a dead worker's retry) in the queue twice: the study would overrun its budget."""
    spec = load_spec_file(str(_study(tmp_path, study_name, n_trials=20)))
    create_study(spec, storage_url)
    loaded = load_study(spec.name, storage_url)
    assert enqueue_batch(loaded.study, loaded.storage, 0, 20) is False  # made by create
    assert enqueue_batch(loaded.study, loaded.storage, 8, 20) is True
    assert enqueue_batch(loaded.study, loaded.storage, 8, 20) is False
    dead = claim_slot(loaded.study, loaded.storage)
    assert dead is not None
    loaded.storage.set_trial_state_values(dead._trial_id, TrialState.FAIL)
    requeue = loaded.storage.get_heartbeat_stale_trial_callback()
    assert requeue is not None
    frozen = loaded.study._storage.get_trial(dead._trial_id)
    requeue(loaded.study, frozen)
    requeue(loaded.study, frozen)  # a second reaper that also saw the trial stale
    trials = loaded.study.get_trials(deepcopy=False)
    slots = [t.system_attrs[SLOT] for t in trials if t.state != TrialState.FAIL]
    assert sorted(slots) == list(range(16)), slots
    (retry,) = [t for t in trials if t.system_attrs.get(RETRY_OF) == dead.number]
    assert retry.state == TrialState.WAITING and retry.system_attrs[SLOT] == dead.system_attrs[SLOT]


def test_a_reaper_pass_reads_the_running_and_failed_trials_not_every_trial(
    storage_url: str, tmp_path: Path, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy's reaper loads every study afresh each pass (every heartbeat interval): a
    pass that read every trial took seconds on a study of a few thousand. It reads the RUNNING
    and FAIL trials; every trial only while a crashed trial's retry may be lost, which it then
    queues."""
    # A grace period that the first pass comes well within, however loaded the machine.
    spec = load_spec_file(str(_study(tmp_path, study_name, n_trials=4, grace=5)))
    create_study(spec, storage_url)
    loaded = load_study(spec.name, storage_url)
    distributions = {"x": optuna.distributions.FloatDistribution(-10.0, 10.0)}
    for value in range(12):
        loaded.study.add_trial(
            optuna.trial.create_trial(
                params={"x": 1.0},
                distributions=distributions,
                value=float(value),
                intermediate_values={step: float(step) for step in range(5)},
            )
        )
    crashed = claim_slot(loaded.study, loaded.storage)
    assert crashed is not None
    loaded.storage.set_trial_state_values(crashed._trial_id, TrialState.FAIL)
    requeue = loaded.storage.get_heartbeat_stale_trial_callback()
    assert requeue is not None
    requeue(loaded.study, loaded.study._storage.get_trial(crashed._trial_id))  # retry queued
    lost = claim_slot(loaded.study, loaded.storage)  # claims the retry
    assert lost is not None and lost.system_attrs.get(RETRY_OF) == crashed.number

    built: list[int] = []  # trials each read built: Optuna's reads all go through _get_trials
    read = loaded.storage._get_trials

    def counted(*args: Any, **kwargs: Any) -> list[optuna.trial.FrozenTrial]:
        trials = read(*args, **kwargs)
        built.append(len(trials))
        return trials

    monkeypatch.setattr(loaded.storage, "_get_trials", counted)

    def reap() -> list[int]:
        built.clear()
        fresh = optuna.load_study(study_name=spec.name, storage=loaded.storage)  # as the proxy
        return reap_stale_trials(fresh, loaded.storage)

    assert reap() == []
    assert sum(built) <= 2, built  # the RUNNING trial and the FAIL one, of 17
    # The retry's process dies between failing it and queueing its retry: a pass now reads
    # every trial, and queues the retry once the failure is a grace period old.
    loaded.storage.set_trial_state_values(lost._trial_id, TrialState.FAIL)
    deadline = time.monotonic() + 60
    while not _retries(storage_url, spec.name, lost.number):
        assert time.monotonic() < deadline, "the reaper never queued the lost retry"
        reap()
        assert max(built) == 17, built
        time.sleep(0.2)
    reap()
    assert sum(built) <= 2, built  # the FAIL trials: the retry has its mark, a cheap pass again
    (retry,) = _retries(storage_url, spec.name, lost.number)
    assert retry.state == TrialState.WAITING


def _retries(url: str, name: str, number: int) -> list[optuna.trial.FrozenTrial]:
    """The retries of trial ``number`` (the last trial in their retry history)."""
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    return [t for t in trials if t.system_attrs.get(RETRY_HISTORY, [None])[-1] == number]


@pytest.mark.slow
def test_a_batch_whose_duty_was_lost_is_enqueued_by_a_worker(
    storage_url: str, tmp_path: Path, study_name: str
) -> None:
    """Slot 0 carries the duty to enqueue slots 8-15. Its trial fails for good without a retry
    (its worker died ``max_retry`` times): the workers still fill the rest of the budget."""
    path = _study(tmp_path, study_name, n_trials=20, resources={"max_retry": 1})
    spec = load_spec_file(str(path))
    create_study(spec, storage_url)
    loaded = load_study(spec.name, storage_url)
    requeue = loaded.storage.get_heartbeat_stale_trial_callback()
    assert requeue is not None
    first = claim_slot(loaded.study, loaded.storage)
    assert first is not None and first.system_attrs[SLOT] == 0
    loaded.storage.set_trial_state_values(first._trial_id, TrialState.FAIL)
    requeue(loaded.study, loaded.study._storage.get_trial(first._trial_id))
    lost = claim_slot(loaded.study, loaded.storage)  # the retry; its worker dies too
    assert lost is not None and lost.system_attrs.get(RETRY_OF) == first.number
    loaded.storage.set_trial_state_values(lost._trial_id, TrialState.FAIL)
    requeue(loaded.study, loaded.study._storage.get_trial(lost._trial_id))  # no retry left
    _run_worker_commands(spec.name, storage_url)
    trials = optuna.load_study(study_name=spec.name, storage=storage_url).get_trials()
    complete = sorted(t.system_attrs[SLOT] for t in trials if t.state == TrialState.COMPLETE)
    assert complete == list(range(1, 20))
    assert len(trials) == 21


@pytest.mark.slow
def test_a_trial_failed_by_a_process_that_died_before_its_retry_is_retried(
    storage_url: str, tmp_path: Path, study_name: str
) -> None:
    """A reaper fails a stale trial, then queues its retry in another call (a worker stopped
    by SIGTERM does the same with its own trial). Killed in between, the process takes the
    retry with it: a worker queues it once the failure is a grace period old, exactly once."""
    spec = load_spec_file(str(_study(tmp_path, study_name, n_trials=4)))
    create_study(spec, storage_url)
    loaded = load_study(spec.name, storage_url)
    lost = claim_slot(loaded.study, loaded.storage)
    assert lost is not None and lost.system_attrs[SLOT] == 0
    loaded.storage.set_trial_state_values(lost._trial_id, TrialState.FAIL)  # then it dies
    _run_worker_commands(spec.name, storage_url, commands=2)
    # The failing process was only frozen: its callback, run late, adds nothing.
    requeue = loaded.storage.get_heartbeat_stale_trial_callback()
    assert requeue is not None
    requeue(loaded.study, loaded.study._storage.get_trial(lost._trial_id))
    trials = optuna.load_study(study_name=spec.name, storage=storage_url).get_trials()
    (retry,) = [t for t in trials if t.system_attrs.get(RETRY_OF) == lost.number]
    assert retry.state == TrialState.COMPLETE and retry.system_attrs[SLOT] == 0
    complete = sorted(t.system_attrs[SLOT] for t in trials if t.state == TrialState.COMPLETE)
    assert complete == [0, 1, 2, 3]
    assert len(trials) == 5


def test_hpsearch_reap_queues_a_retry_a_dead_process_took_with_it(tmp_path: Path) -> None:
    """`hpsearch reap` does what a worker's reaper does, the lost-retry repair included: once
    the failure is a grace period old, the retry is queued, once."""
    url = f"sqlite:///{tmp_path / 'reap.db'}"
    spec = load_spec_file(str(_study(tmp_path, "reap", n_trials=3)))
    create_study(spec, url)
    loaded = load_study(spec.name, url)
    lost = claim_slot(loaded.study, loaded.storage)
    assert lost is not None
    loaded.storage.set_trial_state_values(lost._trial_id, TrialState.FAIL)  # then it dies

    def retries() -> list[optuna.trial.FrozenTrial]:
        trials = optuna.load_study(study_name=spec.name, storage=url).get_trials()
        return [t for t in trials if t.system_attrs.get(RETRY_OF) == lost.number]

    deadline = time.monotonic() + 60
    while not retries():  # not before the failure is a grace period old
        assert time.monotonic() < deadline, "hpsearch reap never queued the lost retry"
        result = _run(["reap", "--study", spec.name, "--storage", url], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert "re-queued" in result.stderr
    _run(["reap", "--study", spec.name, "--storage", url], cwd=tmp_path)
    (retry,) = retries()
    assert retry.state == TrialState.WAITING and retry.system_attrs[SLOT] == 0
