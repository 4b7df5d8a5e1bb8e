"""Workers through `hpsearch proxy` (Optuna's gRPC storage proxy) against PostgreSQL."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.attrs import REQUEUE, RETRY_OF, SLOT
from hpsearch.search import budget_state, load_spec_file
from hpsearch.search._study import load_study
from hpsearch.search.runtime._budget import claim_slot
from hpsearch.storage import ProxyStorage

from .conftest import free_port, hpsearch_command
from .test_workers import assert_exact_budget

# Every test starts the proxy server; most run workers through it.
pytestmark = pytest.mark.slow


def _create(path: Path, url: str) -> str:
    result = subprocess.run(
        [*hpsearch_command(), "create", str(path), "--storage", url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return load_spec_file(str(path)).name


@contextmanager
def _running_proxy(url: str, tmp_path: Path, stop: int = signal.SIGTERM) -> Iterator[str]:
    """A real `hpsearch proxy` process on a free port until the block ends, then ``stop``
    sent to it: it must exit 0, promptly, with no traceback. Yields its grpc:// URL."""
    port = free_port()
    log_path = tmp_path / "proxy.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*hpsearch_command(), "proxy", "--storage", url, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the proxy did not start listening"
                time.sleep(0.2)
            yield f"grpc://127.0.0.1:{port}"
        finally:
            process.send_signal(stop)
            assert process.wait(timeout=30) == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text()
    assert "hpsearch proxy stopped" in log_path.read_text()


@pytest.fixture
def proxy(postgres_url: str, write_study: Any, tmp_path: Path, study_name: str) -> Iterator[str]:
    """A real `hpsearch proxy` process on a free port; yields its grpc:// URL."""
    # The schema must exist before the proxy starts: `hpsearch create` is what makes it.
    _create(write_study(name=f"{study_name}-first", filename="first.toml"), postgres_url)
    with _running_proxy(postgres_url, tmp_path) as url:
        yield url


def test_ctrl_c_stops_the_proxy_in_order(
    postgres_url: str, write_study: Any, tmp_path: Path, study_name: str
) -> None:
    """SIGINT, as SIGTERM, stops the server and closes its connections; exit code 0."""
    name = _create(write_study(name=f"{study_name}-ctrl-c"), postgres_url)
    with _running_proxy(postgres_url, tmp_path, stop=signal.SIGINT) as url:
        assert optuna.load_study(study_name=name, storage=ProxyStorage(url)).study_name == name


def test_worker_commands_through_the_proxy_reach_the_exact_budget(
    proxy: str, postgres_url: str, write_study: Any, tmp_path: Path
) -> None:
    n_trials = 70  # crosses a batch boundary: a worker enqueues the next batch through the proxy
    name = _create(write_study(n_trials=n_trials), postgres_url)
    command = [*hpsearch_command(), "worker", "--study", name, "--storage", proxy]
    nodes = [
        subprocess.Popen(
            [*command, "--workers", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=400) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert "Traceback" not in "".join(out + err for out, err in outputs)
    assert_exact_budget(postgres_url, name, n_trials)
    trials = optuna.load_study(study_name=name, storage=postgres_url).get_trials()
    assert budget_state(trials, n_trials).lost == 0
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) >= 2, "several workers took part"


def test_heartbeats_pass_through_and_the_proxy_requeues_a_dead_workers_trial(
    proxy: str, postgres_url: str, write_study: Any
) -> None:
    body = "[resources]\nheartbeat_interval = 1\ngrace_period = 2\n"
    name = _create(write_study(n_trials=3, body=body), postgres_url)
    loaded = load_study(name, proxy)
    assert isinstance(loaded.storage, ProxyStorage)
    claimed = claim_slot(loaded.study, loaded.storage)
    assert claimed is not None
    trial_id = claimed._trial_id
    loaded.storage.record_heartbeat(trial_id)  # a worker's beat, relayed as a heartbeat row
    direct = optuna.storages.RDBStorage(postgres_url, skip_table_creation=True)
    with direct.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            f"SELECT count(*) FROM trial_heartbeats WHERE trial_id = {trial_id}"
        ).scalar()
    assert rows == 1
    assert SLOT in direct.get_trial(trial_id).system_attrs
    assert "hpsearch:heartbeat" not in direct.get_trial(trial_id).system_attrs
    # The worker "dies": no more beats. The proxy fails the trial after the grace period and
    # its retry takes the slot back to the queue.
    deadline = time.monotonic() + 60
    while direct.get_trial(trial_id).state == TrialState.RUNNING:
        assert time.monotonic() < deadline, "the proxy never failed the stale trial"
        time.sleep(0.5)
    dead = direct.get_trial(trial_id)
    assert dead.state == TrialState.FAIL
    # Optuna's reaper marks the trial FAIL, then queues its retry in a call of its own: a read
    # in between (a loaded machine) finds no retry yet.
    while not (
        retries := [
            t
            for t in optuna.load_study(study_name=name, storage=postgres_url).get_trials()
            if t.system_attrs.get("failed_trial") == dead.number
        ]
    ):
        assert time.monotonic() < deadline, "the proxy failed the stale trial but never retried it"
        time.sleep(0.5)
    assert [t.state for t in retries] == [TrialState.WAITING]
    assert retries[0].system_attrs[SLOT] == dead.system_attrs[SLOT]


