"""Export in every format, against Optuna's own view of the study; secrets never written."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from search import create_study, load_spec_file, start_workers
from search.cli import main

KEYS = ["study", "objective", "metric", "value", "trial", "params", "training"]


@pytest.fixture
def finished_study(storage_url: str, write_study: Any) -> tuple[str, str]:
    spec = load_spec_file(str(write_study(n_trials=8, body="[training]\nsteps = 2\n")))
    create_study(spec, storage_url)
    processes = start_workers(
        spec.name, storage_url, workers=2, timeout=None, include_host=False, log_trials=False
    )
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


def test_export_all_formats_match_optuna_best_trial(
    finished_study: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, url = finished_study
    documents = {fmt: _export(name, url, fmt, tmp_path, capsys) for fmt in ("json", "yaml", "toml")}
    assert documents["json"] == documents["yaml"] == documents["toml"]
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


def test_export_to_stdout_defaults_to_yaml(
    finished_study: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    name, url = finished_study
    assert main(["export", "--study", name, "--storage", url]) == 0
    document = yaml.safe_load(capsys.readouterr().out)
    assert document["study"] == name


def test_export_never_writes_the_password(
    tmp_path: Path, postgres_url: str, write_study: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # PostgreSQL here trusts local users, so a password in the URL is accepted and must vanish.
    url = postgres_url.replace("postgres@", "postgres:s3cret-pw@")
    spec = load_spec_file(str(write_study(n_trials=2)))
    assert main(["create", str(write_study(n_trials=2)), "--storage", url]) == 0
    processes = start_workers(
        spec.name, url, workers=1, timeout=None, include_host=False, log_trials=True
    )
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
