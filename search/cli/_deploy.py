"""The deployment commands of the ``hpsearch`` CLI: ``proxy``, ``db check`` and ``db upgrade``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from types import FrameType

from hpsearch.errors import HpsearchError
from hpsearch.search.cli._argtypes import host, port, positive_int
from hpsearch.storage import StorageError, is_proxy_url, redact_url, resolve_storage_url
from hpsearch.storage._doctor import check_storage, failures, upgrade_schema
from hpsearch.storage._proxy import DEFAULT_PROXY_THREADS
from hpsearch.storage._url import DEFAULT_PROXY_PORT


def _stop_on_signals() -> threading.Event:
    """`docker stop` and Kubernetes send SIGTERM, a terminal SIGINT: each sets the event the
    proxy's loop waits on, so it stops the server and closes its connections in order."""
    stop = threading.Event()

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)
    return stop


def cmd_proxy(args: argparse.Namespace) -> int:
    from hpsearch.search.runtime._proxy import serve_proxy  # grpc: only this command needs it

    url = resolve_storage_url(args.storage)
    if is_proxy_url(url):
        raise StorageError(
            f"`hpsearch proxy --storage {redact_url(url)}` would proxy a proxy; pass the database URL "
            "(postgresql+psycopg://... or mysql+pymysql://...)."
        )
    stop = _stop_on_signals()

    def announce() -> None:  # once the database answered and the port is bound, not before
        print(
            f"hpsearch proxy on grpc://{args.host}:{args.port} for {redact_url(url)} "
            f"({args.threads} threads); workers: --storage grpc://THIS_HOST:{args.port}",
            file=sys.stderr,
            flush=True,
        )

    serve_proxy(
        url, host=args.host, port=args.port, threads=args.threads, stop=stop, on_serving=announce
    )
    print("hpsearch proxy stopped", file=sys.stderr, flush=True)
    # The gRPC server's request threads are not daemons: one still blocked in a database call
    # would keep the process alive past `docker stop`'s patience, though everything worth
    # closing is closed by now. Leave without waiting for them.
    os._exit(0)


def cmd_db_check(args: argparse.Namespace) -> int:
    url = resolve_storage_url(args.storage)
    checks = check_storage(url, workers=args.workers, nodes=args.nodes)
    if args.json:
        document = {
            "storage": redact_url(url),
            "workers": args.workers,
            "nodes": args.nodes,
            "ok": not failures(checks),
            "checks": [c.as_dict() for c in checks],
        }
        print(json.dumps(document, indent=2))
    else:
        for check in checks:
            print(check.line())
    failed = failures(checks)
    if failed:
        raise HpsearchError(f"db check of {redact_url(url)} failed: {failed[0].message}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    url = resolve_storage_url(args.storage)
    before, after = upgrade_schema(url)
    if before == after:
        print(f"schema of {redact_url(url)} is already current ({after}); nothing to do")
    else:
        print(f"upgraded the schema of {redact_url(url)} from {before} to {after}")
    return 0


def add_deploy_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    storage_help: str,
    *,
    parents: list[argparse.ArgumentParser],
) -> None:
    """Register ``proxy`` and ``db`` (``check``, ``upgrade``) on the CLI's subcommands."""
    proxy_help = "serve Optuna's gRPC storage proxy: workers use --storage grpc://HOST:PORT"
    proxy = commands.add_parser(
        "proxy",
        help=proxy_help,
        description=proxy_help,
        epilog="example: hpsearch proxy --host 0.0.0.0 --port 13000 "
        "--storage postgresql+psycopg://USER:PW@HOST/DB",
        parents=parents,
    )
    proxy.add_argument(
        "--storage", metavar="URL", help=storage_help + " (the database the proxy serves)"
    )
    proxy.add_argument(
        "--host",
        type=host,
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: every interface)",
    )
    proxy.add_argument(
        "--port",
        type=port,
        default=DEFAULT_PROXY_PORT,
        metavar="NUMBER",
        help=f"TCP port the workers connect to, 1-65535 (default {DEFAULT_PROXY_PORT})",
    )
    proxy.add_argument(
        "--threads",
        type=positive_int,
        default=DEFAULT_PROXY_THREADS,
        metavar="N",
        help=f"serving threads, one database connection each (default {DEFAULT_PROXY_THREADS})",
    )
    proxy.set_defaults(handler=cmd_proxy)

    db_help = "check the storage for a deployment, or upgrade its schema"
    db = commands.add_parser(
        "db",
        help=db_help,
        description=db_help,
        epilog="example: hpsearch db check --workers 16 --storage URL",
        parents=parents,
    )
    actions = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    check_help = "server, schema, connections for N workers, SQLite pitfalls, proxy advice"
    check = actions.add_parser(
        "check",
        help=check_help,
        description=check_help,
        epilog="example: hpsearch db check --workers 16 --nodes 4 "
        "--storage postgresql+psycopg://USER:PW@HOST/DB",
        parents=parents,
    )
    check.add_argument("--storage", metavar="URL", help=storage_help)
    check.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="worker processes in all (default 1)",
    )
    check.add_argument(
        "--nodes",
        type=positive_int,
        default=1,
        metavar="N",
        help="machines they run on (default 1)",
    )
    check.add_argument("--json", action="store_true", help="print the checks as JSON")
    check.set_defaults(handler=cmd_db_check)
    upgrade_help = "upgrade Optuna's schema to this optuna version (back up the database first)"
    upgrade = actions.add_parser(
        "upgrade",
        help=upgrade_help,
        description=upgrade_help,
        epilog="example: hpsearch db upgrade --storage postgresql+psycopg://USER:PW@HOST/DB",
        parents=parents,
    )
    upgrade.add_argument("--storage", metavar="URL", help=storage_help)
    upgrade.set_defaults(handler=cmd_db_upgrade)
