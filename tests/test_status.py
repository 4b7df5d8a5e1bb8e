"""`hpsearch status --json` follows the schema the README documents."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpsearch.search.cli import main
from hpsearch.search.runtime._budget import claim_slot

from .conftest import ROOT

N_TRIALS = 5


def _documented_keys() -> dict[str, set[str]]:
    """Top-level keys of the README's status table, with the keys of their objects."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Status\n", 1)[1].split("\n## ", 1)[0]
    keys: dict[str, set[str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names_cell, meaning = line.split("|")[1:3]
        inner = re.match(r"\s*(?:list of )?`\{([^}]*)\}`", meaning)
        for name in re.findall(r"`([^`]+)`", names_cell):
            keys[name] = {k.strip() for k in inner.group(1).split(",")} if inner else set()
    return keys


def test_status_json_matches_the_documented_schema(
    tmp_path: Path, write_study: Any, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    path = write_study(n_trials=N_TRIALS, body="[training]\nsteps = 3\n")
    assert main(["run", str(path), "--storage", url, "--workers", "1"]) == 0
    # One more trial, running now: an enqueued extra claimed as a worker would claim it.
    study = optuna.load_study(study_name=study_name, storage=url)
    study.enqueue_trial({"x": 1.0})
    claimed = claim_slot(study)
    assert claimed is not None
    trial_id = claimed._trial_id
    study._storage.set_trial_user_attr(
        trial_id, "worker", {"host": "node-7", "pid": 4242, "devices": "0,1"}
    )
    study._storage.set_trial_intermediate_value(trial_id, 2, 0.5)
    capsys.readouterr()

    assert main(["status", "--study", study_name, "--storage", url, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)

    documented = _documented_keys()
    assert set(status) == set(documented)
    for key, inner in documented.items():
        if not inner:
            continue
        objects = status[key] if isinstance(status[key], list) else [status[key]]
        assert objects, key
        for item in objects:
            assert set(item) == inner, key

    assert status["schema"] == 1
    assert (status["study"], status["directions"], status["metrics"]) == (
        study_name,
        ["minimize"],
        ["loss"],
    )
    assert status["budget"] == {"n_trials": N_TRIALS, "used": N_TRIALS, "remaining": 0}
    assert status["states"] == {
        "complete": N_TRIALS,
        "pruned": 0,
        "failed": 0,
        "running": 1,
        "waiting": 0,
        "retried": 0,
    }
    best = study.best_trial
    assert status["best"] == [{"trial": best.number, "values": [best.value], "params": best.params}]
    assert status["trials_per_hour"] > 0
    assert status["eta_seconds"] is None  # nothing left in the budget
    (running,) = status["running"]
    assert running["trial"] == study._storage.get_trial(trial_id).number
    assert (running["host"], running["pid"], running["devices"], running["epoch"]) == (
        "node-7",
        4242,
        "0,1",
        2,
    )
    assert running["seconds"] >= 0

    # The text form says the same in lines.
    assert main(["status", "--study", study_name, "--storage", url]) == 0
    text = capsys.readouterr().out
    assert f"{N_TRIALS}/{N_TRIALS} trials used" in text
    assert "on node-7 (pid 4242, 0,1), epoch 2" in text
