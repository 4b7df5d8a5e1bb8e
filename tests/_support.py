"""What many test files share: the study-file builder, the stand-in trial, the database relay.

Plain helpers, importable from a test module, a fixture and a spawned rank alike (fixtures
live in conftest.py, which uses these)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

RANDOM_SAMPLER: Mapping[str, Any] = {"name": "random", "seed": 0}
NO_PRUNER: Mapping[str, Any] = {"name": "none"}
X_SPACE: Mapping[str, Mapping[str, Any]] = {"x": {"type": "float", "low": -10.0, "high": 10.0}}


def study_toml(
    *,
    name: str,
    objective: str | None = None,
    command: str | None = None,
    n_trials: int,
    direction: str | None = "minimize",
    metric: str | None = None,
    sampler: Mapping[str, Any] = RANDOM_SAMPLER,
    pruner: Mapping[str, Any] | None = NO_PRUNER,
    space: Mapping[str, Mapping[str, Any]] = X_SPACE,
    **sections: Mapping[str, Any],
) -> str:
    """A study file's text. ``direction=None`` leaves it to the objective (a built-in one has
    its own); ``pruner=None`` leaves out [pruner] (the default pruner); ``sections`` are the
    other tables by name (resources, training, constraints, more [study] keys as study=...).
    ``command``: a command study's command line instead of an ``objective``."""
    assert (objective is None) != (command is None), "an objective or a command"
    study: dict[str, Any] = {"name": name}
    study.update({"objective": objective} if command is None else {"command": command})
    if direction is not None:
        study["direction"] = direction
    if metric is not None:
        study["metric"] = metric
    study.update(sections.pop("study", {}))
    document: dict[str, Any] = {"study": study, "budget": {"n_trials": n_trials}}
    document["sampler"] = dict(sampler)
    if pruner is not None:
        document["pruner"] = dict(pruner)
    document.update({table: dict(keys) for table, keys in sections.items()})
    document["space"] = {param: dict(keys) for param, keys in space.items()}
    return tomli_w.dumps(document)


# Small schedules that pause configurations and resume them from their checkpoints (the
# learning-curve simulator's), for ``@pytest.mark.parametrize("scheduler", **RESUMING)``.
RESUMING: dict[str, Any] = {
    "argvalues": [
        {"name": "asha", "min_epochs": 1, "max_epochs": 9, "reduction_factor": 3},
        {"name": "pbt", "population": 4, "interval_epochs": 1, "max_epochs": 4},
    ],
    "ids": ["asha", "pbt"],
}


def write_study_file(path: Path, **study: Any) -> Path:
    """``study_toml(**study)`` written to ``path`` (its folder made); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(study_toml(**study))
    return path


def node_worker_args(study: str, url: str, rank: int, rendezvous: str) -> list[str]:
    """The `hpsearch worker` arguments of node ``rank`` of a trial group meeting at
    ``rendezvous``."""
    return [
        "worker",
        "--study",
        study,
        "--storage",
        url,
        "--node-rank",
        str(rank),
        "--rendezvous",
        rendezvous,
    ]


# The source of a trial wrapper for a test's objective file (or command script): it holds the
# training after epoch 1's report (the engine's, or hpsearch.report's, checkpoint is on disk)
# while a file named `pause` is in the working directory, and leaves a file `paused` there. The
# test then kills or stops the worker at a known point, however fast or slow the machine is.
PAUSING_TRIAL = """
import os
import time

from hpsearch.objectives import interrupt


class Pausing:
    def __init__(self, trial):
        self.trial, self.reported = trial, 0

    def __getattr__(self, name):
        return getattr(self.trial, name)

    def report(self, value, step):
        self.trial.report(value, step)
        self.reported = step + 1

    def should_prune(self):  # asked after each epoch's checkpoint and report
        if self.reported >= 2 and os.path.exists("pause"):
            open("paused", "w").close()
            while os.path.exists("pause") and not interrupt.STOP.is_set():
                time.sleep(0.05)
        return self.trial.should_prune()
"""


class RecordingTrial:
    """Stands in for an Optuna trial where an objective or a training loop meets it (report,
    should_prune, set_user_attr, number, params): no study or storage needed.

    ``prune_at``: should_prune says yes once more than that many epochs were reported.
    ``stop_after``: after that many reports, should_prune raises KeyboardInterrupt (the run
    stopped as a preemption would, after the epoch's checkpoint)."""

    def __init__(
        self,
        *,
        prune_at: int | None = None,
        stop_after: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.reports: list[tuple[int, float]] = []
        self.user_attrs: dict[str, Any] = {}
        self.prune_at = prune_at
        self.stop_after = stop_after
        self.params: dict[str, Any] = dict(params or {})
        self.number = 0

    @property
    def values(self) -> list[float]:
        """The reported values, in order."""
        return [value for _, value in self.reports]

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        if self.stop_after is not None and len(self.reports) == self.stop_after:
            raise KeyboardInterrupt("stopped after the checkpoint")
        return self.prune_at is not None and len(self.reports) > self.prune_at

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Relay:
    """127.0.0.1:port -> a database server. ``cut()`` closes every connection and refuses new
    ones (a server that went away); ``restore()`` listens again on the same port. An outage
    made this way leaves the shared server, and every other test using it, undisturbed."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                return  # cut
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        assert self._server is not None
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept() of its thread
        self._server.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for end in sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
