"""Raising a study's [budget]: a search that has not converged goes on in the same study, with
the trial budget as exact as before; a budget is never lowered, nor raised under running trials."""

from __future__ import annotations

import collections
import multiprocessing
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from optuna_dashboard import get_note

import hpsearch
from hpsearch.attrs import SLOT, SPEC
from hpsearch.errors import HpsearchError
from hpsearch.search import create_study, load_spec_file, load_study
from hpsearch.search.runtime._budget import budget_state, claim_slot, refill, repair_queue
from hpsearch.search.runtime._compute import spent
from hpsearch.storage._optuna_internals import trial_id_of

from .conftest import hpsearch_command


def _file(write_study: Any, n_trials: int, budget: str = "") -> Any:
    path = write_study(n_trials=n_trials)
    if budget:
        path.write_text(path.read_text().replace("[budget]\n", f"[budget]\n{budget}\n", 1))
    return load_spec_file(str(path))


def _run_queue(
    study: optuna.Study, storage: object, n_trials: int, trials: int | None = None
) -> int:
    """Claim, refill and finish queued slots as a worker does (``trials`` of them, or until
    none is left); how many ran. ``n_trials``: the budget as the worker loaded it."""
    ran = 0
    while trials is None or ran < trials:
        claimed = claim_slot(study, storage)
        if claimed is None:
            return ran
        refill(study, storage, claimed, n_trials)
        study.tell(claimed.number, 1.0)
        ran += 1
    return ran


def _slots(study: optuna.Study) -> collections.Counter[int]:
    return collections.Counter(t.system_attrs[SLOT] for t in study.get_trials(deepcopy=False))


@pytest.mark.parametrize(
    ("old", "new", "ran_before"),
    [
        (20, 30, 20),  # the rest of the old last batch, then a whole batch that refills
        (20, 22, 20),  # the rest of the old last batch only
        (16, 40, 16),  # old budget a whole number of batches: the chain goes on from slot 16
        (20, 45, 3),  # an old batch still to be enqueued: its duty carries the queue to 45
        (4, 9, 0),  # nothing ran yet
    ],
)
def test_a_raised_budget_queues_exactly_the_new_slots(
    storage_url: str, write_study: Any, old: int, new: int, ran_before: int
) -> None:
    create_study(_file(write_study, old), storage_url)
    loaded = load_study(_file(write_study, old).name, storage_url)
    assert _run_queue(loaded.study, loaded.storage, old, ran_before) == ran_before
    result = create_study(_file(write_study, new), storage_url)
    assert result.raised == (f"n_trials {old} -> {new}",) and not result.created
    assert result.spec.n_trials == new
    # The queue drains to exactly the raised budget: every slot once, none past it.
    assert _run_queue(loaded.study, loaded.storage, loaded.spec.n_trials) == new - ran_before
    assert _slots(loaded.study) == collections.Counter(range(new))
    state = budget_state(loaded.study.get_trials(deepcopy=False), new)
    assert (state.complete, state.finished) == (new, True)
    stored = load_study(loaded.spec.name, storage_url).spec
    assert stored.n_trials == new and stored.data == result.spec.data


def test_a_raise_cut_short_before_its_slots_is_repaired_by_the_workers(
    storage_url: str, write_study: Any
) -> None:
    """The raised spec is stored first: a `create` killed before it queued the slots leaves
    slots missing (the workers' repair adds them), never slots beyond the budget."""
    spec = _file(write_study, 12)
    create_study(spec, storage_url)
    loaded = load_study(spec.name, storage_url)
    _run_queue(loaded.study, loaded.storage, loaded.spec.n_trials)
    # What a raise to 21 stores before it queues anything.
    raised = {**spec.data, "budget": {**spec.data["budget"], "n_trials": 21}}
    loaded.study.set_user_attr(SPEC, raised)
    # A worker that loaded the study before the raise finds the queue empty: it repairs it.
    state = budget_state(loaded.study.get_trials(deepcopy=False), 12)
    assert repair_queue(loaded.study, loaded.storage, state)
    _run_queue(loaded.study, loaded.storage, loaded.spec.n_trials)
    assert _slots(loaded.study) == collections.Counter(range(21))


