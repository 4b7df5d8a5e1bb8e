"""Study-file validation: typos named, fixed-settings studies, options and resources refused at
create rather than in every trial, and the study's own [resources] kept honestly on a new run."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpsearch.search import load_spec_file
from hpsearch.search.cli import main
from tests.conftest import hpsearch_command


def create_fails(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: Path,
    expected: list[str],
) -> None:
    """`hpsearch create` refuses ``path`` in one line naming ``expected`` and writes nothing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    code = main(["create", str(path)])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("hpsearch: error: "), err
    assert "Traceback" not in err
    for words in expected:
        assert words in err, err
    assert not (tmp_path / "hpsearch.db").exists()


SPACE_TYPOS: list[tuple[str, str, list[str]]] = [
    ("tyep = 'float'\nlow = 0.0\nhigh = 1.0\n", "tyep", ["Did you mean 'type'"]),
    ("type = 'float'\nlwo = 0.0\nhigh = 1.0\n", "lwo", ["Did you mean 'low'"]),
    ("type = 'int'\nlow = 0\nhihg = 3\n", "hihg", ["Did you mean 'high'"]),
    ("type = 'int'\nlow = 1\nhigh = 3\nlogs = true\n", "logs", ["Did you mean 'log'"]),
    ("type = 'float'\nlow = 0.0\nhigh = 1.0\nsteps = 0.1\n", "steps", ["Did you mean 'step'"]),
    ("type = 'categorical'\nchioces = ['a', 'b']\n", "chioces", ["Did you mean 'choices'"]),
    ("type = 'categorical'\nchoices = ['a']\nwehn = { x = 1.0 }\n", "wehn", ["'when'"]),
    # Without a type the typo is still what is named, not a missing type.
    ("tpye = 'categorical'\nchioces = ['a', 'b']\n", "tpye", ["Did you mean 'type'"]),
]


@pytest.mark.parametrize(("body", "key", "expected"), SPACE_TYPOS, ids=[t[1] for t in SPACE_TYPOS])
def test_space_key_typo_is_named(
    capsys: pytest.CaptureFixture[str],
    write_study: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    body: str,
    key: str,
    expected: list[str],
) -> None:
    path = write_study("[space.y]\n" + body)
    create_fails(
        capsys, tmp_path, monkeypatch, path, ["[space.y]", f"unknown key {key!r}", *expected]
    )


