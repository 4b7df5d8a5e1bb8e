"""A spawned worker process's start-up: logging, threads, signal handlers, dying with its
parent; then the worker loop (``_worker.work``), or its node's ranks of each trial.

The parent (``_launch.start_workers``) imports this module for its entry point: the worker
loop and the training stack are imported in the child only, when it starts working.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import signal
import sys
from typing import NoReturn

import optuna

from hpsearch._optuna_warnings import ignore_our_experimental_warnings
from hpsearch.errors import HpsearchError, ObjectiveError, StorageError
from hpsearch.objectives import interrupt
from hpsearch.search.runtime._stop import install_worker_handlers
from hpsearch.search.runtime._worker_args import WorkerArgs, parse_rendezvous

log = logging.getLogger("hpsearch.worker")
# How long a stopping worker waits for its objective to reach a safe point before interrupting it.
STOP_BOUND_SECONDS = 30.0


def _follow(args: WorkerArgs, *, schema_checked: bool = False) -> None:
    """A worker on a node other than node 0 of a trial group: it runs its node's ranks of each
    trial and never talks to the database (the study only names the objective and timeouts)."""
    assert args.rendezvous is not None  # the command line checked it
    from hpsearch.search._study import load_study
    from hpsearch.search.runtime._ranks import follow_group
    from hpsearch.storage import close_storage

    loaded = load_study(args.study, args.url, schema_checked=schema_checked)
    close_storage(loaded.storage)
    follow_group(
        rendezvous=parse_rendezvous(args.rendezvous),
        node_rank=args.node_rank,
        local_devices=args.devices_per_trial,
        nodes=args.nodes_per_trial,
        objective=loaded.spec.objective,
        threads=args.threads,
        timeout=loaded.spec.resources.dist_timeout,
    )


def _configure_process(args: WorkerArgs) -> None:
    ignore_our_experimental_warnings()  # an objective's own stay the user's to see
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format=f"%(asctime)s [worker {args.index} pid %(process)d] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # Alembic, imported for Optuna's storage, logs each of its plugins at INFO on import.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # A worker imports torch only if its objective does (a user objective may never): the
    # thread count goes to the environment, which torch reads when it is first imported.
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(args.threads)
    if args.devices_per_trial * args.nodes_per_trial > 1:
        # torch's c10d logs a lost peer or store connection with dozens of lines of C++
        # frames; the worker says what happened in one line. Its errors still show.
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(args.threads)


def _die_with_parent(parent: int) -> None:
    """A worker whose parent is killed (kill -9, the OOM killer) gets SIGTERM and stops as on any
    stop signal, handing its trial back; else a supervisor restarting the parent would run
    twice the workers. Linux only (prctl PR_SET_PDEATHSIG); elsewhere workers outlive it."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


def _wait_for_gate(args: WorkerArgs, gate: multiprocessing.connection.Connection) -> bool:
    """Whether the parent lets this worker work (``_launch.Gate``); meanwhile, import and
    load what it can before the study is there (never a user's code: it is not checked yet)."""
    from hpsearch.search.runtime._preflight import warm_up_early
    from hpsearch.search.spec import StudySpec
    from hpsearch.storage import import_storage_modules

    import_storage_modules(args.url)
    if args.preload is not None:
        warm_up_early(StudySpec(args.preload))
    try:
        return bool(gate.recv())
    except EOFError:  # the parent refused the command, had no work, or died
        return False
    finally:
        gate.close()


def worker_main(
    args: WorkerArgs, gate: multiprocessing.connection.Connection | None = None
) -> None:
    """Entry point of a spawned worker process.

    Exits 0 when done or stopped by a signal (its trial handed back), 2 on a user error.
    """
    _configure_process(args)
    install_worker_handlers(bound=STOP_BOUND_SECONDS)
    _die_with_parent(args.parent)
    if gate is not None and not _wait_for_gate(args, gate):
        return
    # Let in through a gate, the parent has just checked the schema's version.
    schema_checked = gate is not None
    try:
        if args.node_rank > 0:
            _follow(args, schema_checked=schema_checked)
        else:
            # The worker loop and what it loads (the objective, maybe torch): in the child only.
            from hpsearch.search.runtime._worker import work

            work(args, schema_checked=schema_checked)
    except (HpsearchError, StorageError, ObjectiveError) as err:
        print(f"hpsearch worker {args.index}: {err}", file=sys.stderr)
        _exit(2)
    except (KeyboardInterrupt, interrupt.TrialInterrupted):
        if not interrupt.STOP.is_set():
            raise
    if interrupt.STOP.is_set():
        log.warning("stopped; the running trial went back to the queue")
    _exit(0)


def _exit(code: int) -> NoReturn:
    """End the worker without the interpreter's teardown: every trial is told and the storage
    closed by now. The teardown takes most of a second with torch and scikit-learn loaded, and
    destroying a torch.distributed store whose threads still run aborts the process (SIGABRT,
    "terminate called without an active exception") after a refusal's one line."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