def test_run_raises_the_budget_and_the_study_goes_on_exact(
    storage_url: str, write_study: Any
) -> None:
    """Through `hpsearch.run`, with two worker processes: each run ends at its budget."""
    spec = _file(write_study, 5)
    study = hpsearch.run(spec, storage=storage_url, workers=2, progress=False)
    assert len(study.get_trials(deepcopy=False)) == 5
    for n_trials in (11, 27):
        study = hpsearch.run(
            _file(write_study, n_trials), storage=storage_url, workers=2, progress=False
        )
        trials = study.get_trials(deepcopy=False)
        assert [t.state for t in trials] == [TrialState.COMPLETE] * n_trials
        assert _slots(study) == collections.Counter(range(n_trials))
    # The sampler went on from what it had learned: one study, one best.
    assert study.best_trial.number in range(27)


def test_an_epochs_budget_raised_after_it_was_spent_lets_the_study_go_on(
    tmp_path: Path, write_study: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'epochs.db'}"
    # The quadratic example reports 3 epochs per trial.
    study = hpsearch.run(_file(write_study, 30, "epochs = 10"), storage=url, progress=False)
    first = spent(study.get_trials(deepcopy=False)).epochs
    assert 10 <= first < 30 * 3
    study = hpsearch.run(_file(write_study, 30, "epochs = 25"), storage=url, progress=False)
    second = spent(study.get_trials(deepcopy=False)).epochs
    assert 25 <= second < 30 * 3 and second > first
    # Without a limit the rest of the trial budget runs.
    study = hpsearch.run(_file(write_study, 30), storage=url, progress=False)
    assert budget_state(study.get_trials(deepcopy=False), 30).used == 30


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*hpsearch_command(), *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def test_the_cli_says_what_a_raise_changed_and_status_shows_it(
    tmp_path: Path, write_study: Any, study_name: str
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    write_study(n_trials=4)
    assert _cli("create", "study.toml", "--storage", url, cwd=tmp_path).returncode == 0
    path = write_study(n_trials=10)
    path.write_text(path.read_text().replace("[budget]\n", "[budget]\ntimeout = 600\n", 1))
    done = _cli("create", "study.toml", "--storage", url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"raised the budget of study {study_name!r} in {url}: "
        "n_trials 4 -> 10, timeout none -> 600\n"
    )
    status = _cli("status", "--study", study_name, "--storage", url, cwd=tmp_path)
    assert "0/10 trials used, 10 remaining" in status.stdout, status.stdout
    # The dashboard's note on the study shows the budget as raised.
    note = get_note(optuna.load_study(study_name=study_name, storage=url))
    assert "budget 10 trials." in note and "budget 4 trials." not in note


@pytest.mark.parametrize(
    ("budget", "lowered"),
    [
        ("n_trials = 3", "n_trials 9 -> 3"),
        ("n_trials = 9\nepochs = 50", "epochs none -> 50"),
    ],
)
def test_a_lowered_budget_is_refused_in_one_line_and_changes_nothing(
    tmp_path: Path, write_study: Any, study_name: str, budget: str, lowered: str
) -> None:
    url = f"sqlite:///{tmp_path / 'low.db'}"
    write_study(n_trials=9)
    assert _cli("create", "study.toml", "--storage", url, cwd=tmp_path).returncode == 0
    before = load_study(study_name, url).spec.data
    path = write_study(n_trials=9)
    path.write_text(path.read_text().replace("n_trials = 9\n", f"{budget}\n", 1))
    refused = _cli("create", "study.toml", "--storage", url, cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert f"({lowered})" in refused.stderr and "raised, never lowered" in refused.stderr
    assert load_study(study_name, url).spec.data == before
    assert len(optuna.load_study(study_name=study_name, storage=url).trials) == 8  # one batch


def test_a_raise_is_refused_while_a_trial_runs_but_a_new_timeout_is_not(
    tmp_path: Path, write_study: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'running.db'}"
    spec = _file(write_study, 4)
    create_study(spec, url)
    loaded = load_study(spec.name, url)
    assert claim_slot(loaded.study, loaded.storage) is not None  # a worker's trial, running
    with pytest.raises(HpsearchError, match=r"has 1 running trial\(s\): its \[budget\] can be"):
        create_study(_file(write_study, 8), url)
    assert load_study(spec.name, url).spec.n_trials == 4
    assert len(loaded.study.get_trials(deepcopy=False)) == 4
    result = create_study(_file(write_study, 4, "timeout = 60"), url)
    assert result.raised == ("timeout none -> 60",)
    assert load_study(spec.name, url).spec.timeout == 60


def test_a_change_beside_the_budget_is_still_a_different_spec(
    storage_url: str, write_study: Any
) -> None:
    create_study(_file(write_study, 4), storage_url)
    path = write_study(n_trials=9, objective="flaky.py:flaky")
    with pytest.raises(HpsearchError, match=r"different spec \(.*budget\.n_trials: 4 -> 9"):
        create_study(load_spec_file(str(path)), storage_url)


def test_a_dead_workers_trial_does_not_hold_a_raise_up(tmp_path: Path, write_study: Any) -> None:
    """A trial whose heartbeat is past the grace period is failed by the raise, then retried."""
    url = f"sqlite:///{tmp_path / 'dead.db'}"
    resources = "[resources]\nheartbeat_interval = 1\ngrace_period = 2\n"
    spec = load_spec_file(str(write_study(resources, n_trials=4)))
    create_study(spec, url)
    loaded = load_study(spec.name, url)
    claimed = claim_slot(loaded.study, loaded.storage)
    assert claimed is not None
    loaded.storage.record_heartbeat(trial_id_of(claimed))  # its worker's last beat, then it died
    time.sleep(3.5)
    result = create_study(load_spec_file(str(write_study(resources, n_trials=8))), url)
    assert result.raised == ("n_trials 4 -> 8",)
    states = collections.Counter(t.state for t in loaded.study.get_trials(deepcopy=False))
    assert states == {TrialState.FAIL: 1, TrialState.WAITING: 8}  # its retry is queued


ALWAYS_PRUNED = """
import optuna

def always_pruned(trial, params):
    trial.report(1.0, 0)
    raise optuna.TrialPruned()
"""


@pytest.mark.parametrize(
    ("budget", "objective", "message"),
    [
        (
            "epochs = 2",  # the quadratic example trains 3 epochs
            "quadratic.py:quadratic",
            "has no completed trial: its epochs budget was spent before a configuration trained "
            "to its end (0 paused, 1 pruned, 0 failed); raise [budget] epochs in the study file",
        ),
        (
            "",
            "always_pruned.py:always_pruned",
            "has no completed trial: none of its 3 trials completed (0 paused, 3 pruned, 0 "
            "failed); raise [budget] n_trials in the study file",
        ),
    ],
)
def test_a_study_over_without_a_completed_trial_says_how_to_go_on(
    tmp_path: Path, write_study: Any, study_name: str, budget: str, objective: str, message: str
) -> None:
    """Not "run `hpsearch worker`", which would start nothing."""
    (tmp_path / "always_pruned.py").write_text(ALWAYS_PRUNED)
    url = f"sqlite:///{tmp_path / 'over.db'}"
    path = write_study(n_trials=3, objective=objective)
    path.write_text(path.read_text().replace("[budget]\n", f"[budget]\n{budget}\n", 1))
    run = _cli("run", "study.toml", "--storage", url, "--workers", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert message in run.stdout
    export = _cli("export", "--study", study_name, "--storage", url, cwd=tmp_path)
    assert export.returncode == 2 and export.stderr.count("\n") == 1, export.stderr
    assert message in export.stderr


def _raise_in_a_process(path: str, url: str, start: Any) -> None:
    spec = load_spec_file(path)
    start.wait()  # all at once
    create_study(spec, url)


def test_processes_raising_at_once_queue_each_new_slot_once(
    storage_url: str, write_study: Any
) -> None:
    spec = _file(write_study, 13)
    create_study(spec, storage_url)
    loaded = load_study(spec.name, storage_url)
    _run_queue(loaded.study, loaded.storage, loaded.spec.n_trials)
    raised = write_study(n_trials=45)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    processes = [
        context.Process(target=_raise_in_a_process, args=(str(raised), storage_url, start))
        for _ in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    _run_queue(loaded.study, loaded.storage, loaded.spec.n_trials)
    assert _slots(loaded.study) == collections.Counter(range(45))
