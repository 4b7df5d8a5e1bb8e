"""The command line refuses bad input in one line, writes nothing first, and never shows a secret.

Each case runs the real command (in this process through ``main``, or as a user would, in a
process of its own where the command installs signal handlers or serves).
"""

from __future__ import annotations

import argparse
import os
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hpsearch.search.cli import main
from hpsearch.search.cli._main import build_parser

from .conftest import SERVER_URLS, hpsearch_command

SECRET = "SECRET"
NESTED = "options=-c%20password%3DSECRET"  # libpq's options: a password inside a value
MYSQL = SERVER_URLS["mysql"]


def _hpsearch(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HPSEARCH_STORAGE"}
    return subprocess.run(
        [*hpsearch_command(), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


def _run_all(
    commands: Sequence[Sequence[str]], cwd: Path
) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: _hpsearch(args, cwd), commands))


def _assert_one_line(result: subprocess.CompletedProcess[str], *, argparse: bool = False) -> None:
    shown = f"{result.args[1:]}: rc {result.returncode}\n{result.stdout}{result.stderr}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stderr, shown
    if argparse:  # argparse's own refusal: its usage, then one error line
        assert "error: argument" in result.stderr.splitlines()[-1], shown
    else:
        assert result.stderr.startswith("hpsearch: error: "), shown
        assert result.stderr.count("\n") == 1, shown


def _main(args: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``main`` in this process; any exception but argparse's exit escapes and fails the test."""
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out + err


# --- a driver's refusal, an unknown dialect, a missing driver: one line on every command ---

# Every command that opens a storage and stops there on a bad one (`proxy` and `dashboard`
# separately: they would serve, and install signal handlers).
STORAGE_COMMANDS = [
    ["status", "--study", "s"],
    ["export", "--study", "s"],
    ["reap", "--study", "s"],
    ["worker", "--study", "s", "--dry-run"],
    ["report", "--study", "s", "--output", "r.html"],
    ["studies"],
    ["db", "check"],
    ["db", "check", "--json"],
    ["db", "upgrade"],
]


@pytest.mark.parametrize(
    "url",
    ["postgres://u:pw@127.0.0.1:1/db", "mysql://u:pw@127.0.0.1:1/db", "redis://127.0.0.1:6379"],
)
def test_db_check_of_an_unknown_dialect_or_missing_driver_is_one_line(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = _main(["db", "check", "--storage", url], capsys)
    assert code == 2 and "Traceback" not in text, text
    assert "Unknown or missing database driver" in text and "supported:" in text, text
    assert ":pw@" not in text, text


@pytest.mark.parametrize(
    "query",
    [
        f"{MYSQL}?charset=nope",
        f"{MYSQL}?ssl_ca=/missing/ca.pem",
        f"{MYSQL}?read_timeout=abc",
        "sqlite:///present.db?timeout=abc",
    ],
    ids=["charset", "ssl_ca", "read_timeout", "sqlite-timeout"],
)
def test_a_malformed_driver_query_parameter_is_one_line_on_every_command(
    query: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "present.db").touch()  # an empty file is an empty SQLite database
    url = f"{query}&password={SECRET}" if query.startswith("mysql") else query
    for command in STORAGE_COMMANDS:
        code, text = _main([*command, "--storage", url], capsys)
        assert code == 2, (command, text)
        assert "refused the options of storage URL" in text, (command, text)
        assert SECRET not in text, (command, text)
        # `db check` reports each check, then its verdict; the others say one line.
        assert text.splitlines()[-1].startswith("hpsearch: error: "), (command, text)
        if command[0] != "db":
            assert text.count("\n") == 1, (command, text)
    assert sorted(os.listdir(tmp_path)) == ["present.db"]  # no report, no export written


def test_proxy_and_dashboard_refuse_a_malformed_driver_parameter_in_one_line(
    tmp_path: Path,
) -> None:
    url = f"{MYSQL}?read_timeout=abc"
    results = _run_all(
        [
            ["proxy", "--storage", url, "--port", "1"],
            ["dashboard", "--storage", url, "--port", "1"],
        ],
        tmp_path,
    )
    for result in results:
        _assert_one_line(result)
        assert "read_timeout" in result.stderr, result.stderr


# --- a secret nested in a query value is never shown ---


def _nested_secret_urls(tmp_path: Path) -> list[str]:
    sqlite = tmp_path / "nested.db"
    return [
        f"postgresql+psycopg://u@127.0.0.1:1/db?{NESTED}",  # nothing listens on port 1
        f"postgresql+psycopg://postgres@127.0.0.1:5432/postgres?{NESTED}",  # refuses the option
        f"sqlite:///{sqlite}?{NESTED}",
        f"mysql+pymysql://root@127.0.0.1:1/test?{NESTED}",
    ]


def test_a_secret_nested_in_a_query_value_is_never_printed_in_process(
    tmp_path: Path,
    write_study: object,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    study_file = str(write_study(n_trials=1))  # type: ignore[operator]
    commands = [*STORAGE_COMMANDS, ["create", study_file], ["run", study_file, "--workers", "1"]]
    for url in _nested_secret_urls(tmp_path):
        sqlite = url.startswith("sqlite")
        for command in commands:
            if sqlite and command[0] == "run":
                continue  # SQLite ignores the option: this would run the study
            code, text = _main([*command, "--storage", url], capsys)
            assert SECRET not in text, (command, url, text)
            if not (sqlite and command[0] in ("create", "studies")):
                assert code == 2 and "***" in text, (command, url, text)


def test_a_secret_nested_in_a_query_value_is_never_printed_by_the_commands(
    tmp_path: Path, write_study: object
) -> None:
    study_file = str(write_study(n_trials=1, objective="nosuch.py:f"))  # type: ignore[operator]
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/postgres?{NESTED}"
    commands = [
        [*command, "--storage", url]
        for command in [
            *STORAGE_COMMANDS,
            ["create", study_file],
            ["run", study_file],  # a study whose objective is missing
            ["proxy", "--port", "1"],
            ["dashboard", "--port", "1"],
        ]
    ]
    results = _run_all(commands, tmp_path)
    env_result = subprocess.run(
        [*hpsearch_command(), "status", "--study", "s"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "HPSEARCH_STORAGE": url},
    )
    for result in [*results, env_result]:
        shown = f"{result.args[1:]}\n{result.stdout}{result.stderr}"
        assert SECRET not in result.stdout + result.stderr, shown
        assert result.returncode == 2 and "Traceback" not in result.stderr, shown


# --- ports and hosts: one type each, on every command that listens ---


@pytest.mark.parametrize(
    "args",
    [
        ["dashboard", "--port", "99999"],
        ["dashboard", "--port", "70000"],
        ["dashboard", "--port", "0"],
        ["dashboard", "--port", "http"],
        ["dashboard", "--host", "256.1.1.1"],
        ["dashboard", "--host", "bad host"],
        ["proxy", "--port", "70000"],
        ["proxy", "--port", "99999"],
        ["proxy", "--port", "-1"],
        ["proxy", "--host", "256.1.1.1"],
    ],
)
def test_a_bad_port_or_host_is_refused_before_anything_starts(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = _main([*args, "--storage", "sqlite:///never-opened.db"], capsys)
    assert code == 2, text
    assert f"argument {args[1]}:" in text and args[2] in text, text
    assert not os.path.exists("never-opened.db")


def test_proxy_prints_its_address_only_once_the_database_answers(tmp_path: Path) -> None:
    result = _hpsearch(["proxy", "--storage", "sqlite:///missing.db", "--port", "1"], tmp_path)
    _assert_one_line(result)
    assert "hpsearch proxy on" not in result.stderr, result.stderr
    assert "missing.db" in result.stderr


# --- nothing is written before the input is checked ---


def _export(tmp_path: Path, training: str) -> Path:
    path = tmp_path / "best.yaml"
    path.write_text(
        f"objective: digits-mlp\nparams: {{}}\ntraining: {training}\nmetric: val_accuracy\n"
    )
    return path


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        ("{epochs: 1, device: 'cuda:7'}", "device 'cuda:7' is not on this machine"),
        ("{epochs: 1, device: 'gpu'}", "device = 'gpu' is not a device"),
        ("{epochs: 0}", "epochs = 0 is out of range"),
    ],
    ids=["cuda:7", "gpu", "epochs-0"],
)
def test_train_refuses_a_bad_export_before_creating_its_output(
    training: str, expected: str, tmp_path: Path
) -> None:
    export = _export(tmp_path, training)
    result = _hpsearch(["train", str(export), "--output", "model"], tmp_path)
    _assert_one_line(result)
    assert expected in result.stderr, result.stderr
    assert not (tmp_path / "model").exists()


def test_train_refuses_an_output_under_a_file_before_training(tmp_path: Path) -> None:
    export = _export(tmp_path, "{epochs: 1, device: cpu}")
    (tmp_path / "afile").write_text("")
    result = _hpsearch(["train", str(export), "--output", "afile/model"], tmp_path)
    _assert_one_line(result)
    assert "Cannot use --output 'afile/model'" in result.stderr
    assert "epoch 1" not in result.stderr  # refused before training


def test_worker_refuses_missing_gpus_before_creating_the_artifacts_folder(
    tmp_path: Path, study_name: str
) -> None:
    artifacts = tmp_path / "artifacts"
    study_file = tmp_path / "digits.toml"
    study_file.write_text(
        f'[study]\nname = "{study_name}"\nobjective = "digits-mlp"\n\n'
        '[budget]\nn_trials = 1\n\n[sampler]\nname = "random"\n\n'
        '[space.lr]\ntype = "float"\nlow = 0.001\nhigh = 0.1\n\n'
        f'[resources]\nartifacts = "{artifacts}"\n\n[training]\nepochs = 1\n'
    )
    url = f"sqlite:///{tmp_path / 'w.db'}"
    assert main(["create", str(study_file), "--storage", url]) == 0
    result = _hpsearch(["worker", "--study", study_name, "--storage", url, "--gpus", "5"], tmp_path)
    _assert_one_line(result)
    assert "GPU(s) 5 not available" in result.stderr, result.stderr
    assert not artifacts.exists()


# --- --help says what to type, for every option of every command ---


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(((*path, name), sub))
                found.extend(_commands(sub, (*path, name)))
    return found


def test_every_option_of_every_command_has_help_a_chosen_metavar_and_an_example() -> None:
    commands = _commands(build_parser())
    assert {" ".join(path) for path, _ in commands} >= {"run", "dashboard", "proxy", "db check"}
    for path, parser in commands:
        where = f"hpsearch {' '.join(path)}"
        assert parser.epilog and parser.epilog.startswith("example: hpsearch "), where
        assert parser.epilog.startswith(f"example: hpsearch {' '.join(path)}") or path == ("db",)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            name = action.option_strings[0] if action.option_strings else action.dest
            assert action.help, f"{where} {name}: no help text"
            if action.nargs == 0 or action.choices is not None:
                continue  # a flag, or a value argparse shows as its choices
            assert action.metavar is not None, f"{where} {name}: metavar is the dest name"
            assert action.metavar != action.dest.upper(), f"{where} {name}: {action.metavar}"
        help_text = parser.format_help()
        assert help_text.count("--gpus-per-trial") <= 2, help_text  # usage and options, once
        assert "DEVICES_PER_TRIAL" not in help_text and "STORAGE " not in help_text, help_text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["worker", "--study", "s", "--workers", "1000000"], "expected at most 256"),
        (["run", "study.toml", "--workers", "257"], "expected at most 256"),
        (["run", "study.toml", "--gpus-per-trial", "65"], "expected at most 64"),
        (["worker", "--study", "s", "--devices-per-trial", "65"], "expected at most 64"),
        (["worker", "--study", "s", "--nodes-per-trial", "1025"], "expected at most 1024"),
    ],
    ids=["worker-workers", "run-workers", "gpus-per-trial", "devices-per-trial", "nodes"],
)
def test_resource_flags_have_the_study_files_upper_bounds(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    """A million workers is refused on the command line as in the study file, before anything
    is read or started."""
    result = _hpsearch(args, tmp_path)
    _assert_one_line(result, argparse=True)
    assert expected in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())  # nothing written
