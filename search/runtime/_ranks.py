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
import errno
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
import torch.distributed as dist

from hpsearch.errors import GroupLost, HpsearchError, NonFiniteLoss
from hpsearch.objectives import interrupt, load_objective
from hpsearch.objectives.context import current_context, trial_context
from hpsearch.objectives.distributed import DistributedTrial, end_process_group

log = logging.getLogger("hpsearch.ranks")

# Raised on every rank at the same point, so the group stays in step after them.
_LOCKSTEP_ERRORS = (optuna.TrialPruned, NonFiniteLoss)
GENERATION = "hpsearch/generation"
# Who hosts the store: a restarted node 0 hosts a new one, whose generations count from 1 again.
LEADER = "hpsearch/leader"
# A follower node's place in the group (its --node-rank), held while its worker beats.
_NODE = "hpsearch/node/{rank}"
_BEAT_EVERY = 0.5
# A holder whose beat has not moved for this long is gone: its place is free again.
_HOLDER_SILENT = 5.0
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
    try:
        dist.init_process_group(
            args.backend,
            store=PrefixStore(f"hpsearch/{args.generation}/", store),
            rank=rank,
            world_size=args.world_size,
            timeout=dt.timedelta(seconds=args.timeout),
        )
    except BaseException:
        # The group's store keys carry torch's count of groups made in this process, which
        # destroy_process_group resets but a failed init does not: left counted, this rank's
        # next generation would wait on keys no other rank writes, and the group never forms.
        dist.distributed_c10d._world.group_count = 0
        raise


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
        except interrupt.TrialInterrupted:
            # A stop shared by every rank (hpsearch.report, safe_point): rank 0's worker hands
            # the trial back and ends the group.
            return
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
        end_process_group()


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


@dataclass
class Rendezvous:
    """Where a trial group's ranks meet: the TCPStore rank 0 hosts for as long as its worker
    runs, so that every generation of the group, and every node, finds the same one."""

    host: str
    port: int
    store: Any
    # Once a group has formed, a lost node is waited for (it rejoins when it comes back)
    # instead of ending the worker as a group that never forms does.
    formed: bool = field(default=False)

    @classmethod
    def host_store(cls, address: tuple[str, int] | None, timeout: float) -> Rendezvous:
        """Rank 0's store: at ``address`` (a group across nodes), else on a free local port."""
        host, port = address or ("127.0.0.1", free_port())
        if address is not None:
            _check_listenable(host, port)
        try:
            store = _store(host, port, leader=True, timeout=timeout)
        except Exception as err:
            raise HpsearchError(
                f"cannot host the trial group's rendezvous at {host}:{port} "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); pick another "
                "free port in --rendezvous."
            ) from None
        store.set(LEADER, f"{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}")
        return cls(host, port, store)


