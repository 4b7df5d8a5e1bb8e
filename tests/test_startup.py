"""`hpsearch run`'s start-up: the parent opens the database once, and the workers it starts
before the study is ready (behind a gate) never outlive a refusal or a used budget."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

import hpsearch
from hpsearch.errors import HpsearchError


@pytest.fixture
def engines_opened() -> Iterator[dict[int, sqlalchemy.engine.Engine]]:
    """Every SQLAlchemy engine this process connects with while the test runs (kept alive, so
    that no two share an id)."""
    opened: dict[int, sqlalchemy.engine.Engine] = {}

    def record(connection: sqlalchemy.engine.Connection) -> None:
        opened[id(connection.engine)] = connection.engine

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "engine_connect", record)
    yield opened
    sqlalchemy.event.remove(sqlalchemy.engine.Engine, "engine_connect", record)


@pytest.mark.slow
def test_run_opens_the_database_once_in_the_parent(
    write_study: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    engines_opened: dict[int, Any],
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'once.db'}"
    study = hpsearch.run(write_study(n_trials=2), storage=url, workers=1, progress=False)
    assert len(study.get_trials(deepcopy=False)) == 2
    # Created, loaded, checked and summarised on one engine (the workers have their own).
    assert len(engines_opened) == 1


@pytest.mark.slow
def test_a_refused_run_leaves_no_worker_behind(
    write_study: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    study_name: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'refused.db'}"
    hpsearch.create(write_study(n_trials=2), storage=url)
    with pytest.raises(HpsearchError, match=r"already exists .* with a different spec"):
        hpsearch.run(
            write_study(n_trials=2, objective="flaky.py:flaky"),
            storage=url,
            workers=1,
            progress=False,
        )
    assert multiprocessing.active_children() == []
    # The workers that started behind the gate never claimed a trial.
    trials = hpsearch.load(study_name, storage=url).get_trials(deepcopy=False)
    assert trials and all(t.state.name == "WAITING" for t in trials)


@pytest.mark.slow
def test_a_used_budget_starts_no_trial_and_leaves_no_worker(
    write_study: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'used.db'}"
    path = write_study(n_trials=2)
    first = hpsearch.run(path, storage=url, workers=1, progress=False)
    finished = [(t.number, t.datetime_complete) for t in first.get_trials(deepcopy=False)]
    again = hpsearch.run(path, storage=url, workers=1)
    assert (
        "the budget of 2 trial(s) is used: no worker started (raise [budget] n_trials in the "
        "file to go on)"
    ) in capsys.readouterr().err
    assert multiprocessing.active_children() == []
    assert [(t.number, t.datetime_complete) for t in again.get_trials()] == finished
