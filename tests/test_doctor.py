"""`hpsearch db check` and `hpsearch db upgrade` on SQLite, PostgreSQL and MySQL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpsearch.storage._doctor import PROXY_THRESHOLD, SQLITE_MAX_WORKERS, check_storage, mount_of

from .conftest import hpsearch_command


def _hpsearch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*hpsearch_command(), *args], capture_output=True, text=True, check=False)


def _create(storage_url: str, write_study: Any) -> None:
    assert _hpsearch("create", str(write_study()), "--storage", storage_url).returncode == 0


def _levels(url: str, *extra: str) -> tuple[int, dict[str, str]]:
    result = _hpsearch("db", "check", "--storage", url, "--json", *extra)
    document = json.loads(result.stdout)
    return result.returncode, {c["name"]: c["level"] for c in document["checks"]}


def test_check_reports_every_condition(storage_url: str, write_study: Any) -> None:
    _create(storage_url, write_study)
    code, levels = _levels(storage_url, "--workers", "2")
    assert code == 0
    if storage_url.startswith("sqlite"):
        assert levels == {"server": "OK", "schema": "OK", "filesystem": "OK", "workers": "OK"}
    else:
        assert levels == {"server": "OK", "schema": "OK", "connections": "OK", "proxy": "OK"}
    lines = _hpsearch("db", "check", "--storage", storage_url).stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["OK"] * 4
    server = lines[0]
    assert any(name in server for name in ("SQLite 3.", "PostgreSQL 1", "MariaDB 1", "MySQL "))


def test_many_workers(storage_url: str, write_study: Any) -> None:
    _create(storage_url, write_study)
    if storage_url.startswith("sqlite"):
        code, levels = _levels(storage_url, "--workers", str(SQLITE_MAX_WORKERS + 1))
        assert (code, levels["workers"]) == (0, "WARN")
        return
    code, levels = _levels(storage_url, "--workers", str(PROXY_THRESHOLD + 1))
    assert levels["proxy"] == "WARN"
    # More connections than any test server allows: the check fails and says why.
    result = _hpsearch("db", "check", "--storage", storage_url, "--workers", "5000")
    assert result.returncode == 2
    assert "FAIL  connections  5000 worker(s)" in result.stdout
    assert result.stderr.startswith("hpsearch: error: db check of") and "max_connections" in (
        result.stderr
    )
    assert result.stderr.count("\n") == 1


def test_sqlite_on_a_network_filesystem_is_warned_against(tmp_path: Path, write_study: Any) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    _create(url, write_study)
    mounts = f"/dev/sda1 / ext4 rw 0 0\nserver:/export {tmp_path} nfs4 rw,vers=4.2 0 0\n"
    assert mount_of(str(tmp_path / "shared.db"), mounts) == (str(tmp_path), "nfs4")
    checks = {c.name: c for c in check_storage(url, mounts=mounts)}
    assert checks["filesystem"].level == "WARN" and "nfs4" in checks["filesystem"].message
    checks = {c.name: c for c in check_storage(url)}  # this machine's real /proc/mounts
    assert checks["filesystem"].level == "OK"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres:s3cr3t-pw@127.0.0.1:1/hpsearch",
        "mysql+pymysql://root:s3cr3t-pw@127.0.0.1:1/hpsearch",
    ],
)
def test_unreachable_server_fails_without_showing_the_password(url: str) -> None:
    result = _hpsearch("db", "check", "--storage", url)
    assert result.returncode == 2
    assert result.stdout.startswith("FAIL  server       Cannot reach the database at")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "s3cr3t-pw" not in result.stdout + result.stderr and ":***@" in result.stdout


def test_missing_sqlite_file_fails_and_is_not_created(tmp_path: Path) -> None:
    result = _hpsearch("db", "check", "--storage", f"sqlite:///{tmp_path / 'none.db'}")
    assert result.returncode == 2 and "does not exist" in result.stdout
    assert not (tmp_path / "none.db").exists()


def test_a_sqlite_uri_names_its_file_to_db_check_and_db_upgrade(
    tmp_path: Path, write_study: Any
) -> None:
    """SQLite's URI form (a read-only file, say) is the file after ``file:``, as every other
    command opens it: not a file named ``file:...`` that does not exist."""
    database = tmp_path / "hpsearch.db"
    _create(f"sqlite:///{database}", write_study)
    read_only = f"sqlite:///file:{database}?mode=ro&uri=true"
    check = _hpsearch("db", "check", "--storage", read_only)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"(file {database})" in check.stdout
    upgrade = _hpsearch("db", "upgrade", "--storage", read_only)
    assert upgrade.returncode == 0 and "already current" in upgrade.stdout, upgrade.stderr
    missing = _hpsearch("db", "check", "--storage", f"sqlite:///file:{tmp_path / 'no.db'}?mode=ro")
    assert missing.returncode == 2
    assert f"SQLite file '{tmp_path / 'no.db'}' does not exist" in missing.stdout
    in_memory = _hpsearch("db", "check", "--storage", "sqlite:///file::memory:?mode=memory")
    assert in_memory.returncode == 2 and "in-memory SQLite database" in in_memory.stdout


def _stamp_previous_revision(url: str) -> str:
    """Make the database say an older optuna made it: its alembic revision one step back."""
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    previous = storage.get_all_versions()[1]
    with storage.engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{previous}'")
    storage.engine.dispose()
    return previous


def test_outdated_schema_fails_and_db_upgrade_fixes_it(storage_url: str, write_study: Any) -> None:
    url = storage_url
    _create(url, write_study)
    head = optuna.storages.RDBStorage(url, skip_table_creation=True).get_head_version()
    previous = _stamp_previous_revision(url)
    try:
        result = _hpsearch("db", "check", "--storage", url)
        assert result.returncode == 2
        assert f"FAIL  schema       Optuna schema {previous} is older than {head}" in result.stdout
        assert "hpsearch db upgrade --storage" in result.stdout
        upgraded = _hpsearch("db", "upgrade", "--storage", url)
        assert upgraded.returncode == 0, upgraded.stderr
        assert f"from {previous} to {head}" in upgraded.stdout
    finally:
        _hpsearch("db", "upgrade", "--storage", url)  # leave the session database current
    assert _levels(url)[1]["schema"] == "OK"
    again = _hpsearch("db", "upgrade", "--storage", url)
    assert again.returncode == 0 and "already current" in again.stdout
