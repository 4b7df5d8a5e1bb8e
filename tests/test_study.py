"""The study contract on every backend: create, load, idempotency, the spec round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from hpsearch.attrs import SLOT
from hpsearch.search import HpsearchError, create_study, load_spec_file, load_study, study_summaries
from hpsearch.search.cli import main
from hpsearch.search.runtime._budget import BATCH


def test_create_load_round_trip(storage_url: str, write_study: Any) -> None:
    spec = load_spec_file(str(write_study(n_trials=5)))
    assert create_study(spec, storage_url).created
    loaded = load_study(spec.name, storage_url)
    assert loaded.spec.data == spec.data
    assert loaded.study.metric_names == ["loss"]
    assert loaded.study.directions == [optuna.study.StudyDirection.MINIMIZE]
    waiting = loaded.study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.system_attrs[SLOT] for t in waiting) == list(range(5))
    # A plain Optuna client sees an ordinary study.
    plain = optuna.load_study(study_name=spec.name, storage=storage_url)
    assert plain.user_attrs["hpsearch:spec"]["budget"]["n_trials"] == 5


def test_large_budget_is_enqueued_in_batches(storage_url: str, write_study: Any) -> None:
    spec = load_spec_file(str(write_study(n_trials=BATCH * 3 + 5)))
    create_study(spec, storage_url)
    study = load_study(spec.name, storage_url).study
    assert len(study.get_trials()) == BATCH


def test_create_is_idempotent_and_refuses_a_different_spec(
    storage_url: str, write_study: Any
) -> None:
    path = write_study(n_trials=4)
    spec = load_spec_file(str(path))
    assert create_study(spec, storage_url).created
    again = create_study(load_spec_file(str(path)), storage_url)
    assert not again.created
    assert len(load_study(spec.name, storage_url).study.get_trials()) == 4  # nothing enqueued twice
    changed = write_study(n_trials=4, objective="flaky.py:flaky")
    with pytest.raises(
        HpsearchError, match=r"different spec \(study\.objective: .*flaky\.py:flaky.\)"
    ):
        create_study(load_spec_file(str(changed)), storage_url)


def test_worker_count_is_not_part_of_the_identity(storage_url: str, write_study: Any) -> None:
    create_study(load_spec_file(str(write_study())), storage_url)
    more = write_study("[resources]\nworkers = 4\n")
    assert not create_study(load_spec_file(str(more)), storage_url).created


def test_unknown_study_lists_existing(
    storage_url: str, write_study: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = load_spec_file(str(write_study()))
    create_study(spec, storage_url)
    code = main(["status", "--study", "no-such-study", "--storage", storage_url])
    err = capsys.readouterr().err
    assert code == 2
    assert "Study 'no-such-study' not found" in err and spec.name in err
    assert err.count("\n") == 1


def test_plain_optuna_study_is_not_taken_over(storage_url: str, write_study: Any) -> None:
    spec = load_spec_file(str(write_study()))
    optuna.create_study(study_name=spec.name, storage=storage_url)
    with pytest.raises(HpsearchError, match="was not created by hpsearch"):
        create_study(spec, storage_url)


def test_studies_lists_rows(
    storage_url: str, write_study: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = load_spec_file(str(write_study(n_trials=3)))
    create_study(spec, storage_url)
    rows = {row["study"]: row for row in study_summaries(storage_url)}
    assert rows[spec.name]["budget"] == 3 and rows[spec.name]["waiting"] == 3
    assert main(["studies", "--storage", storage_url]) == 0
    assert spec.name in capsys.readouterr().out


def test_create_via_cli_reports_both_outcomes(
    storage_url: str, write_study: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = str(write_study())
    assert main(["create", path, "--storage", storage_url]) == 0
    assert "created study" in capsys.readouterr().out
    assert main(["create", path, "--storage", storage_url]) == 0
    assert "same spec; nothing to do" in capsys.readouterr().out
