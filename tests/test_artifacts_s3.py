"""Checkpoints and artifacts in an S3-compatible bucket (``[resources] artifacts = "s3://..."``).

A real moto server (its server mode, from PyPI) runs on 127.0.0.1 for the module; the commands
under test are real processes that find it through ``AWS_ENDPOINT_URL``. Two working folders
play two nodes that share the database and the bucket, and no folder.
"""

from __future__ import annotations

import copy
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import optuna
import optuna.artifacts
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import CHECKPOINT, SLOT, UID
from hpsearch.errors import HpsearchError, StorageError
from hpsearch.search import create_study, load_spec_file
from hpsearch.search.runtime._checkpoints import (
    CheckpointSync,
    _publish,
    _remove_all,
    exploit_copy,
    remove_old_copies,
)
from hpsearch.search.runtime._preflight import check_node
from hpsearch.storage import open_object_store

from ._support import study_toml
from .conftest import free_port, get_json, hpsearch_command
from .test_fault_tolerance import (
    EPOCHS,
    _assert_resumed,
    _children,
    _wait_for_running,
)
from .test_fsdp import REGRESSION

# Recognisable, so that a test can tell they never reach any output.
ACCESS_KEY = "AKIAHPSEARCHTESTKEY1"
SECRET_KEY = "hpsearch-test-secret-c4f3b4b3"


def _study_toml(name: str, artifacts: str) -> str:
    return study_toml(
        name=name,
        objective="digits-mlp",
        n_trials=3,
        direction=None,
        sampler={"name": "random", "seed": 1},
        resources={"heartbeat_interval": 1, "grace_period": 3, "artifacts": artifacts},
        training={"epochs": 3, "width": 32, "device": "cpu"},
        space={"lr": {"type": "float", "low": 0.0001, "high": 0.1, "log": True}},
    )


def _environment(endpoint: str) -> dict[str, str]:
    """The environment of the processes under test: ours, pointed at ``endpoint``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and k != "HPSEARCH_S3_ENDPOINT_URL"
    }
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION="us-east-1",
        # No ~/.aws of the machine's user: only what the test sets.
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return env


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a real process), for the module."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    script = Path(sys.executable).parent / "moto_server"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    with open(log, "w") as out:
        server = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"hps-{uuid.uuid4().hex[:12]}"
    _client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The endpoint and keys in this process's environment too (for store-level checks)."""
    env = _environment(s3_endpoint)
    for key in [k for k in os.environ if k.startswith("AWS_")] + ["HPSEARCH_S3_ENDPOINT_URL"]:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    return env


