"""Export in every format, against Optuna's own view of the study; secrets never written."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from hpsearch.search import create_study, load_spec_file, start_workers
from hpsearch.search.cli import main
from hpsearch.search.results._export import _drop_none

from .conftest import hpsearch_command

KEYS = ["study", "objective", "metric", "value", "trial", "params", "training"]


@pytest.fixture
def finished_study(storage_url: str, write_study: Any) -> tuple[str, str]:
    spec = load_spec_file(str(write_study(n_trials=8, body="[training]\nsteps = 2\n")))
    create_study(spec, storage_url)
    processes = start_workers(spec.name, storage_url, workers=2, timeout=None, log_trials=False)
    for process in processes:
        process.join(timeout=300)
    return spec.name, storage_url


def _export(
    name: str, url: str, fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    output = tmp_path / f"best.{fmt}"
    assert (
        main(
            ["export", "--study", name, "--storage", url, "--format", fmt, "--output", str(output)]
        )
        == 0
    )
    capsys.readouterr()
    text = output.read_text()
    if fmt == "json":
        return dict(json.loads(text))
    if fmt == "yaml":
        return dict(yaml.safe_load(text))
    return tomllib.loads(text)


@pytest.mark.slow
def test_export_all_formats_match_optuna_best_trial(
    finished_study: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, url = finished_study
    documents = {fmt: _export(name, url, fmt, tmp_path, capsys) for fmt in ("json", "yaml", "toml")}
    for fmt, document in documents.items():  # each names its own file
        assert (
            document.pop("retrain") == f"hpsearch train {tmp_path / f'best.{fmt}'} --output model"
        )
    assert documents["json"] == documents["yaml"]
    assert _drop_none(documents["json"]) == documents["toml"]  # TOML has no null
    document = documents["json"]
    assert list(document)[: len(KEYS)] == KEYS
    assert document["training"] == {"steps": 2}
    assert document["metric"] == "loss"

    # Optuna's own command line reads the same study and agrees with our export.
    optuna_cli = str(Path(sys.executable).parent / "optuna")
    result = subprocess.run(
        [optuna_cli, "best-trial", "--study-name", name, "--storage", url, "-f", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    best = json.loads(result.stdout)
    assert best["number"] == document["trial"]
    # Optuna names the value by the study's metric name, which hpsearch set.
    assert best["value"] == {"loss": pytest.approx(document["value"])}
    assert best["params"] == pytest.approx(document["params"])


@pytest.mark.slow
def test_export_to_stdout_defaults_to_yaml(
    finished_study: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    name, url = finished_study
    assert main(["export", "--study", name, "--storage", url]) == 0
    document = yaml.safe_load(capsys.readouterr().out)
    assert document["study"] == name


@pytest.mark.slow
def test_export_never_writes_the_password(
    tmp_path: Path, postgres_url: str, write_study: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # PostgreSQL here trusts local users, so a password in the URL is accepted and must vanish.
    url = postgres_url.replace("postgres@", "postgres:s3cret-pw@")
    spec = load_spec_file(str(write_study(n_trials=2)))
    assert main(["create", str(write_study(n_trials=2)), "--storage", url]) == 0
    processes = start_workers(spec.name, url, workers=1, timeout=None, log_trials=True)
    for process in processes:
        process.join(timeout=300)
    for fmt in ("json", "yaml", "toml"):
        output = tmp_path / f"e.{fmt}"
        assert main(["export", "--study", spec.name, "--storage", url, "-o", str(output)]) == 0
        assert "s3cret" not in output.read_text()
    assert main(["status", "--study", spec.name, "--storage", url, "--json"]) == 0
    assert main(["studies", "--storage", url]) == 0
    out, err = capsys.readouterr()
    assert "s3cret" not in out + err


def test_export_without_result_is_an_error(
    storage_url: str, write_study: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = load_spec_file(str(write_study()))
    create_study(spec, storage_url)
    output = tmp_path / "never.json"
    code = main(["export", "--study", spec.name, "--storage", storage_url, "-o", str(output)])
    assert code == 2
    assert "has no completed trial yet" in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.slow
def test_multi_objective_export_is_the_pareto_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'mo.db'}"
    (tmp_path / "two.py").write_text(
        "def two(trial, params):\n    x = params['x']\n    return x ** 2, (x - 2) ** 2\n"
    )
    path = tmp_path / "mo.toml"
    path.write_text(
        '[study]\nname = "mo"\nobjective = "two.py:two"\ndirections = ["minimize", "minimize"]\n'
        'metrics = ["a", "b"]\n[budget]\nn_trials = 12\n[sampler]\nname = "random"\nseed = 0\n'
        '[pruner]\nname = "none"\n[space.x]\ntype = "float"\nlow = -1.0\nhigh = 3.0\n'
    )
    assert main(["run", str(path), "--storage", url, "--workers", "1"]) == 0
    capsys.readouterr()
    document = _export("mo", url, "json", tmp_path, capsys)
    front = document["pareto_front"]
    assert document["metric"] == ["a", "b"] and front
    values = [tuple(p["values"]) for p in front]
    for a in values:  # no member dominates another
        assert not any(b != a and b[0] <= a[0] and b[1] <= a[1] for b in values)
    study = optuna.load_study(study_name="mo", storage=url)
    assert sorted(p["trial"] for p in front) == sorted(t.number for t in study.best_trials)


@pytest.mark.slow
def test_export_bundle_records_how_to_reproduce(
    finished_study: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, url = finished_study
    # Outside a git checkout: no revision, and no failure.
    outside = tmp_path / "outside"
    outside.mkdir()
    monkeypatch.chdir(outside)
    document = _export(name, url, "json", tmp_path, capsys)
    assert document["revision"] is None
    assert document["versions"]["optuna"] == optuna.__version__
    assert document["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(document["versions"]) == {"python", "hpsearch", "optuna", "torch"}
    assert document["retrain"] == f"hpsearch train {tmp_path / 'best.json'} --output model"
    # A user objective with no seed option and no batch plan: recorded as unknown, not guessed.
    assert document["seed"] is None and document["batch"] is None
    # Where the checkpointing feature put the trial's checkpoint (user attribute), if anywhere.
    best = optuna.load_study(study_name=name, storage=url).best_trial
    assert document["checkpoint"] == best.user_attrs.get("checkpoint")
    assert url not in json.dumps(document)

    if shutil.which("git") is None:
        return
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], cwd=checkout, check=True)
    (checkout / "train.py").write_text("# the training code\n")
    subprocess.run([*git, "add", "train.py"], cwd=checkout, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "code"], cwd=checkout, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, check=True
    ).stdout.strip()
    monkeypatch.chdir(checkout)
    assert _export(name, url, "json", tmp_path, capsys)["revision"] == head


@pytest.mark.slow
def test_export_top_k_lists_the_best_in_order(
    finished_study: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, url = finished_study
    output = tmp_path / "top.yaml"
    assert main(["export", "--study", name, "--storage", url, "--top", "3", "-o", str(output)]) == 0
    document = yaml.safe_load(output.read_text())
    study = optuna.load_study(study_name=name, storage=url)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    expected = sorted(complete, key=lambda t: (t.value, t.number))[:3]  # minimize
    assert [t["trial"] for t in document["top"]] == [t.number for t in expected]
    assert [t["value"] for t in document["top"]] == [t.value for t in expected]
    assert document["top"][0]["trial"] == document["trial"]
    assert document["top"][0]["params"] == document["params"]


@pytest.mark.slow
def test_export_csv_has_every_trial(
    finished_study: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, url = finished_study
    output = tmp_path / "trials.csv"
    assert main(["export", "--study", name, "--storage", url, "-o", str(output)]) == 0
    rows = list(csv.DictReader(output.read_text().splitlines()))
    study = optuna.load_study(study_name=name, storage=url)
    finished = [t for t in study.get_trials() if t.state.is_finished()]
    assert [int(r["number"]) for r in rows] == [t.number for t in finished]
    assert list(rows[0])[:3] == ["number", "state", "loss"]
    for row, trial in zip(rows, finished, strict=True):
        assert row["state"] == trial.state.name.lower()
        assert float(row["params_x"]) == trial.params["x"]  # exact: floats are written in full
        if trial.value is not None:
            assert float(row["loss"]) == trial.value
        assert float(row["duration_seconds"]) >= 0
    assert url not in output.read_text()
    # --top has no meaning for the CSV, which holds every trial.
    code = main(["export", "--study", name, "--storage", url, "--format", "csv", "--top", "2"])
    assert code == 2 and "--top 2 with --format csv" in capsys.readouterr().err


@pytest.mark.slow
def test_export_top_k_needs_one_direction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'mo.db'}"
    (tmp_path / "two.py").write_text(
        "def two(trial, params):\n    x = params['x']\n    return x ** 2, (x - 2) ** 2\n"
    )
    path = tmp_path / "mo.toml"
    path.write_text(
        '[study]\nname = "mo"\nobjective = "two.py:two"\ndirections = ["minimize", "minimize"]\n'
        'metrics = ["a", "b"]\n[budget]\nn_trials = 4\n[sampler]\nname = "random"\nseed = 0\n'
        '[pruner]\nname = "none"\n[space.x]\ntype = "float"\nlow = -1.0\nhigh = 3.0\n'
    )
    assert main(["run", str(path), "--storage", url, "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["export", "--study", "mo", "--storage", url, "--top", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 objectives" in err and "Pareto front" in err


@pytest.mark.slow
@pytest.mark.parametrize("target", ["/proc/x.yaml", "/proc/self"])
def test_export_to_a_place_that_cannot_be_written_is_one_line(
    target: str, write_study: Any, tmp_path: Path
) -> None:
    """Any OSError from the temporary file beside the output (here: /proc takes no new files;
    /proc/self is a folder) is one line and exit 2, from the real command."""
    url = f"sqlite:///{tmp_path / 'done.db'}"
    spec = load_spec_file(str(write_study(n_trials=2)))
    create_study(spec, url)
    for process in start_workers(spec.name, url, workers=1, timeout=None, log_trials=False):
        process.join(timeout=300)
    result = subprocess.run(
        [*hpsearch_command(), "export", "--study", spec.name, "--storage", url, "-o", target],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"hpsearch: error: Cannot write {target!r}"), line