def _check_listenable(host: str, port: int) -> None:
    """Node 0 hosts the rendezvous, so its address must be one of this machine's and its port
    free: say which, in one line, before torch's store tries and reports neither."""
    fix = (
        "node 0's worker hosts the rendezvous: give every node of the group the address of "
        "the machine that runs --node-rank 0, and a free port"
    )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise HpsearchError(
            f"--rendezvous {host}:{port}: cannot resolve {host!r} ({err}); {fix}."
        ) from None
    addresses = sorted({str(info[4][0]) for info in infos})
    for family, _, _, _, sockaddr in infos:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as err:
                if err.errno == errno.EADDRNOTAVAIL:
                    continue
                if err.errno == errno.EADDRINUSE:
                    raise HpsearchError(
                        f"--rendezvous {host}:{port}: port {port} is in use on this machine; "
                        "pick a free port (the same on every node of the group)."
                    ) from None
                raise HpsearchError(
                    f"--rendezvous {host}:{port}: cannot listen there ({err}); {fix}."
                ) from None
            return
    raise HpsearchError(
        f"--rendezvous {host}:{port}: {host} ({', '.join(addresses)}) is not an address of "
        f"this machine, which runs --node-rank 0; {fix}."
    )


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
        self.store = rendezvous.store
        while True:
            self.args = GroupArgs(
                world_size=local_devices * nodes,
                objective=objective,
                threads=threads,
                timeout=timeout,
                host=rendezvous.host,
                port=rendezvous.port,
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
                    rendezvous.host,
                    rendezvous.port,
                )
            try:
                _init(self.args, 0, self.store)
                break
            except Exception as err:
                _stop(self.followers, 0)
                reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                if interrupt.STOP.is_set():
                    raise interrupt.TrialInterrupted("stopped while the group formed") from None
                if not (rendezvous.formed and nodes > 1):  # a node's own ranks never come back
                    raise HpsearchError(
                        f"the trial group of {self.args.world_size} ranks did not form within "
                        f"{timeout:.0f}s ({reason}); check that every node of the group runs "
                        "`hpsearch worker` with the same --rendezvous, or raise [resources] "
                        "dist_timeout."
                    ) from None
                # A node lost mid-study comes back when it is restarted (or resumed): wait for
                # it, in a new generation each dist_timeout, as long as this worker runs.
                log.warning(
                    "trial group generation %d did not form within %.0fs (%s); still waiting "
                    "for the missing node(s)",
                    self.args.generation,
                    timeout,
                    reason,
                )
        rendezvous.formed = True
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
        end_process_group()


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

    Returns normally when the study is done or this worker is stopped; raises HpsearchError
    when rank 0 cannot be reached for ``timeout`` seconds at the start, or when another live
    worker holds this node rank. A node 0 lost later is waited for: a restarted one hosts a
    new store, and this node joins its groups.
    """
    host, port = rendezvous
    store: Any = _connect(host, port, timeout)
    if store is None:  # stopped before node 0 was there
        return
    place: _Place | None = None
    joined: tuple[str, int] = ("", 0)  # (node 0's incarnation, generation) last joined
    first = node_rank * local_devices
    try:
        while not interrupt.STOP.is_set():
            try:
                if place is None:
                    place = _Place.take(store, host, port, node_rank, timeout)
                leader = bytes(store.get(LEADER)).decode()
                generation = int(store.add(GENERATION, 0))
            except Exception as err:
                if not _is_lost(err):
                    raise
                log.warning(
                    "lost the trial group's node 0 at %s:%d (%s); waiting for it to come back",
                    host,
                    port,
                    str(err).splitlines()[0][:200],
                )
                if place is not None:
                    place.release()
                    place = None
                store = _connect(host, port, timeout, patient=True)
                if store is None:  # stopped while waiting
                    return
                continue
            if leader == joined[0] and generation <= joined[1]:
                time.sleep(0.5)  # rank 0 has not started the next generation yet
                continue
            joined = (leader, generation)
            if _run_generation(
                GroupArgs(
                    world_size=local_devices * nodes,
                    objective=objective,
                    threads=threads,
                    timeout=timeout,
                    host=host,
                    port=port,
                    generation=generation,
                    backend=_backend(local_devices),
                    local_devices=local_devices,
                ),
                first,
                store,
            ):
                return
    finally:
        if place is not None:
            place.release()


def _run_generation(args: GroupArgs, first: int, store: Any) -> bool:
    """This node's ranks in one generation of the group: True when rank 0 ended the study,
    False when the generation lost a rank (the caller joins the next one)."""
    log.info(
        "joining trial group generation %d as ranks %d-%d",
        args.generation,
        first,
        first + args.local_devices - 1,
    )
    followers = _start(args, range(first + 1, first + args.local_devices))
    done = False
    try:
        _init(args, first, store)
        _serve(first, args.objective)
        done = True
    except Exception as err:
        if not _is_lost(err):
            raise
        log.warning(
            "trial group generation %d lost a rank (%s); rejoining",
            args.generation,
            str(err).splitlines()[0][:200],
        )
    finally:
        end_process_group()
        _stop(followers, 10 if done else 0)
    return done


class _Place:
    """This node's rank in the group, held in node 0's store while this worker beats (on a
    connection of its own), so that a second worker given the same --node-rank is refused at
    once instead of breaking the group's collectives, and a restarted node takes the place of
    its dead predecessor."""

    def __init__(self, beats: Any, key: str, holder: str) -> None:
        self.key, self.holder = key, holder
        self._beats = beats
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    @classmethod
    def take(cls, store: Any, host: str, port: int, node_rank: int, timeout: float) -> _Place:
        key = _NODE.format(rank=node_rank)
        holder = f"{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
        place = cls(_store(host, port, leader=False, timeout=timeout), key, holder)
        try:
            while True:
                current = bytes(store.compare_set(key, "", holder)).decode()
                if current == holder:
                    return place
                if _beating(store, f"{key}/beat/{current}"):
                    raise HpsearchError(
                        f"node rank {node_rank} of the trial group at {host}:{port} is held by "
                        f"a running worker ({current.rsplit(' ', 1)[0]}); give each node of "
                        f"the group its own --node-rank (or $HPSEARCH_NODE_RANK)."
                    )
                store.compare_set(key, current, holder)  # its holder is gone: take its place
        except BaseException:
            place.release()
            raise

    def _beat(self) -> None:
        beat = f"{self.key}/beat/{self.holder}"
        while True:
            try:
                self._beats.add(beat, 1)
            except Exception:  # node 0 is gone; the follower's loop takes a new place
                return
            if self._stop.wait(_BEAT_EVERY):
                return

    def release(self) -> None:
        self._stop.set()


def _beating(store: Any, beat: str) -> bool:
    """Whether a place's holder still beats: its counter moves within _HOLDER_SILENT."""
    first = int(store.add(beat, 0))
    deadline = time.monotonic() + _HOLDER_SILENT
    while time.monotonic() < deadline:
        time.sleep(_BEAT_EVERY / 2)
        if int(store.add(beat, 0)) != first:
            return True
    return False


def _reachable(host: str, port: int) -> bool:
    """Whether something listens at host:port: asked with a plain socket, because torch's
    store logs every failed attempt with dozens of lines of C++ frames."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _connect(host: str, port: int, timeout: float, *, patient: bool = False) -> Any:
    """A connection to rank 0's store. At the start node 0 must be there within ``timeout``
    (else one line says so); ``patient``: node 0 was lost and is waited for until it comes
    back (None when this worker is stopped meanwhile)."""
    started = last_said = time.monotonic()
    while not interrupt.STOP.is_set():
        if _reachable(host, port):
            try:
                return _store(host, port, leader=False, timeout=timeout)
            except Exception as err:  # node 0 went away again in between: try on
                log.debug("store at %s:%d: %s", host, port, err)
        now = time.monotonic()
        if not patient and now - started >= timeout:
            raise HpsearchError(
                f"cannot reach the trial group's node 0 at {host}:{port} within "
                f"{timeout:.0f}s ([resources] dist_timeout); start node 0's worker "
                "(--node-rank 0) with the same --rendezvous, and check that this node can "
                f"reach {host} on port {port}."
            )
        if patient and now - last_said >= timeout:
            log.warning("still waiting for the trial group's node 0 at %s:%d", host, port)
            last_said = now
        time.sleep(1.0)
    return None


def describe_devices(world_size: int) -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if torch.cuda.is_available():
        return f"cuda x{world_size} (CUDA_VISIBLE_DEVICES={visible})"
    return f"cpu x{world_size}"