def test_space_entry_without_type_says_type_is_required(
    capsys: pytest.CaptureFixture[str],
    write_study: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_study("[space.y]\nlow = 0.0\nhigh = 1.0\n")
    create_fails(
        capsys,
        tmp_path,
        monkeypatch,
        path,
        ["[space.y]", "type is required", "categorical, float, int"],
    )


def test_constraint_bound_typo_gets_a_suggestion(
    capsys: pytest.CaptureFixture[str],
    write_study: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_study("[constraints]\nloss = { mx = 3.0 }\n")
    create_fails(capsys, tmp_path, monkeypatch, path, ["unknown bound 'mx'", "Did you mean 'max'"])


def test_toml_date_is_one_line(
    capsys: pytest.CaptureFixture[str],
    write_study: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_study()
    text = path.read_text().replace("seed = 3", "seed = 3\noptions = { x0 = { a = 1979-05-27 } }")
    path.write_text(text.replace('name = "tpe"', 'name = "cmaes"'))
    create_fails(
        capsys, tmp_path, monkeypatch, path, ["[sampler.options.x0]", "1979-05-27", "date"]
    )


# (the [sampler] or [pruner] section, the words the one-line message must contain)
BAD_OPTIONS: list[tuple[str, str, list[str]]] = [
    (
        "tpe int given a string",
        '[sampler]\nname = "tpe"\noptions = { n_startup_trials = "abc" }\n',
        ["[sampler.options]", "'n_startup_trials' of TPESampler must be int", "'abc'"],
    ),
    (
        "tpe bool given a number",
        '[sampler]\nname = "tpe"\noptions = { multivariate = 1 }\n',
        ["'multivariate' of TPESampler must be bool", "got 1"],
    ),
    (
        "tpe callable",
        '[sampler]\nname = "tpe"\noptions = { gamma = 3 }\n',
        ["'gamma' of TPESampler takes a Python object", "remove it"],
    ),
    (
        "cmaes float given a string",
        '[sampler]\nname = "cmaes"\noptions = { popsize = "4" }\n',
        ["'popsize' of CmaEsSampler must be int", "'4'"],
    ),
    (
        "median pruner int given a string",
        '[pruner]\nname = "median"\noptions = { n_warmup_steps = "2" }\n',
        ["[pruner.options]", "'n_warmup_steps' of MedianPruner must be int", "'2'"],
    ),
    (
        "hyperband given a float",
        '[pruner]\nname = "hyperband"\noptions = { max_resource = 2.5 }\n',
        ["'max_resource' of HyperbandPruner must be str or int", "2.5"],
    ),
]


@pytest.mark.parametrize(
    ("label", "section", "expected"), BAD_OPTIONS, ids=[b[0] for b in BAD_OPTIONS]
)
def test_option_of_the_wrong_type_is_refused_at_create(
    capsys: pytest.CaptureFixture[str],
    write_study: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    label: str,
    section: str,
    expected: list[str],
) -> None:
    path = write_study()
    text = path.read_text()
    # Replace the fixture's own section of that name.
    head, _, rest = text.partition(section.split("\n", 1)[0])
    rest = rest.split("\n[", 1)[1]
    path.write_text(head + section + "\n[" + rest)
    create_fails(capsys, tmp_path, monkeypatch, path, expected)


def test_options_of_the_right_type_validate(write_study: Any) -> None:
    path = write_study()
    text = path.read_text().replace('name = "tpe"', 'name = "cmaes"')
    text = text.replace(
        "seed = 3",
        "seed = 3\noptions = { n_startup_trials = 2, popsize = 4, with_margin = false }",
    )
    text = text.replace(
        'name = "none"', 'name = "hyperband"\noptions = { max_resource = "auto", min_resource = 2 }'
    )
    path.write_text(text)
    spec = load_spec_file(str(path))
    assert spec.sampler.options["popsize"] == 4 and spec.pruner.name == "hyperband"


BAD_RESOURCES: list[tuple[str, list[str]]] = [
    ("workers = 1000000", ["workers must be at most 256", "1000000"]),
    ("devices_per_trial = 1000000", ["devices_per_trial must be at most 64", "1000000"]),
    ("nodes_per_trial = 1000000", ["nodes_per_trial must be at most 1024"]),
    ("grace_period = 100000000000000000", ["grace_period must be at most 604800", "one week"]),
    ("dist_timeout = 100000000000000000", ["dist_timeout must be at most 604800"]),
    ("max_retry = 100000000", ["max_retry must be at most 1000"]),
]


@pytest.mark.parametrize(("line", "expected"), BAD_RESOURCES, ids=[b[0] for b in BAD_RESOURCES])
def test_resources_beyond_their_bounds_are_refused(
    capsys: pytest.CaptureFixture[str],
    write_study: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    line: str,
    expected: list[str],
) -> None:
    path = write_study(f"[resources]\n{line}\n")
    create_fails(capsys, tmp_path, monkeypatch, path, ["[resources]", *expected])


CONSTANT = textwrap.dedent(
    """
    def constant(trial, params):
        if params:
            raise RuntimeError(f"a fixed-settings trial got parameters {params!r}")
        return 1.0 + trial.number
    """
)


def fixed_settings_study(tmp_path: Path, name: str, n_trials: int, workers: int) -> Path:
    (tmp_path / "constant.py").write_text(CONSTANT)
    path = tmp_path / "fixed.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [study]
            name = "{name}"
            objective = "constant.py:constant"
            direction = "minimize"

            [budget]
            n_trials = {n_trials}

            [resources]
            workers = {workers}
            """
        )
    )
    return path


def test_empty_space_validates(tmp_path: Path, study_name: str) -> None:
    spec = load_spec_file(str(fixed_settings_study(tmp_path, study_name, 3, 1)))
    assert spec.space == {} and spec.n_trials == 3


@pytest.mark.slow
def test_empty_space_runs_its_n_trials_through_workers(
    tmp_path: Path, study_name: str, storage_url: str
) -> None:
    path = fixed_settings_study(tmp_path, study_name, 5, 2)
    result = subprocess.run(
        [*hpsearch_command(), "run", str(path), "--storage", storage_url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 5 and len(trials) == 5
    assert all(t.params == {} for t in complete)
    assert sorted(t.value for t in complete) == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_run_refuses_a_changed_study_wide_resource(
    capsys: pytest.CaptureFixture[str],
    write_study: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    path = write_study('[resources]\ngrace_period = 60\nartifacts = "first"\n')
    assert main(["create", str(path), "--storage", url]) == 0
    capsys.readouterr()
    stored = optuna.load_study(study_name=load_spec_file(str(path)).name, storage=url)
    before = json.dumps(stored.user_attrs, sort_keys=True)

    path.write_text(
        path.read_text()
        .replace("grace_period = 60", "grace_period = 120\nworkers = 2")
        .replace('artifacts = "first"', 'artifacts = "second"')
    )
    code = main(["run", str(path), "--storage", url])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    for words in (
        "grace_period = 60 (the file gives 120)",
        "artifacts = 'first' (the file gives 'second')",
        "the study's",
        "only workers and devices_per_trial",
    ):
        assert words in err, err
    assert "workers = 1" not in err  # a machine's own setting is no conflict
    # Nothing changed and nothing ran.
    stored = optuna.load_study(study_name=stored.study_name, storage=url)
    assert json.dumps(stored.user_attrs, sort_keys=True) == before
    assert all(t.state == optuna.trial.TrialState.WAITING for t in stored.trials)


def test_create_accepts_a_changed_worker_count(
    capsys: pytest.CaptureFixture[str],
    write_study: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    path = write_study("[resources]\nworkers = 1\n")
    assert main(["create", str(path), "--storage", url]) == 0
    path.write_text(path.read_text().replace("workers = 1", "workers = 3\ndevices_per_trial = 2"))
    assert main(["create", str(path), "--storage", url]) == 0
    assert "already exists" in capsys.readouterr().out


def test_grid_of_an_empty_space_is_refused(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    study_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = fixed_settings_study(tmp_path, study_name, 3, 1)
    path.write_text(path.read_text() + '\n[sampler]\nname = "grid"\n')
    create_fails(capsys, tmp_path, monkeypatch, path, ["[sampler]", "grid sampler needs a [space]"])
