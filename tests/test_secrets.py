"""Secrets in storage URLs never reach a user's screen: every command, every backend, every form.

A password may sit in the userinfo (``user:pw@host``) or in a query parameter (``?password=``,
``?sslpassword=``, any case); a URL with a typo (``scheme//user:pw@host``) must not be echoed
whole either. Each case runs the real ``hpsearch`` command, as a user would.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import hpsearch
from hpsearch.search.cli import main
from hpsearch.storage import redact_url
from hpsearch.storage._rdb import describe_driver_error
from hpsearch.storage._url import redact_text, url_secrets

from .conftest import hpsearch_command

SECRET = "S3cret"
PG = "postgresql+psycopg"
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1
POSTGRES = "127.0.0.1:5432"  # the test server: trust auth, database postgres, user postgres
MYSQL = "127.0.0.1:3306"  # the test server: root without a password, database test


def _hpsearch(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HPSEARCH_STORAGE"}
    return subprocess.run(
        [*hpsearch_command(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def _run_all(
    commands: Sequence[Sequence[str]], cwd: Path
) -> list[subprocess.CompletedProcess[str]]:
    """Run the commands side by side (each is a second of imports, then an error)."""
    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        return list(pool.map(lambda args: _hpsearch(args, cwd), commands))


def _assert_one_redacted_error_line(result: subprocess.CompletedProcess[str]) -> None:
    shown = f"{result.args[1:]}: rc {result.returncode}\n{result.stdout}{result.stderr}"
    assert SECRET not in result.stdout + result.stderr, shown
    assert result.returncode == 2, shown
    assert result.stderr.startswith("hpsearch: error: "), shown
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, shown
    assert "***" in result.stdout + result.stderr, shown


# Every form of a secret in a storage URL that SQLAlchemy or a driver accepts, and typos.
SECRET_URLS = {
    "query password": f"{PG}://u@{UNREACHABLE}/db?password={SECRET}",
    "query passwd": f"{PG}://u@{UNREACHABLE}/db?passwd={SECRET}",
    "query pwd": f"{PG}://u@{UNREACHABLE}/db?pwd={SECRET}",
    "query sslpassword": f"{PG}://u@{UNREACHABLE}/db?sslpassword={SECRET}&sslmode=require",
    "query PassWord": f"{PG}://u@{UNREACHABLE}/db?PassWord={SECRET}",
    "query token": f"{PG}://u@{UNREACHABLE}/db?application_name=x&api_token={SECRET}",
    "both": f"{PG}://u:{SECRET}@{UNREACHABLE}/db?password={SECRET}",
    "percent-encoded": f"{PG}://u:S%33cret@{UNREACHABLE}/db?password=S%33cret",
    "typo //": f"{PG}//u:{SECRET}@host/db",
    "typo :/": f"{PG}:/u:{SECRET}@host/db",
    "no scheme": f"u:{SECRET}@host/db",
    "bad port": f"{PG}://u:{SECRET}@127.0.0.1:abc/db",
    "@ in password": f"{PG}://u:{SECRET}@x@{UNREACHABLE}/db",
    "proxy userinfo": f"grpc://u:{SECRET}@127.0.0.1:1",
    "proxy query": f"grpc://127.0.0.1?token={SECRET}",
    "postgres query password": f"{PG}://postgres@{POSTGRES}/postgres?password={SECRET}",
    "postgres query PASSWORD": f"{PG}://postgres@{POSTGRES}/postgres?PASSWORD={SECRET}",
    "postgres sslpassword": f"{PG}://postgres@{POSTGRES}/postgres?sslpassword={SECRET}",
    "postgres unknown role": f"{PG}://nouser:{SECRET}@{POSTGRES}/postgres",
    "postgres no database": f"{PG}://postgres:{SECRET}@{POSTGRES}/no_such_db?password={SECRET}",
    "mysql userinfo": f"mysql+pymysql://root:{SECRET}@{MYSQL}/test",
    "mysql query password": f"mysql+pymysql://root@{MYSQL}/test?password={SECRET}",
    "mysql query passwd": f"mysql+pymysql://root@{MYSQL}/test?charset=utf8mb4&passwd={SECRET}",
}


@pytest.mark.parametrize("url", SECRET_URLS.values(), ids=list(SECRET_URLS))
def test_redact_url_hides_every_form_of_secret(url: str) -> None:
    shown = redact_url(url)
    assert SECRET not in shown and "S%33cret" not in shown
    assert "***" in shown
    assert SECRET in url_secrets(url)


def test_redact_url_keeps_what_is_no_secret() -> None:
    assert (
        redact_url(f"{PG}://u@db:5432/hpo?password={SECRET}&sslmode=require")
        == f"{PG}://u@db:5432/hpo?password=***&sslmode=require"
    )
    assert redact_url(f"{PG}//u:{SECRET}@host/db") == f"{PG}//u:***@host/db"
    assert redact_url(f"u:{SECRET}@host") == "u:***@host"
    assert redact_url(f"{PG}://u:{SECRET}@x@h:1/db") == f"{PG}://u:***@h:1/db"
    assert redact_url("sqlite:///a.db") == "sqlite:///a.db"
    assert redact_url("not a url at all") == "not a url at all"
    assert redact_url("grpc://proxy:13000") == "grpc://proxy:13000"


def test_driver_messages_quoting_a_secret_are_redacted() -> None:
    url = f"{PG}://u:{SECRET}@x@{UNREACHABLE}/db?sslpassword=Other{SECRET}"
    quoted = (
        f"failed to resolve host 'x@127.0.0.1'; sslpassword=Other{SECRET} "
        f"invalid in {url} (password {SECRET})"
    )
    text = redact_text(quoted, url)
    assert SECRET not in text and "x@127" not in text
    assert redact_url(url) in text
    message = describe_driver_error(url, RuntimeError(quoted))
    assert SECRET not in message and "\n" not in message


# Every command that reads a storage (`dashboard` separately: on a good URL it would serve).
COMMANDS = [
    ["status", "--study", "no-such-study"],
    ["export", "--study", "no-such-study"],
    ["reap", "--study", "no-such-study"],
    ["worker", "--study", "no-such-study", "--dry-run"],
    ["report", "--study", "no-such-study", "--output", "r.html"],
    ["studies"],
    ["db", "check"],
    ["db", "upgrade"],
]


@pytest.mark.parametrize("url", SECRET_URLS.values(), ids=list(SECRET_URLS))
def test_status_never_prints_a_secret(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["status", "--study", "no-such-study", "--storage", url])
    out, err = capsys.readouterr()
    assert SECRET not in out + err, err
    assert code == 2 and err.startswith("hpsearch: error: ") and err.count("\n") == 1, err
    assert "***" in err, err


# The real command, a process of its own, for one URL of each kind of failure.
CLI_CASES = [
    "query password",  # unreachable server
    "query PassWord",  # an option the driver refuses, naming it
    "typo //",  # unparseable
    "no scheme",
    "@ in password",  # the driver quotes part of the password as the host
    "proxy query",
    "postgres query password",  # connects; the study is not there
    "postgres unknown role",
    "postgres no database",
    "mysql userinfo",  # access denied
    "mysql query password",
]


def test_status_command_never_prints_a_secret(tmp_path: Path) -> None:
    commands = [
        ["status", "--study", "no-such-study", "--storage", SECRET_URLS[case]] for case in CLI_CASES
    ]
    for result in _run_all(commands, tmp_path):
        _assert_one_redacted_error_line(result)


def test_no_command_prints_a_secret(tmp_path: Path) -> None:
    commands = [
        [*command, "--storage", SECRET_URLS[case]]
        for case in ("query PassWord", "typo //")
        for command in [*COMMANDS, ["dashboard", "--port", "1"]]  # neither URL serves
    ]
    for result in _run_all(commands, tmp_path):
        _assert_one_redacted_error_line(result)


def test_commands_on_a_reachable_database_never_print_a_secret(
    postgres_url: str, tmp_path: Path
) -> None:
    # The session's own database, not a shared one, as `db upgrade` may write to it; trust
    # auth lets the connection in whatever the password says.
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}password={SECRET}"
    results = _run_all([[*command, "--storage", url] for command in COMMANDS], tmp_path)
    for command, result in zip(COMMANDS, results, strict=True):
        everything = result.stdout + result.stderr
        assert SECRET not in everything, everything
        if command[0] != "studies":  # it names the storage only when it holds no study
            assert "password=***" in everything, everything
        if command[0] not in ("studies", "db"):  # these succeed, or report their checks
            _assert_one_redacted_error_line(result)


def test_a_secret_in_the_environment_is_not_printed(tmp_path: Path) -> None:
    env = {**os.environ, "HPSEARCH_STORAGE": SECRET_URLS["query password"]}
    result = subprocess.run(
        [*hpsearch_command(), "status", "--study", "x"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    _assert_one_redacted_error_line(result)


@pytest.mark.parametrize("case", ["query password", "typo //", "postgres query PASSWORD"])
def test_python_api_errors_hold_no_secret(case: str) -> None:
    with pytest.raises(hpsearch.HpsearchError) as raised:
        hpsearch.status("no-such-study", storage=SECRET_URLS[case])
    message = str(raised.value)
    assert SECRET not in message and "***" in message and "\n" not in message