def _keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    pages = (
        _client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    return [entry["Key"] for page in pages for entry in page.get("Contents", [])]


def _object_key(study: optuna.Study, trial: FrozenTrial, prefix: str) -> str:
    uid = study.user_attrs[UID]
    slot = int(trial.system_attrs[SLOT])
    return f"{prefix}/{study.study_name}-{uid}/slot-{slot:06d}/checkpoint.pt"


# --- the store itself ------------------------------------------------------------------------


def test_the_store_uploads_downloads_and_deletes_one_folder(
    s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    store = open_object_store(f"s3://{bucket}/run/")
    store.check()
    assert store.url == f"s3://{bucket}/run"
    local = tmp_path / "checkpoint.pt"
    assert store.download("s/slot-000001/checkpoint.pt", str(local)) is False
    assert not local.exists()
    local.write_bytes(b"epoch 1")
    for slot in ("slot-000001", "slot-0000010", "slot-000002"):
        store.upload(str(local), f"s/{slot}/checkpoint.pt")
    assert store.exists("s/slot-000001/checkpoint.pt")
    copy_path = tmp_path / "copy" / "checkpoint.pt"
    assert store.download("s/slot-000001/checkpoint.pt", str(copy_path)) is True
    assert copy_path.read_bytes() == b"epoch 1"
    store.delete_prefix("s/slot-000001")  # a folder: slot-0000010 is not in it
    assert sorted(_keys(s3_env["AWS_ENDPOINT_URL"], bucket)) == [
        "run/s/slot-0000010/checkpoint.pt",
        "run/s/slot-000002/checkpoint.pt",
    ]
    assert sorted(store.keys("s")) == [
        "s/slot-0000010/checkpoint.pt",
        "s/slot-000002/checkpoint.pt",
    ]


def test_a_members_old_exploit_copies_are_removed_from_the_bucket(
    s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    """As a member's continuation after report step 5 starts, its slot's copies of decisions at
    step 5 or before go (a sharded copy's versions too); a later decision's copy, its own
    checkpoint and another slot's keys stay."""
    path = tmp_path / "study.toml"
    path.write_text(_study_toml("copies", f"s3://{bucket}/run"))
    spec = load_spec_file(str(path))
    store = open_object_store(f"s3://{bucket}/run")
    local = tmp_path / "checkpoint.pt"
    local.write_bytes(b"weights")
    slot, other = "copies-u/slot-000001", "copies-u/slot-0000010"
    stays = [
        f"{slot}/checkpoint.pt",
        f"{slot}/{exploit_copy(8, 0)}/checkpoint.pt",
        f"{other}/{exploit_copy(2, 0)}/checkpoint.pt",
    ]
    goes = [
        f"{slot}/{exploit_copy(2, 0)}/checkpoint.pt",
        f"{slot}/{exploit_copy(5, 3)}/checkpoint.pt.versions/v1/shards/0.distcp",
        f"{slot}/{exploit_copy(5, 3)}/checkpoint.pt",
    ]
    for key in stays + goes:
        store.upload(str(local), key)
    remove_old_copies(spec, "u", 1, through_step=5)
    assert sorted(_keys(s3_env["AWS_ENDPOINT_URL"], bucket)) == sorted(f"run/{k}" for k in stays)


# --- (1) a study to its budget, with its checkpoints in the bucket -----------------------------


@pytest.fixture(scope="module")
def finished(
    s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str, str, Path]:
    """A digits study run to its budget by `hpsearch run`: (storage URL, name, bucket, cwd)."""
    bucket = f"hps-{uuid.uuid4().hex[:12]}"
    _client(s3_endpoint).create_bucket(Bucket=bucket)
    node = tmp_path_factory.mktemp("node")
    name = f"s3-{uuid.uuid4().hex[:8]}"
    study_file = node / "study.toml"
    study_file.write_text(_study_toml(name, f"s3://{bucket}/run"))
    url = f"sqlite:///{node / 'hpsearch.db'}"
    result = subprocess.run(
        [*hpsearch_command(), "run", str(study_file), "--storage", url, "--workers", "2"],
        cwd=node,
        env=_environment(s3_endpoint),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return url, name, bucket, node


@pytest.mark.slow
def test_a_study_runs_to_its_budget_with_the_best_checkpoint_in_the_bucket(
    finished: tuple[str, str, str, Path], s3_endpoint: str
) -> None:
    url, name, bucket, node = finished
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    best = study.best_trial
    key = _object_key(study, best, "run")
    # The trial names the object; only the best trial's is kept (keep_checkpoints = "best").
    assert best.user_attrs[CHECKPOINT] == f"s3://{bucket}/{key}"
    checkpoints = [k for k in _keys(s3_endpoint, bucket, "run/") if not k.startswith("run/store/")]
    assert checkpoints == [key]
    for trial in trials:
        assert trial.user_attrs[CHECKPOINT].startswith(f"s3://{bucket}/run/")
    # The node's copies went once the bucket held them.
    assert not list((node / "hpsearch-artifacts-cache").rglob("*.pt"))
    # The best checkpoint is published in the bucket's artifact store, as a download.
    metas = optuna.artifacts.get_all_artifact_meta(study)
    assert f"trial-{best.number:06d}-checkpoint.pt" in [m.filename for m in metas]
    assert {m.mimetype for m in metas} == {"application/octet-stream"}
    stored = _keys(s3_endpoint, bucket, "run/store/")
    assert sorted(stored) == sorted(f"run/store/{m.artifact_id}" for m in metas)


@pytest.mark.slow
def test_the_export_names_the_checkpoint_object(
    finished: tuple[str, str, str, Path], s3_endpoint: str
) -> None:
    url, name, bucket, node = finished
    result = subprocess.run(
        [*hpsearch_command(), "export", "--study", name, "--storage", url, "--format", "json"],
        cwd=node,
        env=_environment(s3_endpoint),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name=name, storage=url)
    expected = f"s3://{bucket}/{_object_key(study, study.best_trial, 'run')}"
    assert f'"checkpoint": "{expected}"' in result.stdout


@pytest.mark.slow
def test_export_weights_downloads_the_best_checkpoint_and_writes_its_model(
    finished: tuple[str, str, str, Path], s3_endpoint: str
) -> None:
    url, name, bucket, node = finished
    weights = node / "best-weights.pt"
    export = ["export", "--study", name, "--storage", url, "--format", "json"]
    result = subprocess.run(
        [*hpsearch_command(), *export, "--weights", str(weights)],
        cwd=node,
        env=_environment(s3_endpoint),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["weights"] == str(weights)
    study = optuna.load_study(study_name=name, storage=url)
    key = _object_key(study, study.best_trial, "run")
    stored = _client(s3_endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
    checkpoint = torch.load(io.BytesIO(stored), map_location="cpu", weights_only=False)
    exported = torch.load(weights)
    assert sorted(exported) == sorted(checkpoint["model"])
    assert all(torch.equal(exported[k], checkpoint["model"][k]) for k in exported)


# --- (3) the dashboard serves the bucket's artifacts -------------------------------------------


@pytest.mark.slow
def test_the_dashboard_serves_a_checkpoint_from_the_bucket_as_a_download(
    finished: tuple[str, str, str, Path], s3_endpoint: str
) -> None:
    url, name, bucket, node = finished
    study = optuna.load_study(study_name=name, storage=url)
    best = study.best_trial
    meta = next(
        m
        for m in optuna.artifacts.get_all_artifact_meta(study)
        if m.filename == f"trial-{best.number:06d}-checkpoint.pt"
    )
    port = free_port()
    command = [
        *hpsearch_command(),
        "dashboard",
        "--storage",
        url,
        "--port",
        str(port),
        "--artifacts",
        f"s3://{bucket}/run/store",
    ]
    server = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=node.parent,  # not the node's folder: all it serves comes from the bucket
        env=_environment(s3_endpoint),
    )
    try:
        assert get_json(f"http://127.0.0.1:{port}/api/meta")["artifact_is_available"] is True
        address = f"http://127.0.0.1:{port}/artifacts/{study._study_id}/{meta.artifact_id}"
        with urllib.request.urlopen(address, timeout=30) as response:
            assert response.headers["Content-Type"] == "application/octet-stream"
            body = response.read()
        checkpoint = _client(s3_endpoint).get_object(
            Bucket=bucket, Key=_object_key(study, best, "run")
        )
        assert body == checkpoint["Body"].read() and len(body) > 1000
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_published_checkpoint_in_a_folder_store_is_a_download_too(
    write_study: Any, tmp_path: Path
) -> None:
    """The folder store, at the store level: mimetypes would call a .pt a SNES page table."""
    spec_text = write_study(n_trials=1, body=f'[resources]\nartifacts = "{tmp_path / "art"}"\n')
    url = f"sqlite:///{tmp_path / 'f.db'}"
    spec = load_spec_file(str(spec_text))
    create_study(spec, url)
    study = optuna.load_study(study_name=spec.name, storage=url)
    study.tell(study.ask(), 1.0)
    trial = copy.deepcopy(study.get_trials()[-1])
    weights = tmp_path / "checkpoint.pt"
    weights.write_bytes(b"weights")
    trial.user_attrs = {CHECKPOINT: str(weights)}
    _publish(study, trial)
    (meta,) = optuna.artifacts.get_all_artifact_meta(study)
    assert meta.filename.endswith(".pt") and meta.mimetype == "application/octet-stream"


# --- (2) a trial killed on one node resumes on another from the bucket -------------------------


# The regression example, held after its third report on a node whose folder has a file
# "hold": the test kills that node there, never after the trial ended (a trial of a few seconds
# can end while a loaded machine waits for its checkpoint object to appear).
HELD = f"""
import os
import runpy
import time

import hpsearch

example = runpy.run_path({str(REGRESSION)!r})


class Held:
    def __init__(self, trial):
        self.trial = trial

    def __getattr__(self, name):
        return getattr(self.trial, name)

    def report(self, value, step):
        self.trial.report(value, step)
        while step >= 2 and os.path.exists("hold"):
            time.sleep(0.1)


@hpsearch.uses_engine(options=["width", "depth"])
def objective(trial, params):
    return example["objective"](Held(trial), params)
"""


@pytest.mark.slow
def test_a_trial_killed_on_one_node_resumes_on_another_from_the_bucket(
    postgres_url: str, s3_endpoint: str, bucket: str, tmp_path: Path, study_name: str
) -> None:
    node_a, node_b = tmp_path / "node-a", tmp_path / "node-b"
    node_a.mkdir()
    node_b.mkdir()
    (node_a / "hold").touch()
    (tmp_path / "held.py").write_text(HELD)
    study_file = tmp_path / "long.toml"
    # One trial: the one killed and resumed is all the test needs.
    study_file.write_text(
        study_toml(
            name=study_name,
            objective=f"{tmp_path / 'held.py'}:objective",
            n_trials=1,
            metric="mse",
            resources={
                "heartbeat_interval": 1,
                "grace_period": 3,
                "artifacts": f"s3://{bucket}/run",
            },
            training={"epochs": EPOCHS, "batch_size": 100, "width": 16, "depth": 2},
            space={"lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
        )
    )
    create_study(load_spec_file(str(study_file)), postgres_url)
    env = _environment(s3_endpoint)
    command = [
        *hpsearch_command(),
        "worker",
        "--study",
        study_name,
        "--storage",
        postgres_url,
        "--workers",
        "1",
    ]
    first = subprocess.Popen(
        command,
        cwd=node_a,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: kill -9 takes the node down whole
    )
    try:
        deadline = time.monotonic() + 60
        while not _children(first.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        # Held at its third report: it runs until the kill.
        victim = _wait_for_running(postgres_url, study_name, _children(first.pid), epochs=3)
        study = optuna.load_study(study_name=study_name, storage=postgres_url)
        key = _object_key(study, victim, "run")
        # The heartbeat uploads the checkpoint while the trial runs.
        deadline = time.monotonic() + 120
        while key not in _keys(s3_endpoint, bucket, "run/"):
            assert time.monotonic() < deadline, "no checkpoint object appeared during the trial"
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    second = subprocess.run(
        command, cwd=node_b, env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr
    # Node B never saw node A's folder: the retry resumed from the object.
    _assert_resumed(postgres_url, study_name, victim, at_least=1, n_trials=1)
    assert not list((node_b / "hpsearch-artifacts-cache").rglob("*.pt"))
    assert list((node_a / "hpsearch-artifacts-cache").rglob("*.pt"))  # what the kill left


# --- (4) bad input: one line, exit 2, no credentials -------------------------------------------


@pytest.mark.parametrize(
    ("artifacts", "said"),
    [
        ("s3://", "names no bucket"),
        ("s3:///run", "names no bucket"),
        ("s3://My_Bucket/run", "not a valid bucket name"),
        ("s3://bucket/a//b", "empty, '.' or '..' part"),
        ("gs://bucket/run", "only s3:// URLs"),
    ],
)
def test_a_malformed_artifacts_url_is_refused_at_create(
    artifacts: str, said: str, write_study: Any, tmp_path: Path
) -> None:
    path = write_study(body=f'[resources]\nartifacts = "{artifacts}"\n')
    result = subprocess.run(
        [*hpsearch_command(), "create", str(path), "--storage", f"sqlite:///{tmp_path / 'x.db'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "[resources]" in result.stderr and said in result.stderr
    assert "s3://BUCKET" in result.stderr  # the form that works


def _run_refused(
    tmp_path: Path, write_study: Any, env: dict[str, str], bucket: str
) -> subprocess.CompletedProcess[str]:
    path = write_study(body=f'[resources]\nartifacts = "s3://{bucket}/run"\n')
    return subprocess.run(
        [
            *hpsearch_command(),
            "run",
            "-q",
            str(path),
            "--storage",
            f"sqlite:///{tmp_path / 'x.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )


def _assert_one_line_without_secrets(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for secret in (SECRET_KEY, ACCESS_KEY):
        assert secret not in result.stderr + result.stdout


@pytest.mark.slow
def test_an_unreachable_endpoint_is_one_line_and_exit_2_without_credentials(
    s3_endpoint: str, write_study: Any, tmp_path: Path
) -> None:
    closed = free_port()
    env = _environment(s3_endpoint)
    env["HPSEARCH_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{closed}"  # wins over AWS_ENDPOINT_URL
    result = _run_refused(tmp_path, write_study, env, "some-bucket")
    _assert_one_line_without_secrets(result)
    assert f"http://127.0.0.1:{closed}" in result.stderr
    assert "s3://some-bucket/run" in result.stderr and "HPSEARCH_S3_ENDPOINT_URL" in result.stderr
    assert not (tmp_path / "hpsearch-artifacts-cache").exists()  # no worker started

    # The dashboard says the same in one line.
    dashboard = subprocess.run(
        [
            *hpsearch_command(),
            "dashboard",
            "--storage",
            f"sqlite:///{tmp_path / 'x.db'}",
            "--artifacts",
            "s3://some-bucket/run/store",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    _assert_one_line_without_secrets(dashboard)
    assert f"http://127.0.0.1:{closed}" in dashboard.stderr


@pytest.mark.slow
def test_a_missing_bucket_is_one_line_without_credentials(
    s3_endpoint: str, bucket: str, write_study: Any, tmp_path: Path
) -> None:
    env = _environment(s3_endpoint)
    result = _run_refused(tmp_path, write_study, env, "no-such-bucket-here")
    _assert_one_line_without_secrets(result)
    assert "'no-such-bucket-here' does not exist" in result.stderr


def test_store_errors_are_storage_errors_naming_bucket_and_key(
    s3_env: dict[str, str], bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HPSEARCH_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    store = open_object_store(f"s3://{bucket}/run")
    local = tmp_path / "c.pt"
    local.write_bytes(b"x")
    with pytest.raises(StorageError) as raised:
        store.upload(str(local), "s/slot-000001/checkpoint.pt")
    message = str(raised.value)
    assert f"s3://{bucket}/run/s/slot-000001/checkpoint.pt" in message
    assert "\n" not in message and SECRET_KEY not in message and ACCESS_KEY not in message


def test_the_s3_module_does_not_import_boto3_until_a_store_is_opened() -> None:
    code = textwrap.dedent(
        """
        import sys
        import hpsearch.search.cli._main, hpsearch.storage, hpsearch.search.runtime._worker
        assert "boto3" not in sys.modules and "botocore" not in sys.modules, "imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_node_that_cannot_write_its_checkpoint_cache_is_refused(
    s3_env: dict[str, str],
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = tmp_path / "node"
    node.mkdir()
    (node / "hpsearch-artifacts-cache").write_text("a file in the way")
    monkeypatch.chdir(node)
    path = tmp_path / "study.toml"
    path.write_text(_study_toml("cache", f"S3://{bucket}/run/"))
    spec = load_spec_file(str(path))
    assert spec.resources.artifacts == f"s3://{bucket}/run"  # normalised as stored
    with pytest.raises(HpsearchError, match=r"checkpoint cache folder .*a file is in the way"):
        check_node(spec, [])


# --- (5) sharded checkpoints: folders in the bucket, replaced whole ------------------------------


def _shards(folder: Path, files: dict[str, bytes]) -> Path:
    """A sharded checkpoint folder as torch.distributed.checkpoint leaves it."""
    folder.mkdir(parents=True)
    for name, body in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(body)
    return folder


def _contents(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_a_sharded_checkpoint_folder_goes_to_the_bucket_whole_and_comes_back_whole(
    s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    store = open_object_store(f"s3://{bucket}/run")
    key = "s-uid/slot-000000/checkpoint.pt"
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'folders.db'}")
    trial = study.ask()
    first = {"__0_0.distcp": b"rank 0 of v1", "__1_0.distcp": b"rank 1 of v1", "meta.pt": b"v1"}
    node_a = _shards(tmp_path / "a" / "slot-000000" / "checkpoint.pt", first)
    with CheckpointSync(store, key, str(node_a)) as sync:
        sync.finish(trial)  # what a trial does before it is told
    # The trial names the object, not the node's folder, and the node's copy went.
    assert study.trials[0].user_attrs[CHECKPOINT] == f"s3://{bucket}/run/{key}"
    assert not node_a.exists()

    # A retry on another node gets the folder, every shard of it.
    node_b = tmp_path / "b" / "slot-000000" / "checkpoint.pt"
    CheckpointSync(store, key, str(node_b)).fetch()
    assert _contents(node_b) == first

    # A new version with other files replaces the old one whole, in the bucket and on the node.
    second = {"__0_0.distcp": b"rank 0 of v2", "nested/extra": b"x", "meta.pt": b"v2"}
    node_a = _shards(tmp_path / "a2" / "checkpoint.pt", second)
    with CheckpointSync(store, key, str(node_a)) as sync:
        sync.finish(trial)
    CheckpointSync(store, key, str(node_b)).fetch()
    assert _contents(node_b) == second  # no shard of v1 left behind

    # The previous version stays for a reader that read its manifest; older ones go.
    third = {"__0_0.distcp": b"rank 0 of v3", "meta.pt": b"v3"}
    with CheckpointSync(store, key, str(_shards(tmp_path / "a3" / "checkpoint.pt", third))) as s:
        s.finish(trial)
    prefix = f"run/{key}.versions/"
    by_version: dict[str, set[str]] = {}
    for stored in _keys(s3_env["AWS_ENDPOINT_URL"], bucket, prefix):
        version, name = stored[len(prefix) :].split("/", 1)
        by_version.setdefault(version, set()).add(name)
    assert [by_version[v] for v in sorted(by_version)] == [set(second), set(third)]
    CheckpointSync(store, key, str(node_b)).fetch()
    assert _contents(node_b) == third

    # Removing the trial's checkpoint (keep_checkpoints) removes every version with it.
    _remove_all([study.trials[0]])
    assert _keys(s3_env["AWS_ENDPOINT_URL"], bucket, "run/s-uid/") == []


FSDP_STUDY = """
[study]
name = "{name}"
objective = "{objective}"
metric = "mse"
direction = "minimize"

[budget]
n_trials = 1

[sampler]
name = "random"
seed = 3

[pruner]
name = "none"

[resources]
devices_per_trial = 2
heartbeat_interval = 1
grace_period = 3
artifacts = "{artifacts}"

[training]
epochs = 8
strategy = "fsdp"
batch_size = 100
width = 32
depth = 2

[space.lr]
type = "float"
low = 1e-3
high = 1e-2
log = true
"""


@pytest.mark.slow
def test_a_sharded_trial_killed_on_one_node_resumes_on_another_from_the_bucket(
    s3_endpoint: str, bucket: str, tmp_path: Path, study_name: str
) -> None:
    node_a, node_b = tmp_path / "node-a", tmp_path / "node-b"
    node_a.mkdir()
    node_b.mkdir()
    (node_a / "hold").touch()  # held after its third report: killed mid-trial, never after
    (tmp_path / "held.py").write_text(HELD)
    study_file = tmp_path / "fsdp.toml"
    study_file.write_text(
        FSDP_STUDY.format(
            name=study_name,
            objective=f"{tmp_path / 'held.py'}:objective",
            artifacts=f"s3://{bucket}/run",
        )
    )
    url = f"sqlite:///{tmp_path / 'fsdp.db'}"  # one file both "nodes" reach
    create_study(load_spec_file(str(study_file)), url)
    env = {**_environment(s3_endpoint), "OMP_NUM_THREADS": "1"}
    command = [*hpsearch_command(), "worker", "--study", study_name, "--storage", url]
    first = subprocess.Popen(
        command,
        cwd=node_a,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: kill -9 takes the node down whole
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert first.poll() is None, "the first node's worker ended early"
            assert time.monotonic() < deadline, "no sharded checkpoint reached the bucket"
            running = [
                t
                for t in optuna.load_study(study_name=study_name, storage=url).get_trials()
                if t.state == TrialState.RUNNING and len(t.intermediate_values) >= 2
            ]
            study = optuna.load_study(study_name=study_name, storage=url)
            if running and _object_key(study, running[0], "run") in _keys(
                s3_endpoint, bucket, "run/"
            ):
                break  # the heartbeat uploaded the folder while the trial runs
            time.sleep(0.2)
        victim = running[0]
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    second = subprocess.run(
        command, cwd=node_b, env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr[-3000:]
    study = optuna.load_study(study_name=study_name, storage=url)
    (retry,) = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert retry.number != victim.number and retry.params == victim.params
    # Node B never saw node A's folder: the retry resumed from the bucket's shards.
    assert retry.user_attrs["resumed_from_epoch"] >= 1
    key = _object_key(study, retry, "run")
    assert retry.user_attrs[CHECKPOINT] == f"s3://{bucket}/{key}"
    assert not list((node_b / "hpsearch-artifacts-cache").rglob("meta.pt"))  # the node's copy went
    exported = subprocess.run(
        [*hpsearch_command(), "export", "--study", study_name, "--storage", url, "--top", "1"],
        cwd=node_b,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    assert f"checkpoint: s3://{bucket}/{key}" in exported.stdout
    assert "hpsearch-artifacts-cache" not in exported.stdout


@pytest.mark.slow
def test_a_population_takes_its_donors_weights_through_the_bucket(
    s3_endpoint: str, bucket: str, tmp_path: Path, study_name: str
) -> None:
    """PBT's exploit in a bucket: the donor's object is copied beside the member's, under the
    decision's name, and the member's continuation (its node's copy gone) takes it (downloads
    it, stores it under its own key, deletes the copy) and resumes the donor's weights."""
    from .test_pbt import CURVES, PBT, SPACE, assert_exploits_copy_the_donor, assert_population_done

    path = tmp_path / "pbt.toml"
    path.write_text(
        study_toml(
            name=study_name,
            objective=CURVES,
            n_trials=PBT["population"],
            metric="val_loss",
            sampler={"name": "random", "seed": 3},
            pruner=None,
            space=SPACE,
            scheduler=PBT,
            training={"seed": 0},
            resources={"artifacts": f"s3://{bucket}/run", "keep_checkpoints": "all"},
        )
    )
    url = f"sqlite:///{tmp_path / 'pbt.db'}"
    result = subprocess.run(
        [*hpsearch_command(), "run", str(path), "--storage", url, "--workers", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_environment(s3_endpoint),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name=study_name, storage=url).get_trials()
    assert_population_done(trials)
    exploits = assert_exploits_copy_the_donor(trials)
    for trial in exploits:
        assert trial.user_attrs[CHECKPOINT].startswith(f"s3://{bucket}/run/")
    # Each copy (under its decision's name, beside the member's object) was taken, then gone.
    listed = _client(s3_endpoint).list_objects_v2(Bucket=bucket, Prefix="run/")["Contents"]
    keys = [entry["Key"] for entry in listed]
    assert any("/slot-" in key for key in keys)
    assert not [key for key in keys if "/exploit-" in key]
    assert not list((tmp_path / "hpsearch-artifacts-cache").rglob("checkpoint.pt"))
