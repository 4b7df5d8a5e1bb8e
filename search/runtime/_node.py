"""One node's share of a study: its workers' devices, the workers started, progress shown until
they end. ``hpsearch run``/``worker`` and the Python API (``hpsearch.run``/``worker``) use it."""

from __future__ import annotations

import glob
import multiprocessing.connection
import os
import sys
import threading

from hpsearch.errors import StorageError
from hpsearch.search._study import load_study
from hpsearch.search.runtime._devices import WorkerDevices, assign_devices, parse_gpus
from hpsearch.search.runtime._launch import NodeGroup, available_cores, start_workers


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


def run_node(
    study_name: str,
    url: str,
    *,
    assignments: list[WorkerDevices],
    timeout: float | None,
    show_progress: bool = True,
    group: NodeGroup | None = None,
) -> int:
    """Start the workers, show progress until they end, return the worst exit code.

    SIGTERM/SIGINT are passed on to the workers, which hand their trials back and exit 0.
    """
    import time

    from hpsearch.search.results._progress import Progress, progress_line
    from hpsearch.search.runtime._preflight import check_node
    from hpsearch.search.runtime._stop import install_parent_handlers

    loaded = load_study(study_name, url)
    check_node(loaded.spec, assignments)
    live = show_progress and sys.stderr.isatty()
    progress = Progress(sys.stderr, live=live, every=1.0 if live else 30.0)
    started = time.monotonic()
    processes = start_workers(
        study_name,
        url,
        timeout=timeout,
        log_trials=show_progress and not live,
        assignments=assignments,
        group=group,
    )
    # Signal handlers belong to the main thread; called from another (a notebook's executor),
    # a stop reaches the workers through their own handlers instead.
    if threading.current_thread() is threading.main_thread():
        install_parent_handlers(processes)

    def line() -> str:
        try:
            return progress_line(loaded.study, loaded.spec, started)
        except StorageError as err:  # an outage: the workers ride it out, and so does the parent
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
    # A negative exit code is a worker killed by a signal (e.g. the kernel's OOM killer).
    return max(1 if (p.exitcode or 0) < 0 else (p.exitcode or 0) for p in processes)