def test_study_creation_needs_the_database_not_the_proxy(proxy: str, write_study: Any) -> None:
    result = subprocess.run(
        [*hpsearch_command(), "create", str(write_study()), "--storage", proxy],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not a database" in result.stderr


def test_a_proxy_workers_hand_back_queues_one_retry_however_late(
    proxy: str, postgres_url: str, write_study: Any
) -> None:
    """A worker behind the proxy, stopped, tells its trial FAIL and asks for its retry: the
    proxy queues it once, marked as a direct worker's is. Asked again (a worker that froze
    between the two calls, after the proxy repaired the retry), it adds none."""
    name = _create(write_study(n_trials=3), postgres_url)
    loaded = load_study(name, proxy)
    claimed = claim_slot(loaded.study, loaded.storage)
    assert claimed is not None
    loaded.storage.set_trial_state_values(claimed._trial_id, TrialState.FAIL)
    requeue = loaded.storage.get_heartbeat_stale_trial_callback()
    failed = loaded.storage.get_trial(claimed._trial_id)
    for _ in range(2):
        requeue(loaded.study, failed)
    trials = optuna.load_study(study_name=name, storage=postgres_url).get_trials()
    (retry,) = [t for t in trials if t.system_attrs.get(RETRY_OF) == claimed.number]
    assert retry.state == TrialState.WAITING and retry.system_attrs[SLOT] == 0
    assert REQUEUE not in failed.system_attrs


def test_the_proxy_queues_a_retry_that_a_dead_process_took_with_it(
    proxy: str, postgres_url: str, write_study: Any, tmp_path: Path
) -> None:
    """A process behind the proxy failed its trial and died before it asked for the retry:
    the proxy's reaper queues it once the failure is a grace period old, and the workers (which
    cannot repair it themselves) wait for it rather than end one configuration short."""
    body = "[resources]\nheartbeat_interval = 1\ngrace_period = 2\n"
    name = _create(write_study(n_trials=4, body=body), postgres_url)
    loaded = load_study(name, proxy)
    lost = claim_slot(loaded.study, loaded.storage)
    assert lost is not None and lost.system_attrs[SLOT] == 0
    loaded.storage.set_trial_state_values(lost._trial_id, TrialState.FAIL)  # then it dies
    worker = subprocess.run(
        [*hpsearch_command(), "worker", "--study", name, "--storage", proxy],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    trials = optuna.load_study(study_name=name, storage=postgres_url).get_trials()
    (retry,) = [t for t in trials if t.system_attrs.get(RETRY_OF) == lost.number]
    assert retry.state == TrialState.COMPLETE and retry.system_attrs[SLOT] == 0
    complete = sorted(t.system_attrs[SLOT] for t in trials if t.state == TrialState.COMPLETE)
    assert complete == [0, 1, 2, 3]
    assert len(trials) == 5
