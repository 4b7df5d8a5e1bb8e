"""What a spawned worker is told: its study, its place among the node's workers and trial
groups. A leaf module: the parent's launcher, the child's start-up and the worker loop all
read it, and none of them imports another through it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpsearch.errors import HpsearchError


@dataclass(frozen=True)
class WorkerArgs:
    study: str
    url: str
    index: int  # 0..workers-1 on this node
    threads: int  # torch CPU threads for this process
    timeout: float | None  # seconds, from when the worker is ready, after which no trial starts
    parent: int  # the pid of the process that started the worker: the worker dies with it
    log_trials: bool  # one line per finished trial (off when a live display runs)
    quiet: bool = False  # only warnings and errors in the log (`hpsearch -q`)
    devices_per_trial: int = 1  # > 1: each trial runs as a DDP group of this many ranks
    devices: str = "cpu"  # recorded on each trial: the CUDA_VISIBLE_DEVICES of this worker
    nodes_per_trial: int = 1  # > 1: the workers of this many nodes form each trial's group
    node_rank: int = 0  # this node's place in the group: node 0 claims the trials
    rendezvous: str | None = None  # HOST:PORT of node 0's store (nodes_per_trial > 1)
    # The study file's spec data: what of a built-in objective's warm-up the worker may do
    # while its gate is shut (_preflight.warm_up_early).
    preload: dict[str, Any] | None = None


def parse_rendezvous(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise HpsearchError(
            f"--rendezvous {text!r} is not HOST:PORT; give node 0's address and a free port, "
            "e.g. --rendezvous node0.cluster:29400 (the same on every node of the group)."
        )
    return host, int(port)
