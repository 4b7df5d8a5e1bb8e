"""A command line that answers at once: what each command imports, --version, -q/-v, --json,
and `run` on a study whose budget is used."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from hpsearch.search.cli import build_parser
from tests._support import RESUMING, study_toml, write_study_file
from tests.conftest import hpsearch_command

HEAVY = ("torch", "sklearn", "plotly", "grpc")
# Runs one command in a fresh interpreter, then lists the heavy modules it imported.
AUDIT = textwrap.dedent(
    """
    import json, sys
    from hpsearch.search.cli import main
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
    heavy = sorted(m for m in {heavy!r} if m in sys.modules)
    print("AUDIT " + json.dumps({{"code": code, "heavy": heavy}}))
    """
).format(heavy=HEAVY)


def _audit(args: list[str], cwd: Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", AUDIT, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("AUDIT ")]
    assert lines, result.stderr
    audit: dict[str, object] = json.loads(lines[-1][len("AUDIT ") :])
    audit["stderr"] = result.stderr
    return audit


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A study file, its storage URL and name, with the whole budget used."""
    import hpsearch

    folder = tmp_path_factory.mktemp("cli")
    (folder / "quad.py").write_text("def fn(trial, params):\n    return params['x'] ** 2\n")
    study_file = write_study_file(
        folder / "study.toml",
        name="answers",
        objective="quad.py:fn",
        n_trials=3,
        metric="loss",
        sampler={"name": "random", "seed": 1},
        pruner=None,
        space={"x": {"type": "float", "low": -3.0, "high": 3.0}},
    )
    url = f"sqlite:///{folder / 'cli.db'}"
    hpsearch.run(study_file, storage=url, workers=1, progress=False)
    return study_file, url, "answers"


# What each command may import beyond the CLI itself: only `report` draws with plotly (and its
# importance figure is Optuna's fANOVA, a scikit-learn forest) and only `proxy` serves gRPC. optuna-dashboard imports Optuna's fANOVA importance, hence sklearn, when
# it is imported itself; without it the dashboard's importance panel fails. The last two fail
# on purpose right after importing what they serve with.
LIGHT_COMMANDS = {
    "--help": (["--help"], set()),
    "--version": (["--version"], set()),
    "status": (["status", "--study", "answers"], set()),
    "studies": (["studies", "--json"], set()),
    "export": (["export", "--study", "answers"], set()),
    "report": (
        ["report", "--study", "answers", "--output", "{folder}/report.html"],
        {"plotly", "sklearn"},
    ),
    "reap": (["reap", "--study", "answers"], set()),
    "db check": (["db", "check"], set()),
    "dashboard": (["dashboard", "--artifacts", "{folder}/missing"], {"sklearn"}),
    "proxy": (["proxy", "--storage", "grpc://127.0.0.1:1"], {"grpc"}),
}


@pytest.mark.parametrize("command", sorted(LIGHT_COMMANDS))
def test_commands_that_do_not_train_import_no_training_stack(
    command: str, finished_study: tuple[Path, str, str]
) -> None:
    study_file, url, _ = finished_study
    folder = study_file.parent
    args, allowed = LIGHT_COMMANDS[command]
    argv = [arg.format(folder=folder) for arg in args]
    if argv[0] not in ("--help", "--version", "proxy"):
        argv += ["--storage", url]
    audit = _audit(argv, folder)
    expected_code = 2 if command in ("dashboard", "proxy") else 0
    assert audit["code"] == expected_code, audit["stderr"]
    assert set(audit["heavy"]) <= allowed, audit  # type: ignore[arg-type]


def test_version() -> None:
    result = subprocess.run(
        [*hpsearch_command(), "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hpsearch 0.1.0"


def test_run_on_a_used_budget_starts_no_worker(finished_study: tuple[Path, str, str]) -> None:
    study_file, url, _ = finished_study
    audit = _audit(["run", str(study_file), "--storage", url], study_file.parent)
    assert audit["code"] == 0, audit["stderr"]
    assert "no worker started" in str(audit["stderr"])
    assert audit["heavy"] == []  # no worker, and not even torch's device count


def test_studies_json(finished_study: tuple[Path, str, str]) -> None:
    _, url, name = finished_study
    result = subprocess.run(
        [*hpsearch_command(), "studies", "--json", "--storage", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert (row["study"], row["budget"], row["complete"]) == (name, 3, 3)


def _assert_quiet_run(study_file: Path, url: str) -> None:
    """``hpsearch run -q`` succeeds and prints nothing at all."""
    result = subprocess.run(
        [*hpsearch_command(), "run", "-q", str(study_file), "--storage", url],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")


def test_quiet_prints_only_what_was_asked(finished_study: tuple[Path, str, str]) -> None:
    study_file, url, _ = finished_study
    _assert_quiet_run(study_file, url)


def test_quiet_workers_log_no_progress_of_their_own(tmp_path: Path) -> None:
    """A run that pauses, promotes and resumes (lines the workers log as they go) is silent."""
    path = tmp_path / "quiet.toml"
    path.write_text(
        study_toml(
            name="quiet",
            objective="hpsearch.objectives.curves:learning_curve",
            n_trials=6,
            space={"lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True}},
            scheduler=RESUMING["argvalues"][0],  # ASHA
            resources={"artifacts": str(tmp_path / "artifacts")},
        )
    )
    url = f"sqlite:///{tmp_path / 'quiet.db'}"
    _assert_quiet_run(path, url)
    trials = optuna.load_study(study_name="quiet", storage=url).trials
    assert any("resumed_from_epoch" in t.user_attrs for t in trials), "nothing was resumed"


def _commands(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
    """Every leaf command's words, e.g. ["db", "check"]."""
    found: list[list[str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, [*prefix, name])
    return found or [prefix]


def test_every_command_takes_quiet_and_verbose() -> None:
    parser = build_parser()
    commands = _commands(parser, [])
    assert len(commands) >= 12
    for words in commands:
        sub = parser
        for word in words:  # the command's own required arguments, from its parser
            sub = next(
                a for a in sub._actions if isinstance(a, argparse._SubParsersAction)
            ).choices[word]
        required: list[str] = []
        for action in sub._actions:
            if action.required and action.option_strings:
                required += [action.option_strings[0], "x"]
            elif not action.option_strings and action.dest != "help" and action.nargs is None:
                required.append("x")
        for flags in (["-q"], ["-vv"], ["--quiet"], ["--verbose"]):
            args = parser.parse_args([*words, *required, *flags])
            assert getattr(args, "quiet", False) or getattr(args, "verbose", 0), (words, flags)
        assert parser.parse_args(["-q", *words, *required]).quiet


def test_a_reader_that_goes_away_is_not_an_error(finished_study: tuple[Path, str, str]) -> None:
    """`hpsearch studies --json | head -c 1`: the reader closes the pipe before we write."""
    _, url, _ = finished_study
    process = subprocess.Popen(
        [*hpsearch_command(), "studies", "--json", "--storage", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.close()  # before the command has written anything: it is still importing
    _, stderr = process.communicate(timeout=120)
    assert stderr == ""
    assert process.returncode == 0
