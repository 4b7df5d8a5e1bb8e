"""Study files: what validates, how it is normalised, and one clear line for each mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpsearch.search import SpecError, load_spec_file
from hpsearch.search.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_builtin_digits_study_validates() -> None:
    spec = load_spec_file(str(Path(__file__).parent.parent / "studies" / "digits.toml"))
    assert spec.name == "digits-mlp"
    assert spec.directions == ["maximize"] and spec.metrics == ["val_accuracy"]
    assert spec.space["momentum"]["when"] == {"optimizer": ["sgd"]}
    assert spec.is_conditional
    assert spec.n_trials == 30


def test_user_objective_path_is_made_absolute(write_study: Any, tmp_path: Path) -> None:
    spec = load_spec_file(str(write_study()))
    assert spec.objective == f"{tmp_path / 'quadratic.py'}:quadratic"


def test_conditional_tpe_gets_group_sampling(write_study: Any) -> None:
    from hpsearch.search.spec._samplers import build_sampler

    path = write_study(
        extra_space="""
        [space.opt]
        type = "categorical"
        choices = ["sgd", "adam"]
        [space.momentum]
        type = "float"
        low = 0.0
        high = 0.9
        when = { opt = "sgd" }
        """
    )
    sampler = build_sampler(load_spec_file(str(path)), seed=0)
    assert sampler._multivariate and sampler._group


# (study file body appended to a valid file, the words the one-line message must contain)
BAD_FILES: list[tuple[str, str, list[str]]] = [
    ("malformed", "[budget\nn_trials = 3\n", ["malformed TOML", "line"]),
    (
        "unknown section",
        "[sampelr]\nname = 'tpe'\n",
        ["unknown key 'sampelr'", "Did you mean 'sampler'"],
    ),
    (
        "unknown param key",
        "[space.y]\ntype = 'float'\nlow = 0.0\nhigh = 1.0\nlogg = true\n",
        ["[space.y]", "unknown key 'logg'", "Did you mean 'log'"],
    ),
    (
        "empty range",
        "[space.y]\ntype = 'float'\nlow = 1.0\nhigh = 1.0\n",
        ["[space.y]", "empty range"],
    ),
    (
        "int empty range",
        "[space.y]\ntype = 'int'\nlow = 5\nhigh = 2\n",
        ["empty range", "low=5", "high=2"],
    ),
    (
        "log low",
        "[space.y]\ntype = 'float'\nlow = 0.0\nhigh = 1.0\nlog = true\n",
        ["log scale needs low > 0"],
    ),
    (
        "wrong type",
        "[space.y]\ntype = 'float'\nlow = 'a'\nhigh = 1.0\n",
        ["low must be a number", "'a'"],
    ),
    (
        "int given float",
        "[space.y]\ntype = 'int'\nlow = 0.5\nhigh = 3\n",
        ["low must be an integer"],
    ),
    (
        "unknown param type",
        "[space.y]\ntype = 'flot'\nlow = 0.0\nhigh = 1.0\n",
        ["type must be one of", "Did you mean 'float'"],
    ),
    (
        "empty choices",
        "[space.y]\ntype = 'categorical'\nchoices = []\n",
        ["choices must be a non-empty list"],
    ),
    (
        "condition on unknown",
        "[space.y]\ntype = 'float'\nlow = 0.0\nhigh = 1.0\nwhen = { z = 'a' }\n",
        ["when names 'z'"],
    ),
]


@pytest.mark.parametrize(("label", "body", "expected"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_study_file_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str],
    write_study: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    label: str,
    body: str,
    expected: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    path = write_study(body)
    code, _, err = run_cli(capsys, "create", str(path))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("hpsearch: error: ") and "Traceback" not in err
    for words in expected:
        assert words in err, err
    # Nothing written: not even the default SQLite file.
    assert not (tmp_path / "hpsearch.db").exists()


REPLACEMENTS: list[tuple[str, str, str, list[str]]] = [
    (
        "unknown sampler",
        'name = "tpe"',
        'name = "tpee"',
        ["unknown sampler 'tpee'", "Did you mean 'tpe'", "auto, cmaes, gp, grid, qmc, random, tpe"],
    ),
    (
        "unknown pruner",
        'name = "none"',
        'name = "medain"',
        ["unknown pruner 'medain'", "Did you mean 'median'"],
    ),
    (
        "unknown objective",
        'objective = "quadratic.py:quadratic"',
        'objective = "digits-mpl"',
        ["Unknown objective 'digits-mpl'", "Did you mean 'digits-mlp'"],
    ),
    (
        "missing objective file",
        'objective = "quadratic.py:quadratic"',
        'objective = "nope.py:f"',
        ["Cannot import objective file", "nope.py"],
    ),
    (
        "missing function",
        'objective = "quadratic.py:quadratic"',
        'objective = "quadratic.py:quadratc"',
        ["has no function 'quadratc'", "Did you mean 'quadratic'"],
    ),
    (
        "broken module",
        'objective = "quadratic.py:quadratic"',
        'objective = "broken.py:f"',
        ["Cannot import objective", "SyntaxError"],
    ),
    (
        "missing module",
        'objective = "quadratic.py:quadratic"',
        'objective = "no_such_pkg.mod:f"',
        ["Cannot import objective 'no_such_pkg.mod:f'", "ModuleNotFoundError"],
    ),
    (
        "bad direction",
        'direction = "minimize"',
        'direction = "minimise"',
        ["Did you mean 'minimize'"],
    ),
    ("bad budget", "n_trials = 12", "n_trials = 0", ["[budget]", "n_trials must be >= 1"]),
    (
        "unknown sampler option",
        "seed = 3",
        "seed = 3\noptions = { n_startup_trail = 3 }",
        ["unknown option 'n_startup_trail'", "Did you mean 'n_startup_trials'"],
    ),
]


@pytest.mark.parametrize(
    ("label", "old", "new", "expected"), REPLACEMENTS, ids=[r[0] for r in REPLACEMENTS]
)
def test_bad_component_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str],
    write_study: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    label: str,
    old: str,
    new: str,
    expected: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    (tmp_path / "broken.py").write_text("def f(:\n")
    path = write_study()
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    code, _, err = run_cli(capsys, "create", str(path))
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    for words in expected:
        assert words in err, err
    assert not (tmp_path / "hpsearch.db").exists()


def test_unreadable_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "create", str(tmp_path / "missing.toml"))
    assert code == 2 and "Cannot read study file" in err and "No such file" in err


def test_builtin_objective_rejects_unknown_option(write_study: Any) -> None:
    path = write_study(objective="digits-mlp")
    # A built-in's metric must be one of its measurements (the fixture names it "loss").
    path.write_text(path.read_text().replace('metric = "loss"', 'metric = "val_accuracy"'))
    with pytest.raises(SpecError, match=r"objective 'digits-mlp' has no option 'x'"):
        load_spec_file(str(path))


def test_builtin_objective_rejects_unknown_choice(write_study: Any, tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(
        '[study]\nname = "d"\nobjective = "digits-mlp"\n[budget]\nn_trials = 2\n'
        '[space.activation]\ntype = "categorical"\nchoices = ["relu", "relux"]\n'
    )
    with pytest.raises(
        SpecError, match=r"activation = 'relux' is not one of .*Did you mean 'relu'"
    ):
        load_spec_file(str(path))


def test_grid_needs_steps_for_floats(write_study: Any) -> None:
    path = write_study()
    path.write_text(path.read_text().replace('name = "tpe"', 'name = "grid"'))
    with pytest.raises(SpecError, match=r"grid sampler needs a step for float parameters"):
        load_spec_file(str(path))


@pytest.mark.parametrize("name", ["digits", "mnist", "fashion", "cifar10"])
def test_every_builtin_study_file_validates(name: str) -> None:
    from hpsearch.objectives import BUILTIN_OBJECTIVES

    spec = load_spec_file(str(Path(__file__).parent.parent / "studies" / f"{name}.toml"))
    assert spec.objective in BUILTIN_OBJECTIVES
