"""Compression-aware studies through real worker processes on SQLite: the Pareto front of a
multi-objective digits study, and constraints that mark infeasible trials."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpsearch.errors import SpecError
from hpsearch.search import load_spec_file
from hpsearch.search.cli import main

MULTI = """
[study]
name = "compress-front"
objective = "digits-mlp"
metrics = ["val_accuracy", "size_bytes", "latency_ms"]   # directions follow from the names

[budget]
n_trials = 8

[sampler]
name = "random"
seed = 1

[resources]
workers = 2

[training]
epochs = 2
device = "cpu"
lr = 0.01
depth = 1

[space.width]
type = "int"
low = 16
high = 128
log = true

[space.prune_amount]
type = "float"
low = 0.0
high = 0.9

[space.quantize]
type = "categorical"
choices = ["none", "dynamic-int8"]
"""

CONSTRAINED = """
[study]
name = "compress-constrained"
objective = "digits-mlp"

[budget]
n_trials = 4

[sampler]
name = "grid"

[pruner]
name = "none"

[resources]
workers = 2

[constraints]
size_bytes = { max = 20_000 }

[training]
epochs = 2
device = "cpu"
lr = 0.01
depth = 1

[space.width]
type = "categorical"
choices = [16, 32, 128, 256]
"""


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers write per-trial files (checkpoints) under the working directory: keep them here.
    monkeypatch.chdir(tmp_path)


def _write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _export(name: str, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    output = tmp_path / "best.json"
    assert main(["export", "--study", name, "--storage", url, "--output", str(output)]) == 0
    capsys.readouterr()
    return json.loads(output.read_text())


def _dominates(a: list[float], b: list[float], signs: list[int]) -> bool:
    """a dominates b: no worse in every objective, better in one (signs: +1 minimize)."""
    pairs = [(s * x, s * y) for s, x, y in zip(signs, a, b, strict=True)]
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


@pytest.mark.slow
def test_multi_objective_study_exports_a_non_dominated_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'front.db'}"
    path = _write(tmp_path, MULTI)
    assert load_spec_file(str(path)).directions == ["maximize", "minimize", "minimize"]
    assert main(["run", str(path), "--storage", url]) == 0
    study = optuna.load_study(study_name="compress-front", storage=url)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 8  # a multi-objective study reports nothing and prunes nothing
    document = _export("compress-front", url, tmp_path, capsys)
    front = document["pareto_front"]
    assert document["metric"] == ["val_accuracy", "size_bytes", "latency_ms"] and front
    signs = [-1, 1, 1]
    for member in front:
        assert not any(_dominates(other["values"], member["values"], signs) for other in front)
        # Every completed trial that dominates nothing on the front is left out, and vice versa.
        assert not any(_dominates(t.values, member["values"], signs) for t in complete)
        assert member["measurements"]["size_bytes"] == member["values"][1]
        assert set(member["measurements"]) == {"val_accuracy", "params", "size_bytes", "latency_ms"}
    assert sorted(m["trial"] for m in front) == sorted(t.number for t in study.best_trials)
    # The exported configuration carries the compression recipe that produced the model.
    assert document["compression"]["recipe"]["quantize"] == document["params"]["quantize"]
    assert main(["status", "--study", "compress-front", "--storage", url, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert sorted(b["trial"] for b in status["best"]) == sorted(m["trial"] for m in front)


@pytest.mark.slow
def test_constraint_marks_infeasible_trials_and_the_best_is_feasible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'constrained.db'}"
    assert main(["run", str(_write(tmp_path, CONSTRAINED)), "--storage", url]) == 0
    study = optuna.load_study(study_name="compress-constrained", storage=url)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.params["width"] for t in trials) == [16, 32, 128, 256]
    feasible = []
    for trial in trials:
        violation = trial.constraints["size_bytes_max"]
        assert violation == pytest.approx(trial.user_attrs["size_bytes"] - 20_000)
        if violation <= 0:
            feasible.append(trial)
    assert sorted(t.params["width"] for t in feasible) == [16, 32]  # 128 and 256 are too big
    document = _export("compress-constrained", url, tmp_path, capsys)
    best = max(feasible, key=lambda t: (t.value, -t.number))
    assert document["trial"] == best.number
    assert document["measurements"]["size_bytes"] <= 20_000
    assert document["constraints"] == {"size_bytes": {"max": 20_000}}
    # --top ranks the feasible trials first, and `hpsearch studies` shows a feasible best.
    capsys.readouterr()
    assert (
        main(
            [
                "export",
                "--study",
                "compress-constrained",
                "--storage",
                url,
                "--top",
                "4",
                "--format",
                "json",
            ]
        )
        == 0
    )
    top = json.loads(capsys.readouterr().out)["top"]
    assert [entry["trial"] for entry in top[:2]] == [
        t.number for t in sorted(feasible, key=lambda t: (-t.value, t.number))
    ]
    from hpsearch.search import study_summaries

    (row,) = study_summaries(url)
    assert row["best_value"] == best.value


@pytest.mark.slow
def test_constraints_nobody_meets_leave_export_with_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    text = CONSTRAINED.replace("max = 20_000", "max = 100").replace("[16, 32, 128, 256]", "[16]")
    text = text.replace("n_trials = 4", "n_trials = 1")
    assert main(["run", str(_write(tmp_path, text)), "--storage", url]) == 0
    capsys.readouterr()
    code = main(["export", "--study", "compress-constrained", "--storage", url])
    assert code == 2
    err = capsys.readouterr().err
    assert "no completed trial that meets its [constraints] (size_bytes <= 100)" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_user_objective_returning_a_mapping_feeds_metrics_and_constraints(
    tmp_path: Path,
) -> None:
    (tmp_path / "mapped.py").write_text(
        "def mapped(trial, params):\n"
        "    x = params['x']\n"
        "    return {'loss': (x - 1) ** 2, 'cost': abs(x)}\n"
    )
    text = """
    [study]
    name = "mapped"
    objective = "mapped.py:mapped"
    direction = "minimize"
    metric = "loss"
    [budget]
    n_trials = 6
    [sampler]
    name = "random"
    seed = 0
    [pruner]
    name = "none"
    [constraints]
    cost = { max = 0.5 }
    [space.x]
    type = "float"
    low = -2.0
    high = 2.0
    """
    url = f"sqlite:///{tmp_path / 'mapped.db'}"
    assert main(["run", str(_write(tmp_path, text)), "--storage", url]) == 0
    study = optuna.load_study(study_name="mapped", storage=url)
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert trial.constraints["cost_max"] == pytest.approx(abs(trial.params["x"]) - 0.5)
    if any(t.constraints["cost_max"] <= 0 for t in study.trials):
        assert abs(study.best_trial.params["x"]) <= 0.5


@pytest.mark.slow
def test_a_mapping_without_the_metric_fails_the_trial_clearly(tmp_path: Path) -> None:
    (tmp_path / "wrong.py").write_text("def wrong(trial, params):\n    return {'other': 1.0}\n")
    text = """
    [study]
    name = "wrong"
    objective = "wrong.py:wrong"
    direction = "minimize"
    metric = "loss"
    [budget]
    n_trials = 1
    [pruner]
    name = "none"
    [space.x]
    type = "float"
    low = 0.0
    high = 1.0
    """
    url = f"sqlite:///{tmp_path / 'wrong.db'}"
    main(["run", str(_write(tmp_path, text)), "--storage", url])
    (trial,) = optuna.load_study(study_name="wrong", storage=url).trials
    assert trial.state == optuna.trial.TrialState.FAIL
    assert "objective returned no 'loss'; it returned other" in trial.user_attrs["error"]


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (
            ('metrics = ["val_accuracy", "size_bytes", "latency_ms"]', 'metric = "size_byte"'),
            "metric 'size_byte' is not measured by 'digits-mlp'. Did you mean 'size_bytes'?",
        ),
        (
            ("[training]", "[constraints]\nlatency = { max = 2.0 }\n[training]"),
            "'latency' is not a measurement of this objective. Did you mean 'latency_ms'?",
        ),
        (
            ("[training]", "[constraints]\nsize_bytes = { most = 2 }\n[training]"),
            "[constraints.size_bytes]: unknown bound 'most'. Allowed: max, min.",
        ),
        (
            ("[training]", '[constraints]\nsize_bytes = { max = "1MB" }\n[training]'),
            "max must be a number, got '1MB'.",
        ),
        (
            ("[training]", "[constraints]\nparams = { min = 5, max = 1 }\n[training]"),
            "min 5 is above max 1; no value fits.",
        ),
    ],
)
def test_spec_refuses_unknown_metrics_and_bad_constraints(
    tmp_path: Path, replace: tuple[str, str], message: str
) -> None:
    path = _write(tmp_path, MULTI.replace(*replace))
    with pytest.raises(SpecError) as info:
        load_spec_file(str(path))
    assert message in str(info.value)


def test_a_spec_without_constraints_is_unchanged(tmp_path: Path) -> None:
    spec = load_spec_file(str(_write(tmp_path, MULTI)))
    assert "constraints" not in spec.data and spec.constraints == {}
    with_bound = MULTI.replace(
        "[training]", "[constraints]\nlatency_ms = { max = 2.0 }\n[training]"
    )
    assert load_spec_file(str(_write(tmp_path, with_bound))).constraints == {
        "latency_ms": {"max": 2.0}
    }
