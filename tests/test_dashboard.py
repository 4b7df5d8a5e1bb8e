"""Our studies are ordinary Optuna studies: optuna-dashboard serves them over HTTP."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from hpsearch.search import create_study, load_spec_file, start_workers

from .conftest import free_port, get_json, hpsearch_command


@pytest.fixture
def pg_study(postgres_url: str, write_study: Any) -> str:
    spec = load_spec_file(str(write_study(n_trials=4)))
    create_study(spec, postgres_url)
    for process in start_workers(
        spec.name, postgres_url, workers=1, timeout=None, log_trials=False
    ):
        process.join(timeout=300)
    return spec.name


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["hpsearch dashboard", "optuna-dashboard"])
def test_dashboard_api_lists_the_study(
    launcher: str, pg_study: str, postgres_url: str, tmp_path: Path
) -> None:
    port = free_port()
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
        summaries = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        ours = [s for s in summaries if s["study_name"] == pg_study]
        assert len(ours) == 1
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{ours[0]['study_id']}")
        assert len([t for t in detail["trials"] if t["state"] == "Complete"]) == 4
        # The dashboard names the objectives from the study's metric names.
        assert detail["objective_names"] == ["loss"]
        # The study file is the study's note, shown on its page.
        note = detail["note"]["body"]
        assert f'name = "{pg_study}"' in note and "[space.x]" in note and "n_trials = 4" in note
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_dashboard_serves_the_artifact_store(
    pg_study: str, postgres_url: str, tmp_path: Path
) -> None:
    store_dir = tmp_path / "artifacts"
    store_dir.mkdir()
    study = optuna.load_study(study_name=pg_study, storage=postgres_url)
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights of the best model")
    # Finished trials are read-only, so the artifact hangs on the study itself.
    artifact_id = upload_artifact(
        artifact_store=FileSystemArtifactStore(str(store_dir)),
        file_path=str(model),
        study_or_trial=study,
    )
    port = free_port()
    command = [
        *hpsearch_command(),
        "dashboard",
        "--storage",
        postgres_url,
        "--port",
        str(port),
        "--artifacts",
        str(store_dir),
    ]
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path
    )
    try:
        assert get_json(f"http://127.0.0.1:{port}/api/meta")["artifact_is_available"] is True
        url = f"http://127.0.0.1:{port}/artifacts/{study._study_id}/{artifact_id}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == b"weights of the best model"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_dashboard_refuses_a_missing_artifact_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [
            *hpsearch_command(),
            "dashboard",
            "--storage",
            f"sqlite:///{tmp_path / 'x.db'}",
            "--artifacts",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(missing) in result.stderr
