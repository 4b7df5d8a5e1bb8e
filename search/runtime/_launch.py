"""Starting worker processes: spawned children that run ``_startup.worker_main``.

Torch-free: the parent that starts workers (``hpsearch run``, ``hpsearch.run``) does not pay
for the training stack, and a spawned child imports it only when it starts working.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from hpsearch.errors import HpsearchError
from hpsearch.search.runtime._devices import WorkerDevices, assign_devices
from hpsearch.search.runtime._startup import worker_main
from hpsearch.search.runtime._worker_args import WorkerArgs, parse_rendezvous


@dataclass(frozen=True)
class NodeGroup:
    """This node's place in trial groups that span ``nodes`` nodes (``nodes_per_trial``)."""

    nodes: int
    node_rank: int
    rendezvous: str  # HOST:PORT of node 0's store


NODE_RANK_VAR = "HPSEARCH_NODE_RANK"
RENDEZVOUS_VAR = "HPSEARCH_RENDEZVOUS"


def node_group(
    nodes: int, *, node_rank: int | None, rendezvous: str | None, workers: int | None
) -> NodeGroup | None:
    """This node's place in trial groups of ``nodes`` nodes (None for one node), from the
    command line or ``$HPSEARCH_NODE_RANK`` / ``$HPSEARCH_RENDEZVOUS`` (``MASTER_ADDR`` and
    ``MASTER_PORT`` as torchrun's launchers set them)."""
    if nodes == 1:
        return None
    if node_rank is None:
        value = os.environ.get(NODE_RANK_VAR, "")
        node_rank = int(value) if value.isdigit() else None
    if rendezvous is None:
        rendezvous = os.environ.get(RENDEZVOUS_VAR)
        if rendezvous is None and os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
            rendezvous = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    if node_rank is None or not 0 <= node_rank < nodes:
        raise HpsearchError(
            f"Trials span {nodes} nodes (nodes_per_trial): give this node's place with "
            f"--node-rank 0..{nodes - 1} (or ${NODE_RANK_VAR}); node 0 claims the trials."
        )
    if not rendezvous:
        raise HpsearchError(
            f"Trials span {nodes} nodes: give node 0's HOST:PORT with --rendezvous (or "
            f"${RENDEZVOUS_VAR}), the same on every node of the group."
        )
    parse_rendezvous(rendezvous)  # refused here, in one line, not in every worker
    if workers not in (None, 1):
        raise HpsearchError(
            f"--workers {workers} with trials that span nodes: each node runs one worker per "
            "trial group; start one `hpsearch worker` per group, each with its own --rendezvous."
        )
    return NodeGroup(nodes, node_rank, rendezvous)


class Gate:
    """Holds spawned workers before they touch the database: a fresh interpreter's imports
    (seconds with torch) overlap the parent's creating and checking of the study. ``open``
    lets them claim trials; ``close`` without it (the parent refused, or has no work) ends them
    before they did anything."""

    def __init__(self) -> None:
        self._senders: list[multiprocessing.connection.Connection] = []

    def receiver(self) -> multiprocessing.connection.Connection:
        receiver, sender = multiprocessing.get_context("spawn").Pipe(duplex=False)
        self._senders.append(sender)
        return receiver

    def open(self) -> None:
        for sender in self._senders:
            sender.send(True)
        self.close()

    def close(self) -> None:
        """A worker still waiting reads the end of its pipe as "no work": it exits 0."""
        for sender in self._senders:
            sender.close()
        self._senders.clear()


@contextlib.contextmanager
def _caller_not_rerun() -> Iterator[None]:
    """Spawn re-imports the parent's ``__main__`` in every child (to find pickled functions);
    a script or notebook that calls ``hpsearch.run`` without a main guard would run again, and
    start workers of its own. Our workers need nothing from ``__main__``, so the children are
    started while ``__main__`` is a bare module, which spawn does not re-import."""
    caller = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = caller


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def start_workers(
    study: str,
    url: str,
    *,
    workers: int = 1,
    timeout: float | None,
    log_trials: bool,
    quiet: bool = False,
    devices_per_trial: int = 1,
    assignments: Sequence[WorkerDevices] | None = None,
    group: NodeGroup | None = None,
    gate: Gate | None = None,
    preload: dict[str, Any] | None = None,
) -> list[multiprocessing.process.BaseProcess]:
    """Spawn (never fork: CUDA and gRPC do not survive a fork) one process per worker.

    ``assignments`` (from hpsearch.search.runtime._devices) gives each worker its GPUs; without it, ``workers``
    CPU workers with ``devices_per_trial`` ranks per trial share the cores. With a ``gate``,
    the workers wait for it to open before they load the study; meanwhile they import what
    opening the storage needs and warm up the study file ``preload``'s built-in objective.
    """
    if assignments is None:
        assignments = assign_devices(
            gpus=[],
            visible_gpus=0,
            gpus_per_trial=devices_per_trial,
            workers=workers,
            cores=available_cores(),
        )
    context = multiprocessing.get_context("spawn")
    processes: list[multiprocessing.process.BaseProcess] = []
    for devices in assignments:
        args = WorkerArgs(
            study=study,
            url=url,
            index=devices.index,
            threads=devices.threads,
            timeout=timeout,
            parent=os.getpid(),
            log_trials=log_trials,
            quiet=quiet,
            devices_per_trial=devices.ranks,
            devices=_visible(devices) or "cpu",
            preload=preload,
        )
        if group is not None:
            args = dataclasses.replace(
                args,
                nodes_per_trial=group.nodes,
                node_rank=group.node_rank,
                rendezvous=group.rendezvous,
            )
        receiver = None if gate is None else gate.receiver()
        process = context.Process(
            target=worker_main,
            args=(args,) if receiver is None else (args, receiver),
            name=f"hpsearch-worker-{devices.index}",
        )
        # A spawned child reads CUDA_VISIBLE_DEVICES from the environment it starts with.
        with _environment("CUDA_VISIBLE_DEVICES", _visible(devices)), _caller_not_rerun():
            process.start()
        if receiver is not None:
            receiver.close()  # the child has its own copy
        processes.append(process)
    return processes


def _visible(devices: WorkerDevices) -> str | None:
    """The worker's CUDA_VISIBLE_DEVICES. GPU ids are indices as this process sees them: under
    a CUDA_VISIBLE_DEVICES of its own (a scheduler's allocation), they map through it."""
    if not devices.gpus:
        return None
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not inherited:
        return devices.cuda_visible_devices
    allocation = [part.strip() for part in inherited.split(",") if part.strip()]
    return ",".join(allocation[gpu] for gpu in devices.gpus if gpu < len(allocation))


@contextlib.contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    if value is None:
        yield
        return
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous
