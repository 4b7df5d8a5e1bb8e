"""`hpsearch status --json` follows the schema docs/status.md documents."""

from __future__ import annotations

import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import pytest

import hpsearch
from hpsearch.search.cli import main
from hpsearch.search.runtime._budget import claim_slot

from .conftest import ROOT, hpsearch_command

N_TRIALS = 5


def _documented_keys() -> dict[str, set[str]]:
    """Top-level keys of docs/status.md's table, with the keys of their objects."""
    section = (ROOT / "docs" / "status.md").read_text()
    keys: dict[str, set[str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names_cell, meaning = line.split("|")[1:3]
        inner = re.match(r"\s*(?:list of )?`\{([^}]*)\}`", meaning)
        for name in re.findall(r"`([^`]+)`", names_cell):
            keys[name] = {k.strip() for k in inner.group(1).split(",")} if inner else set()
    return keys


@pytest.mark.slow
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
        "paused": 0,
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


# Every command that only reads a storage; none may create a missing SQLite file.
READ_ONLY_COMMANDS = {
    "status": ["status", "--study", "x"],
    "status --json": ["status", "--study", "x", "--json"],
    "studies": ["studies"],
    "studies --json": ["studies", "--json"],
    "export": ["export", "--study", "x"],
    "report": ["report", "--study", "x", "--output", "report.html"],
    "reap": ["reap", "--study", "x"],
    "worker": ["worker", "--study", "x", "--workers", "1"],
    "worker --dry-run": ["worker", "--study", "x", "--dry-run"],
    "dashboard": ["dashboard", "--port", "1"],
    "db check": ["db", "check"],
    "db upgrade": ["db", "upgrade"],
}


def _hpsearch(args: list[str], cwd: Path, storage: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HPSEARCH_STORAGE"}
    if storage is not None:
        env["HPSEARCH_STORAGE"] = storage
    return subprocess.run(
        [*hpsearch_command(), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


@pytest.mark.parametrize(
    ("where", "names"),
    [
        ("--storage", list(READ_ONLY_COMMANDS)),
        ("$HPSEARCH_STORAGE", ["status", "studies", "db check"]),
        ("default", ["status", "studies", "db upgrade"]),  # ./hpsearch.db
    ],
)
def test_read_only_commands_never_create_a_sqlite_file(
    tmp_path: Path, where: str, names: list[str]
) -> None:
    missing = tmp_path / ("hpsearch.db" if where == "default" else "missing.db")
    url = f"sqlite:///{missing}" if where != "default" else None
    commands = [
        [*READ_ONLY_COMMANDS[name], *(["--storage", str(url)] if where == "--storage" else [])]
        for name in names
    ]
    storage = url if where == "$HPSEARCH_STORAGE" else None
    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        results = list(pool.map(lambda args: _hpsearch(args, tmp_path, storage), commands))
    for name, result in zip(names, results, strict=True):
        shown = f"{name}: rc {result.returncode}\n{result.stdout}{result.stderr}"
        assert result.returncode == 2, shown
        assert result.stderr.startswith("hpsearch: error: "), shown
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, shown
        assert str(missing) in result.stderr and "hpsearch create STUDY.toml" in result.stderr
        assert not missing.exists(), shown
    assert not (tmp_path / "report.html").exists()


def test_a_missing_sqlite_folder_is_not_created_either(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder" / "x.db"
    assert main(["status", "--study", "x", "--storage", f"sqlite:///{missing}"]) == 2
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("call", ["status", "export", "load", "studies"])
def test_python_api_refuses_a_missing_sqlite_file(tmp_path: Path, call: str) -> None:
    missing = tmp_path / "missing.db"
    url = f"sqlite:///{missing}"
    with pytest.raises(hpsearch.HpsearchError) as raised:
        if call == "studies":
            hpsearch.studies(storage=url)
        else:
            getattr(hpsearch, call)("x", storage=url)
    message = str(raised.value)
    assert str(missing) in message and "not found" in message and "\n" not in message
    assert not missing.exists()


def test_create_still_creates_the_file_and_status_reads_it(
    tmp_path: Path, write_study: Any, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert main(["create", str(write_study(n_trials=2)), "--storage", url]) == 0
    assert (tmp_path / "new.db").is_file()
    capsys.readouterr()
    assert main(["status", "--study", study_name, "--storage", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["budget"]["n_trials"] == 2
