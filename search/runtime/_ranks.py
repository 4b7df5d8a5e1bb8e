"""Trial groups: a worker that owns several devices, or several nodes' workers, run each trial
on one torch.distributed group.

The group's rank 0 is the worker process of node 0: it alone claims trials and talks to the
database. It spawns its node's other ranks; on the other nodes of a group (``nodes_per_trial``)
the worker process runs the ranks of its node and never touches the study. For each trial rank
0 broadcasts the parameters and the engine's context, and every rank runs the objective with a
DistributedTrial (report and prune decisions go through rank 0). gloo on CPU, NCCL on CUDA.

The ranks meet through torch's c10d TCPStore, hosted by rank 0 at the rendezvous address (as
torchrun's c10d rendezvous does). A generation counter in the store names each incarnation of
the group: when a rank is lost (a node killed, a collective timed out after ``timeout``
seconds), rank 0 hands the trial back to the queue, starts the next generation and waits for
every rank to join it; the surviving nodes rejoin on their own, a restarted one joins when it
comes back, and the retried trial resumes from its checkpoint.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
import torch.distributed as dist

from hpsearch.errors import GroupLost, HpsearchError, NonFiniteLoss
from hpsearch.objectives import interrupt, load_objective
from hpsearch.objectives.context import current_context, trial_context
from hpsearch.objectives.distributed import DistributedTrial

log = logging.getLogger("hpsearch.ranks")

# Raised on every rank at the same point, so the group stays in step after them.
_LOCKSTEP_ERRORS = (optuna.TrialPruned, NonFiniteLoss)
GENERATION = "hpsearch/generation"
# What gloo and NCCL say when a peer is gone or a collective timed out.
_LOST = ("connection closed by peer", "connection reset", "timed out", "broken pipe", "nccl")


@dataclass(frozen=True)
class GroupArgs:
    world_size: int
    objective: str  # canonical objective reference
    threads: int
    timeout: float  # seconds a collective (or the group's forming) may wait for a missing rank
    host: str  # the rendezvous: rank 0's TCPStore
    port: int
    generation: int
    backend: str
    local_devices: int  # ranks per node: a rank's GPU is its index within the node


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _backend(local_devices: int) -> str:
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= local_devices
    return "nccl" if cuda else "gloo"


def _store(host: str, port: int, *, leader: bool, timeout: float) -> Any:
    """torch's c10d TCPStore (the store torchrun's c10d rendezvous uses): rank 0 hosts it."""
    from torch.distributed import TCPStore  # type: ignore[attr-defined]

    return TCPStore(
        host,
        port,
        is_master=leader,
        wait_for_workers=False,
        timeout=dt.timedelta(seconds=timeout),
        use_libuv=True,
    )


def _init(args: GroupArgs, rank: int, store: Any = None) -> None:
    from torch.distributed import PrefixStore  # type: ignore[attr-defined]

    torch.set_num_threads(args.threads)
    if args.backend == "nccl":
        # NCCL collectives run on the current device: each rank must own its GPU before the
        # first broadcast, or every rank would use cuda:0.
        torch.cuda.set_device(rank % args.local_devices)
    if store is None:
        store = _store(args.host, args.port, leader=False, timeout=args.timeout)
    dist.init_process_group(
        args.backend,
        store=PrefixStore(f"hpsearch/{args.generation}/", store),
        rank=rank,
        world_size=args.world_size,
        timeout=dt.timedelta(seconds=args.timeout),
    )


def _receive() -> Any:
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _serve(rank: int, objective_ref: str) -> None:
    """Run the objective for each trial rank 0 announces, until it says the study is done."""
    objective = load_objective(objective_ref)
    while True:
        message = _receive()
        if message is None:
            return
        params, context = message
        try:
            with trial_context(context):
                objective(DistributedTrial(None), params)
        except Exception as err:  # rank 0 records the trial's outcome
            if _is_lost(err):
                raise
            if not isinstance(err, _LOCKSTEP_ERRORS):
                log.warning("trial failed on rank %d: %s: %s", rank, type(err).__name__, err)


def follower_main(rank: int, args: GroupArgs) -> None:
    """A rank other than 0, in a process of its own."""
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [rank {rank}] %(message)s")
    # Stop signals are the worker's to handle (rank 0 hands the trial back, then ends this
    # group); a rank dying first would only turn the stop into a failed collective.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    _init(args, rank)
    try:
        _serve(rank, args.objective)
    finally:
        dist.destroy_process_group()


def _start(args: GroupArgs, ranks: Iterable[int]) -> list[multiprocessing.process.BaseProcess]:
    context = multiprocessing.get_context("spawn")
    processes: list[multiprocessing.process.BaseProcess] = [
        context.Process(target=follower_main, args=(rank, args), name=f"hpsearch-rank-{rank}")
        for rank in ranks
    ]
    for process in processes:
        process.start()
    return processes


def _stop(processes: list[multiprocessing.process.BaseProcess], wait: float) -> None:
    for process in processes:
        process.join(timeout=wait)
        if process.is_alive():
            process.kill()  # followers ignore SIGTERM
            process.join()


def _is_lost(err: BaseException) -> bool:
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(err, dist_error):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in _LOST)


@dataclass(frozen=True)
class Rendezvous:
    """Where a trial group's ranks meet: the TCPStore rank 0 hosts for as long as its worker
    runs, so that every generation of the group, and every node, finds the same one."""

    host: str
    port: int
    store: Any

    @classmethod
    def host_store(cls, address: tuple[str, int] | None, timeout: float) -> Rendezvous:
        """Rank 0's store: at ``address`` (a group across nodes), else on a free local port."""
        host, port = address or ("127.0.0.1", free_port())
        try:
            store = _store(host, port, leader=True, timeout=timeout)
        except Exception as err:
            raise HpsearchError(
                f"cannot host the trial group's rendezvous on port {port} ({err}); the port "
                "may be in use: pick another in --rendezvous."
            ) from None
        return cls(host, port, store)


class RankGroup:
    """Rank 0's handle on the group: forms it (one generation) and runs trials on it."""

    def __init__(
        self,
        *,
        local_devices: int,
        nodes: int = 1,
        objective: str,
        threads: int,
        timeout: float,
        rendezvous: Rendezvous,
    ) -> None:
        host, port, self.store = rendezvous.host, rendezvous.port, rendezvous.store
        self.args = GroupArgs(
            world_size=local_devices * nodes,
            objective=objective,
            threads=threads,
            timeout=timeout,
            host=host,
            port=port,
            generation=int(self.store.add(GENERATION, 1)),
            backend=_backend(local_devices),
            local_devices=local_devices,
        )
        self.followers = _start(self.args, range(1, local_devices))
        if nodes > 1:
            log.info(
                "trial group generation %d: waiting for %d node(s) at %s:%d",
                self.args.generation,
                nodes - 1,
                host,
                port,
            )
        try:
            _init(self.args, 0, self.store)
        except Exception as err:
            _stop(self.followers, 0)
            raise HpsearchError(
                f"the trial group of {self.args.world_size} ranks did not form within "
                f"{timeout:.0f}s ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                "check that every node of the group runs `hpsearch worker` with the same "
                "--rendezvous, or raise [resources] dist_timeout."
            ) from None
        self.objective = load_objective(objective)
        self.in_step = True

    def run(self, trial: Any, params: dict[str, Any]) -> Any:
        """Run one trial on every rank; rank 0's result is the trial's."""
        try:
            # The worker's context (the checkpoint file, the study's metric) goes to every rank.
            dist.broadcast_object_list([(params, current_context())], src=0)
            return self.objective(DistributedTrial(trial), params)
        except BaseException as err:  # an interrupt on rank 0 leaves the others mid-collective
            if not isinstance(err, _LOCKSTEP_ERRORS):
                self.in_step = False
            if _is_lost(err) or any(not p.is_alive() for p in self.followers):
                raise GroupLost(f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from err
            raise

    def close(self) -> None:
        if self.in_step:
            try:
                dist.broadcast_object_list([None], src=0)
            except Exception as err:  # the group is gone already; the followers are ended below
                log.warning("could not stop the ranks cleanly: %s", err)
        _stop(self.followers, 10 if self.in_step else 0)
        if dist.is_initialized():
            dist.destroy_process_group()


def follow_group(
    *,
    rendezvous: tuple[str, int],
    node_rank: int,
    local_devices: int,
    nodes: int,
    objective: str,
    threads: int,
    timeout: float,
) -> None:
    """A node other than node 0 of a trial group: run its ranks in each generation of the
    group until rank 0 says the study is done (or this worker is stopped).

    Returns normally when the study is done; raises HpsearchError when rank 0 cannot be
    reached for ``timeout`` seconds.
    """
    host, port = rendezvous
    store = _connect(host, port, timeout)
    joined = 0
    first = node_rank * local_devices
    while not interrupt.STOP.is_set():
        generation = int(store.add(GENERATION, 0))
        if generation <= joined:  # rank 0 has not started the next generation yet
            time.sleep(0.5)
            continue
        joined = generation
        args = GroupArgs(
            world_size=local_devices * nodes,
            objective=objective,
            threads=threads,
            timeout=timeout,
            host=host,
            port=port,
            generation=generation,
            backend=_backend(local_devices),
            local_devices=local_devices,
        )
        log.info(
            "joining trial group generation %d as ranks %d-%d",
            generation,
            first,
            first + local_devices - 1,
        )
        followers = _start(args, range(first + 1, first + local_devices))
        done = False
        try:
            _init(args, first, store)
            _serve(first, objective)
            done = True
        except Exception as err:
            if not _is_lost(err):
                raise
            log.warning("trial group generation %d lost a rank (%s); rejoining", generation, err)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
            _stop(followers, 10 if done else 0)
        if done:
            return


def _connect(host: str, port: int, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _store(host, port, leader=False, timeout=timeout)
        except Exception as err:  # rank 0 not up yet
            if time.monotonic() >= deadline or interrupt.STOP.is_set():
                raise HpsearchError(
                    f"cannot reach the trial group's rank 0 at {host}:{port} within "
                    f"{timeout:.0f}s ({err}); start node 0's worker with the same --rendezvous."
                ) from None
            time.sleep(1.0)


def describe_devices(world_size: int) -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if torch.cuda.is_available():
        return f"cuda x{world_size} (CUDA_VISIBLE_DEVICES={visible})"
    return f"cpu x{world_size}"
