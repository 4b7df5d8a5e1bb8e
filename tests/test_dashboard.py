"""Our studies are ordinary Optuna studies: optuna-dashboard serves them over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from search import create_study, load_spec_file, start_workers

from .conftest import hpsearch_command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_json(url: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture
def pg_study(postgres_url: str, write_study: Any) -> str:
    spec = load_spec_file(str(write_study(n_trials=4)))
    create_study(spec, postgres_url)
    for process in start_workers(
        spec.name, postgres_url, workers=1, timeout=None, include_host=False, log_trials=False
    ):
        process.join(timeout=300)
    return spec.name


@pytest.mark.parametrize("launcher", ["hpsearch dashboard", "optuna-dashboard"])
def test_dashboard_api_lists_the_study(
    launcher: str, pg_study: str, postgres_url: str, tmp_path: Path
) -> None:
    port = _free_port()
    if launcher == "optuna-dashboard":
        command = [
            str(Path(sys.executable).parent / "optuna-dashboard"),
            postgres_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    else:
        command = [*hpsearch_command(), "dashboard", "--storage", postgres_url, "--port", str(port)]
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path
    )
    try:
        summaries = _get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        ours = [s for s in summaries if s["study_name"] == pg_study]
        assert len(ours) == 1
        detail = _get_json(f"http://127.0.0.1:{port}/api/studies/{ours[0]['study_id']}")
        assert len([t for t in detail["trials"] if t["state"] == "Complete"]) == 4
        # The dashboard names the objectives from the study's metric names.
        assert detail["objective_names"] == ["loss"]
    finally:
        server.terminate()
        server.wait(timeout=30)
