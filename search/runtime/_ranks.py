"""DDP trials: a worker that owns several devices runs each trial on a torch.distributed group.

The worker process is rank 0: it alone claims trials and talks to the database. At start it
spawns ``world_size - 1`` follower ranks that need no storage at all; for each trial rank 0
broadcasts the parameters, and every rank runs the objective with a DistributedTrial (report and
prune decisions go through rank 0). gloo on CPU, NCCL on CUDA. A collective that one rank never
joins fails after ``timeout`` seconds rather than hanging; after any failure that may have left
the ranks out of step, the group is torn down and a fresh one started for the next trial.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import os
import signal
import socket
from dataclasses import dataclass
from typing import Any

import optuna
import torch
import torch.distributed as dist

from hpsearch.errors import NonFiniteLoss
from hpsearch.objectives import load_objective
from hpsearch.objectives.context import current_context, trial_context
from hpsearch.objectives.distributed import DistributedTrial

log = logging.getLogger("hpsearch.ranks")

# Raised on every rank at the same point, so the group stays in step after them.
_LOCKSTEP_ERRORS = (optuna.TrialPruned, NonFiniteLoss)


@dataclass(frozen=True)
class GroupArgs:
    world_size: int
    objective: str  # canonical objective reference
    threads: int
    timeout: float  # seconds a collective may wait for a missing rank
    init_method: str
    backend: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _init(args: GroupArgs, rank: int) -> None:
    torch.set_num_threads(args.threads)
    if args.backend == "nccl":
        # NCCL collectives run on the current device: each rank must own its GPU before the
        # first broadcast, or every rank would use cuda:0.
        torch.cuda.set_device(rank)
    dist.init_process_group(
        args.backend,
        init_method=args.init_method,
        rank=rank,
        world_size=args.world_size,
        timeout=dt.timedelta(seconds=args.timeout),
    )


def _receive() -> Any:
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def follower_main(rank: int, args: GroupArgs) -> None:
    """A follower rank: run the objective for each trial rank 0 announces, until told to stop."""
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [rank {rank}] %(message)s")
    # Stop signals are rank 0's to handle (it hands the trial back, then ends this group);
    # a follower dying first would only turn the stop into a failed collective.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    _init(args, rank)
    objective = load_objective(args.objective)
    try:
        while True:
            message = _receive()
            if message is None:
                return
            params, context = message
            try:
                with trial_context(context):
                    objective(DistributedTrial(None), params)
            except Exception as err:  # rank 0 records the trial's outcome
                if not isinstance(err, _LOCKSTEP_ERRORS):
                    log.warning("trial failed on rank %d: %s: %s", rank, type(err).__name__, err)
    finally:
        dist.destroy_process_group()


class RankGroup:
    """Rank 0's handle on the group."""

    def __init__(self, *, world_size: int, objective: str, threads: int, timeout: float) -> None:
        backend = (
            "nccl"
            if torch.cuda.is_available() and torch.cuda.device_count() >= world_size
            else "gloo"
        )
        self.args = GroupArgs(
            world_size=world_size,
            objective=objective,
            threads=threads,
            timeout=timeout,
            init_method=f"tcp://127.0.0.1:{_free_port()}",
            backend=backend,
        )
        context = multiprocessing.get_context("spawn")
        self.followers = [
            context.Process(
                target=follower_main, args=(rank, self.args), name=f"hpsearch-rank-{rank}"
            )
            for rank in range(1, world_size)
        ]
        for process in self.followers:
            process.start()
        _init(self.args, 0)
        self.objective = load_objective(objective)
        self.in_step = True

    def run(self, trial: Any, params: dict[str, Any]) -> Any:
        """Run one trial on every rank; rank 0's result is the trial's."""
        # The worker's context (the checkpoint file, the study's metric) goes to every rank.
        box: list[Any] = [(params, current_context())]
        dist.broadcast_object_list(box, src=0)
        try:
            return self.objective(DistributedTrial(trial), params)
        except BaseException as err:  # an interrupt on rank 0 leaves the others mid-collective
            if not isinstance(err, _LOCKSTEP_ERRORS):
                self.in_step = False
            raise

    def close(self) -> None:
        if self.in_step:
            try:
                dist.broadcast_object_list([None], src=0)
            except Exception as err:  # the group is gone already; the followers are ended below
                log.warning("could not stop the ranks cleanly: %s", err)
        for process in self.followers:
            process.join(timeout=10 if self.in_step else 0)
            if process.is_alive():
                process.kill()  # followers ignore SIGTERM
                process.join()
        if dist.is_initialized():
            dist.destroy_process_group()


def describe_devices(world_size: int) -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if torch.cuda.is_available():
        return f"cuda x{world_size} (CUDA_VISIBLE_DEVICES={visible})"
    return f"cpu x{world_size}"
