"""The ``hpsearch`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence

import optuna

from objectives import ObjectiveError
from search._errors import HpsearchError
from search._export import FORMATS, export_document, render, write_atomically
from search._progress import Progress, progress_line
from search._spec import load_spec_file
from search._status import format_status, status_document
from search._study import create_study, load_study, study_summaries
from search._worker import start_workers
from storage import DEFAULT_STORAGE_URL, ENV_VAR, StorageError, redact_url, resolve_storage_url


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {value}")
    return value


def _run_local_workers(
    study_name: str,
    url: str,
    *,
    workers: int,
    timeout: float | None,
    include_host: bool,
    devices_per_trial: int,
) -> int:
    """Start the workers, show progress until they end, return the worst exit code."""
    loaded = load_study(study_name, url)
    live = sys.stderr.isatty()
    progress = Progress(sys.stderr, live=live, every=1.0 if live else 30.0)
    started = time.monotonic()
    processes = start_workers(
        study_name,
        url,
        workers=workers,
        timeout=timeout,
        include_host=include_host,
        log_trials=not live,
        devices_per_trial=devices_per_trial,
    )
    try:
        while any(p.is_alive() for p in processes):
            progress.show(progress_line(loaded.study, loaded.spec, started))
            time.sleep(0.5)
    except KeyboardInterrupt:
        # The workers got the same Ctrl-C: each hands its trial back to the queue and exits.
        for process in processes:
            process.join(timeout=60)
        progress.close()
        print("hpsearch: interrupted; running trials were put back in the queue.", file=sys.stderr)
        return 130
    finally:
        for process in processes:
            process.join()
    progress.show(progress_line(loaded.study, loaded.spec, started), force=True)
    progress.close()
    codes = [p.exitcode or 0 for p in processes]
    return max(codes)


def _print_summary(study_name: str, url: str) -> None:
    loaded = load_study(study_name, url)
    print(format_status(status_document(loaded.study, loaded.spec)))
    try:
        document = export_document(loaded.study, loaded.spec)
    except HpsearchError as err:
        print(f"\n{err}")
        return
    print("\nbest configuration (`hpsearch export` writes it to a file):")
    print(render(document, "yaml"), end="")


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec_file(args.study_file)
    url = resolve_storage_url(args.storage)
    result = create_study(spec, url)
    verb = "created" if result.created else "resuming"
    print(f"{verb} study {spec.name!r} in {redact_url(url)}", file=sys.stderr)
    workers = args.workers or spec.resources["workers"]
    timeout = args.timeout if args.timeout is not None else spec.timeout
    code = _run_local_workers(
        spec.name,
        url,
        workers=workers,
        timeout=timeout,
        include_host=False,
        devices_per_trial=args.devices_per_trial or spec.resources["devices_per_trial"],
    )
    if code in (0, 130):
        _print_summary(spec.name, url)
    return code


def cmd_create(args: argparse.Namespace) -> int:
    spec = load_spec_file(args.study_file)
    url = resolve_storage_url(args.storage)
    result = create_study(spec, url)
    if result.created:
        print(f"created study {spec.name!r} in {redact_url(url)} ({spec.n_trials} trials budgeted)")
    else:
        print(
            f"study {spec.name!r} already exists in {redact_url(url)} with the same spec; nothing to do"
        )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    url = resolve_storage_url(args.storage)
    loaded = load_study(args.study, url)  # fail fast, in one line, before spawning anything
    timeout = args.timeout if args.timeout is not None else loaded.spec.timeout
    return _run_local_workers(
        args.study,
        url,
        workers=args.workers,
        timeout=timeout,
        include_host=True,
        devices_per_trial=args.devices_per_trial or loaded.spec.resources["devices_per_trial"],
    )


def cmd_status(args: argparse.Namespace) -> int:
    import json

    url = resolve_storage_url(args.storage)
    while True:
        loaded = load_study(args.study, url)
        document = status_document(loaded.study, loaded.spec)
        text = json.dumps(document, indent=2, default=str) if args.json else format_status(document)
        if args.watch and sys.stdout.isatty():
            sys.stdout.write("\x1b[2J\x1b[H")
        print(text, flush=True)
        if not args.watch:
            return 0
        time.sleep(args.interval)


def cmd_export(args: argparse.Namespace) -> int:
    url = resolve_storage_url(args.storage)
    loaded = load_study(args.study, url)
    fmt = args.format or _format_from_path(args.output)
    text = render(export_document(loaded.study, loaded.spec), fmt)
    if args.output:
        write_atomically(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _format_from_path(path: str | None) -> str:
    if path:
        extension = os.path.splitext(path)[1].lower().lstrip(".")
        if extension == "yml":
            return "yaml"
        if extension in FORMATS:
            return extension
    return "yaml"


def cmd_studies(args: argparse.Namespace) -> int:
    url = resolve_storage_url(args.storage)
    rows = study_summaries(url)
    if not rows:
        print(f"no studies in {redact_url(url)}")
        return 0
    header = f"{'study':<28} {'objective':<20} {'done':>9} {'pruned':>6} {'failed':>6} {'running':>7}  best"
    print(header)
    for row in rows:
        done = f"{row['complete'] + row['pruned'] + row['failed']}/{row['budget']}"
        best = "-" if row["best_value"] is None else f"{row['best_value']:.6g}"
        print(
            f"{row['study']:<28} {row['objective'] or '-'!s:<20} {done:>9} {row['pruned']:>6} "
            f"{row['failed']:>6} {row['running']:>7}  {best}"
        )
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    from storage import open_storage

    url = resolve_storage_url(args.storage)
    storage = open_storage(url)
    print(
        f"optuna-dashboard on http://{args.host}:{args.port} for {redact_url(url)}", file=sys.stderr
    )
    run_server(storage, host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpsearch",
        description="Hyperparameter search for PyTorch training on Optuna studies in a SQL database.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    storage_help = (
        f"database URL; default ${ENV_VAR}, else {DEFAULT_STORAGE_URL} (a SQLite file here)"
    )

    devices_help = (
        "ranks per trial: > 1 runs each trial as DDP (default [resources].devices_per_trial)"
    )

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--storage", help=storage_help)
        return sub

    run = add("run", "create or resume a study and run local workers until its budget is used")
    run.add_argument("study_file", help="study file (TOML)")
    run.add_argument(
        "--workers", type=_positive_int, help="worker processes (default [resources].workers)"
    )
    run.add_argument("--timeout", type=_positive_float, help="seconds after which no trial starts")
    run.add_argument("--devices-per-trial", type=_positive_int, help=devices_help)
    run.set_defaults(handler=cmd_run)

    create = add("create", "create a study from a study file (the same file again is a no-op)")
    create.add_argument("study_file", help="study file (TOML)")
    create.set_defaults(handler=cmd_create)

    worker = add("worker", "run worker processes on this node for an existing study")
    worker.add_argument("--study", required=True, help="study name")
    worker.add_argument(
        "--workers", type=_positive_int, default=1, help="worker processes (default 1)"
    )
    worker.add_argument(
        "--timeout", type=_positive_float, help="seconds after which no trial starts"
    )
    worker.set_defaults(handler=cmd_worker)

    status = add("status", "show a study's progress, best result and running trials")
    status.add_argument("--study", required=True, help="study name")
    status.add_argument(
        "--json", action="store_true", help="print the status as JSON (schema in README)"
    )
    status.add_argument("--watch", action="store_true", help="refresh until interrupted")
    status.add_argument(
        "--interval", type=_positive_float, default=5.0, help="seconds between refreshes"
    )
    status.set_defaults(handler=cmd_status)

    export = add("export", "write the best configuration (or the Pareto front)")
    export.add_argument("--study", required=True, help="study name")
    export.add_argument(
        "--format", choices=FORMATS, help="default: from --output's extension, else yaml"
    )
    export.add_argument("--output", "-o", help="file to write (default: standard output)")
    export.set_defaults(handler=cmd_export)

    studies = add("studies", "list the studies in a storage")
    studies.set_defaults(handler=cmd_studies)

    dashboard = add("dashboard", "serve optuna-dashboard on the storage")
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default localhost only)"
    )
    dashboard.add_argument("--port", type=_positive_int, default=8080)
    dashboard.set_defaults(handler=cmd_dashboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except (HpsearchError, StorageError, ObjectiveError) as err:
        print(f"hpsearch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
