"""One node's share of a study: its workers' devices, the workers started, progress shown until
they end. ``hpsearch run``/``worker`` and the Python API (``hpsearch.run``/``worker``) use it."""

from __future__ import annotations

import glob
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time

import optuna
from optuna.trial import TrialState

from hpsearch.attrs import WORKER
from hpsearch.errors import StorageError
from hpsearch.search._study import LoadedStudy
from hpsearch.search.runtime._devices import WorkerDevices, assign_devices, parse_gpus
from hpsearch.search.runtime._launch import Gate, NodeGroup, available_cores, start_workers
from hpsearch.search.spec import StudySpec


def visible_gpus() -> int:
    """How many GPUs torch sees here. A machine with no GPU driver's device files has none,
    and is told so without importing torch (seconds of a command's start-up)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    if not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd")):  # NVIDIA, ROCm
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def node_assignments(
    *,
    gpus: str | None,
    devices_per_trial: int | None,
    workers: int | None,
    spec_ranks: int,
    default_workers: int,
) -> list[WorkerDevices]:
    """The node's workers and their devices, from --gpus/--gpus-per-trial/--workers."""
    chosen = parse_gpus(gpus) if gpus is not None else None
    visible = visible_gpus()
    return assign_devices(
        gpus=chosen,
        visible_gpus=visible,
        gpus_per_trial=devices_per_trial,
        workers=workers or (None if visible or chosen else default_workers),
        cores=available_cores(),
        default_ranks=spec_ranks,
    )


class NodeWorkers:
    """This node's workers, started at once behind a shut gate (``_launch.Gate``): their
    imports overlap the parent's creating, loading and checking of the study. ``run`` checks
    the node, opens the gate and shows progress until they end; leaving the ``with`` block
    without ``run`` (an error, no work) ends them before they touched the database."""

    def __init__(
        self,
        study_name: str,
        url: str,
        *,
        assignments: list[WorkerDevices],
        spec: StudySpec,
        timeout: float | None,
        show_progress: bool = True,
        group: NodeGroup | None = None,
    ) -> None:
        self._assignments = assignments
        self._show_progress = show_progress
        self._live = show_progress and sys.stderr.isatty()
        self._gate = Gate()
        self._let_in = False
        self._started = time.monotonic()
        self._processes = start_workers(
            study_name,
            url,
            timeout=timeout,
            log_trials=show_progress and not self._live,
            quiet=not show_progress,  # `-q`: the workers' log keeps warnings and errors
            assignments=assignments,
            group=group,
            gate=self._gate,
            preload=spec.data,
        )

    def __enter__(self) -> NodeWorkers:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._let_in:
            return  # they work, and end, as stop signals tell them
        self._gate.close()
        for process in self._processes:
            # Behind the gate it holds no trial, nor anything else; and it may be seconds in
            # its imports before it would read the closed gate.
            process.kill()
            process.join()

    def run(self, loaded: LoadedStudy) -> int:
        """Check the node, let the workers work, show progress until they end; return the
        worst exit code. SIGTERM/SIGINT are passed on to the workers, which hand their trials
        back and exit 0."""
        from hpsearch.search.results._progress import Progress, progress_line
        from hpsearch.search.runtime._preflight import check_node
        from hpsearch.search.runtime._stop import install_parent_handlers

        check_node(loaded.spec, self._assignments)
        show_progress, processes = self._show_progress, self._processes
        progress = Progress(sys.stderr, live=self._live, every=1.0 if self._live else 30.0)
        self._gate.open()
        self._let_in = True
        # Signal handlers belong to the main thread; called from another (a notebook's
        # executor), a stop reaches the workers through their own handlers instead.
        if threading.current_thread() is threading.main_thread():
            install_parent_handlers(processes)

        def line() -> str:
            try:
                return progress_line(loaded.study, loaded.spec, self._started)
            # An outage: the workers ride it out, and so does the parent.
            except StorageError as err:
                return f"progress unknown: {err}"

        while any(p.is_alive() for p in processes):
            if show_progress and progress.due():  # the line reads the study: only when shown
                progress.show(line())
            # Wakes as soon as a worker exits, so the summary follows the last trial at once.
            multiprocessing.connection.wait([p.sentinel for p in processes if p.is_alive()], 0.5)
        for process in processes:
            process.join()
        if show_progress and all(p.exitcode == 0 for p in processes):
            progress.show(line(), force=True)
        progress.close()
        for process in processes:
            if (process.exitcode or 0) < 0:
                print(f"hpsearch: {killed(process, loaded.study)}", file=sys.stderr)
        # A negative exit code is a worker killed by a signal (e.g. the kernel's OOM killer).
        return max(1 if (p.exitcode or 0) < 0 else (p.exitcode or 0) for p in processes)


def killed(process: multiprocessing.process.BaseProcess, study: optuna.Study) -> str:
    """Why a worker ended without a word of its own: the signal that killed it, and the trial
    it was running (still RUNNING, recorded with its pid); a killed process prints nothing."""
    number = -(process.exitcode or 0)
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    what = f"{name} (signal {number})"
    if number == signal.SIGKILL:
        what += ", which the kernel's OOM killer sends when memory runs out (see `dmesg`)"
    host = socket.gethostname()
    try:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    except StorageError:
        running = []
    trials = [
        t.number
        for t in running
        if t.user_attrs.get(WORKER, {}).get("pid") == process.pid
        and t.user_attrs.get(WORKER, {}).get("host") == host
    ]
    if not trials:
        return f"{process.name}'s process was killed by {what}"
    return f"trial {trials[0]}'s training process ({process.name}) was killed by {what}"
