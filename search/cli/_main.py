"""The ``hpsearch`` command line."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import optuna

from hpsearch.errors import HpsearchError
from hpsearch.search import _api
from hpsearch.search._study import create_study, load_study, study_summaries
from hpsearch.search.cli._argtypes import (
    host,
    non_negative_int,
    port,
    positive_float,
    positive_int,
    resource_count,
)
from hpsearch.search.cli._deploy import add_deploy_commands
from hpsearch.search.results._export import (
    EXPORT_FORMATS,
    export_document,
    render,
    trials_csv,
    write_atomically,
)
from hpsearch.search.results._status import format_status, status_document
from hpsearch.search.spec import StudySpec, load_spec_file
from hpsearch.storage import DEFAULT_STORAGE_URL, ENV_VAR, redact_url, resolve_storage_url

# Commands that do not train import neither torch, sklearn, plotly nor grpc: what only `run`,
# `worker`, `train`, `report` or `proxy` need is imported inside them.


def _print_summary(study: optuna.Study, spec: StudySpec) -> None:
    print(format_status(status_document(study, spec)))
    try:
        document = export_document(study, spec)
    except HpsearchError as err:
        print(f"\n{err}")
        return
    print("\nbest configuration (`hpsearch export` writes it to a file):")
    print(render(document, "yaml"), end="")


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec_file(args.study_file)
    study = _api.run(
        spec,
        storage=resolve_storage_url(args.storage),
        progress=not args.quiet,
        **_worker_options(args),
    )
    if not args.quiet:
        _print_summary(study, spec)
    return 0


def _worker_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "workers": args.workers,
        "gpus": args.gpus,
        "devices_per_trial": args.devices_per_trial,
        "timeout": args.timeout,
    }


def cmd_create(args: argparse.Namespace) -> int:
    spec = load_spec_file(args.study_file)
    url = resolve_storage_url(args.storage)
    result = create_study(spec, url)
    if result.created:
        print(f"created study {spec.name!r} in {redact_url(url)} ({spec.n_trials} trials budgeted)")
    elif result.raised:
        print(result.raised_line(url))
    else:
        print(
            f"study {spec.name!r} already exists in {redact_url(url)} with the same spec; nothing to do"
        )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    url = resolve_storage_url(args.storage)
    loaded = load_study(args.study, url)  # fail fast, in one line, before spawning anything
    if args.dry_run:
        from hpsearch.search.runtime._node import node_assignments

        assignments = node_assignments(
            gpus=args.gpus,
            devices_per_trial=args.devices_per_trial,
            workers=args.workers,
            spec_ranks=loaded.spec.resources.devices_per_trial,
            default_workers=1,
        )
        print(f"node {socket.gethostname()}: {len(assignments)} worker process(es)")
        for devices in assignments:
            print(f"  {devices.describe()}")
        return 0
    _api.worker(
        args.study,
        storage=url,
        progress=not args.quiet,
        nodes_per_trial=args.nodes_per_trial,
        node_rank=args.node_rank,
        rendezvous=args.rendezvous,
        **_worker_options(args),
    )
    return 0


def cmd_reap(args: argparse.Namespace) -> int:
    from hpsearch.search.runtime._budget import reap_stale_trials

    url = resolve_storage_url(args.storage)
    loaded = load_study(args.study, url)
    reaped = reap_stale_trials(loaded.study, loaded.storage)
    print(
        f"failed {len(reaped)} stale trial(s) of {args.study!r}"
        + (f" ({', '.join(map(str, reaped))}); they are back in the queue" if reaped else "")
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
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
    if fmt == "csv":
        if args.weights:
            raise HpsearchError(
                "--weights with --format csv: the weights are the best trial's; export "
                "yaml/json/toml with --weights, or drop it."
            )
        if args.top is not None:
            raise HpsearchError(
                f"--top {args.top} with --format csv: the CSV holds every trial already; "
                "drop --top, or export yaml/json/toml for the K best."
            )
        text = trials_csv(loaded.study, loaded.spec)
    else:
        document = export_document(loaded.study, loaded.spec, top=args.top, output=args.output)
        if args.weights:
            document["weights"] = _export_weights(document, args.weights)
        text = render(document, fmt)
    if args.output:
        write_atomically(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _export_weights(document: dict[str, Any], path: str) -> str:
    """Write the best trial's trained weights to ``path``; its absolute path."""
    from hpsearch.search.results._weights import write_weights

    if "trial" not in document:
        raise HpsearchError(
            "--weights: a multi-objective study has a Pareto front, not one best trial; "
            "drop --weights and retrain the configuration you pick with `hpsearch train`."
        )
    trial, checkpoint = document["trial"], document.get("checkpoint")
    if not checkpoint:
        raise HpsearchError(
            f"--weights: trial {trial}'s checkpoint is not there (it wrote none, or "
            "[resources] keep_checkpoints removed it); export without --weights and retrain "
            "with `hpsearch train`."
        )
    write_weights(checkpoint, path, trial=trial)
    print(f"wrote trial {trial}'s weights to {path}", file=sys.stderr)
    return os.path.abspath(path)


def _format_from_path(path: str | None) -> str:
    if path:
        extension = os.path.splitext(path)[1].lower().lstrip(".")
        if extension == "yml":
            return "yaml"
        if extension in EXPORT_FORMATS:
            return extension
    return "yaml"


def cmd_studies(args: argparse.Namespace) -> int:
    url = resolve_storage_url(args.storage)
    rows = study_summaries(url)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"no studies in {redact_url(url)}")
        return 0
    # Columns as wide as their longest entry: a module path names many objectives.
    names = max(len("study"), *(len(row["study"]) for row in rows))
    objectives = max(len("objective"), *(len(str(row["objective"] or "-")) for row in rows))
    print(
        f"{'study':<{names}}  {'objective':<{objectives}} {'done':>9} {'pruned':>6} "
        f"{'paused':>6} {'failed':>6} {'running':>7}  best"
    )
    for row in rows:
        done = f"{row['used']}/{row['budget']}"
        best = "-" if row["best_value"] is None else f"{row['best_value']:.6g}"
        print(
            f"{row['study']:<{names}}  {row['objective'] or '-'!s:<{objectives}} {done:>9} "
            f"{row['pruned']:>6} {row['paused']:>6} {row['failed']:>6} {row['running']:>7}  {best}"
        )
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    from hpsearch.storage import is_object_store_url, open_object_store, open_storage

    artifact_store: Any = None
    if args.artifacts is not None and is_object_store_url(args.artifacts):
        # A bucket every node writes to: the dashboard serves any worker's checkpoint.
        bucket = open_object_store(args.artifacts)
        bucket.check()
        artifact_store = bucket.artifact_store()
    elif args.artifacts is not None:
        from optuna.artifacts import FileSystemArtifactStore

        if not os.path.isdir(args.artifacts):
            raise HpsearchError(
                f"--artifacts {args.artifacts!r} is not a folder; pass the artifact store's "
                "folder (it must exist) or its s3://BUCKET/PREFIX URL, or leave --artifacts out."
            )
        artifact_store = FileSystemArtifactStore(args.artifacts)
    url = resolve_storage_url(args.storage)
    storage = open_storage(url)
    print(
        f"optuna-dashboard on http://{args.host}:{args.port} for {redact_url(url)}"
        + (f" with artifacts in {args.artifacts}" if args.artifacts else ""),
        file=sys.stderr,
    )
    try:
        run_server(storage, host=args.host, port=args.port, artifact_store=artifact_store)
    except OSError as err:  # binding: the port is taken, or the address is not this machine's
        raise HpsearchError(
            f"Cannot serve the dashboard on {args.host}:{args.port} "
            f"({err.strerror or err}); pick another --port, or an address of this machine "
            "for --host."
        ) from None
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hpsearch.search.results._report import write_report

    url = resolve_storage_url(args.storage)
    loaded = load_study(args.study, url)
    write_report(loaded.study, loaded.spec, args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hpsearch.search.results._retrain import describe, train_from_export

    outcome = train_from_export(args.config, args.output)
    print("\n".join(describe(outcome)))
    return 0


def _version() -> str:
    try:
        return importlib.metadata.version("hpsearch")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout without an install
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpsearch",
        description="Hyperparameter search for PyTorch training on Optuna studies in a SQL database.",
    )
    parser.add_argument("--version", action="version", version=f"hpsearch {_version()}")
    # On every command, before or after its name (`hpsearch -q run ...`, `hpsearch run -q ...`).
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print only errors and what the command was asked for",
    )
    verbosity.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="also Optuna's log lines (-vv: debug)",
    )
    for action in verbosity._actions:
        parser._add_action(action)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    storage_help = (
        f"database URL; default ${ENV_VAR}, else {DEFAULT_STORAGE_URL} (a SQLite file here)"
    )

    def add_device_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--gpus",
            metavar="IDS",
            help="GPU ids for this node's workers, e.g. 0,1,2,3; 'all' (default: every visible "
            "GPU) or 'none' (CPU workers)",
        )
        sub.add_argument(
            "--gpus-per-trial",
            dest="devices_per_trial",
            type=resource_count("devices_per_trial"),
            metavar="N",
            help="devices (DDP ranks) per trial; one worker process per group "
            "(default [resources].devices_per_trial; also --devices-per-trial N)",
        )
        # The older name still works; the help lists the option once.
        sub.add_argument(
            "--devices-per-trial",
            dest="devices_per_trial",
            type=resource_count("devices_per_trial"),
            help=argparse.SUPPRESS,
        )

    def add(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"example: {example}",
            parents=[verbosity],
        )
        sub.add_argument("--storage", metavar="URL", help=storage_help)
        return sub

    run = add(
        "run",
        "create or resume a study and run local workers until its budget is used",
        "hpsearch run study.toml --workers 4 --storage sqlite:///hpsearch.db",
    )
    run.add_argument("study_file", metavar="STUDY.toml", help="study file (TOML)")
    run.add_argument(
        "--workers",
        type=resource_count("workers"),
        metavar="N",
        help="worker processes (default [resources].workers)",
    )
    run.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        help="seconds after which no trial starts",
    )
    add_device_options(run)
    run.set_defaults(handler=cmd_run)

    create = add(
        "create",
        "create a study from a study file (the same file again is a no-op)",
        "hpsearch create study.toml --storage postgresql+psycopg://USER:PW@HOST/DB",
    )
    create.add_argument("study_file", metavar="STUDY.toml", help="study file (TOML)")
    create.set_defaults(handler=cmd_create)

    worker = add(
        "worker",
        "run worker processes on this node for an existing study",
        "hpsearch worker --study NAME --gpus 0,1 --storage postgresql+psycopg://USER:PW@HOST/DB",
    )
    worker.add_argument("--study", required=True, metavar="NAME", help="study name")
    worker.add_argument(
        "--workers",
        type=resource_count("workers"),
        metavar="N",
        help="worker processes (default: one per GPU group, else 1)",
    )
    worker.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        help="seconds after which no trial starts",
    )
    add_device_options(worker)
    worker.add_argument(
        "--nodes-per-trial",
        type=resource_count("nodes_per_trial"),
        metavar="N",
        help="nodes whose workers form each trial's group (default [resources].nodes_per_trial)",
    )
    worker.add_argument(
        "--node-rank",
        type=non_negative_int,
        metavar="RANK",
        help="this node's place in the trial group, 0..nodes-1; node 0 claims the trials "
        "(default $HPSEARCH_NODE_RANK)",
    )
    worker.add_argument(
        "--rendezvous",
        metavar="HOST:PORT",
        help="HOST:PORT where the group's ranks meet: node 0's address and a free port, the "
        "same on every node (default $HPSEARCH_RENDEZVOUS, else $MASTER_ADDR:$MASTER_PORT)",
    )
    worker.add_argument(
        "--dry-run", action="store_true", help="print the device assignment and exit"
    )
    worker.set_defaults(handler=cmd_worker)

    reap = add(
        "reap",
        "fail the study's stale RUNNING trials (dead workers) and re-queue them",
        "hpsearch reap --study NAME",
    )
    reap.add_argument("--study", required=True, metavar="NAME", help="study name")
    reap.set_defaults(handler=cmd_reap)

    status = add(
        "status",
        "show a study's progress, best result and running trials",
        "hpsearch status --study NAME --watch",
    )
    status.add_argument("--study", required=True, metavar="NAME", help="study name")
    status.add_argument(
        "--json", action="store_true", help="print the status as JSON (schema in docs/status.md)"
    )
    status.add_argument("--watch", action="store_true", help="refresh until interrupted")
    status.add_argument(
        "--interval",
        type=positive_float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between refreshes (default 5)",
    )
    status.set_defaults(handler=cmd_status)

    export = add(
        "export",
        "write the best configuration (or the Pareto front)",
        "hpsearch export --study NAME --output best.yaml",
    )
    export.add_argument("--study", required=True, metavar="NAME", help="study name")
    export.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        help="default: from --output's extension, else yaml; csv: every trial, one row each",
    )
    export.add_argument(
        "--output", "-o", metavar="FILE", help="file to write (default: standard output)"
    )
    export.add_argument(
        "--top", type=positive_int, metavar="K", help="also list the K best trials (as `top`)"
    )
    export.add_argument(
        "--weights",
        metavar="FILE",
        help="also write the best trial's trained weights (a state_dict, shards gathered) "
        "from its kept checkpoint",
    )
    export.set_defaults(handler=cmd_export)

    studies = add(
        "studies",
        "list the studies in a storage",
        "hpsearch studies --storage sqlite:///hpsearch.db",
    )
    studies.add_argument("--json", action="store_true", help="print the list as JSON")
    studies.set_defaults(handler=cmd_studies)

    dashboard = add(
        "dashboard",
        "serve optuna-dashboard on the storage",
        "hpsearch dashboard --port 8080 --artifacts artifacts",
    )
    dashboard.add_argument(
        "--host",
        type=host,
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: every interface)",
    )
    dashboard.add_argument(
        "--port",
        type=port,
        default=8080,
        metavar="NUMBER",
        help="TCP port to serve on, 1-65535 (default 8080)",
    )
    dashboard.add_argument(
        "--artifacts",
        metavar="DIR|S3URL",
        help="the artifact store to browse: a folder, or s3://BUCKET/PREFIX in an "
        "S3-compatible object store (endpoint: $HPSEARCH_S3_ENDPOINT_URL) (default: none)",
    )
    dashboard.set_defaults(handler=cmd_dashboard)

    report = add(
        "report",
        "write one self-contained HTML report of a study (works offline)",
        "hpsearch report --study NAME --output report.html",
    )
    report.add_argument("--study", required=True, metavar="NAME", help="study name")
    report.add_argument(
        "--output",
        "-o",
        default="report.html",
        metavar="FILE",
        help="the HTML file to write (default report.html)",
    )
    report.set_defaults(handler=cmd_report)

    train = commands.add_parser(
        "train",
        parents=[verbosity],
        help="retrain an exported configuration and save the model",
        description="retrain an exported configuration (hpsearch export), save the model "
        "(built-in objectives) and report the metric",
        epilog="example: hpsearch train best.yaml --output model",
    )
    train.add_argument(
        "config", metavar="EXPORT", help="file written by `hpsearch export` (yaml, json or toml)"
    )
    train.add_argument(
        "--output",
        "-o",
        default="model",
        metavar="DIR",
        help="folder for model.pt and config.json (default model)",
    )
    train.set_defaults(handler=cmd_train)

    add_deploy_commands(commands, storage_help, parents=[verbosity])  # proxy, db check, db upgrade
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    args = build_parser().parse_args(argv)
    args.quiet = getattr(args, "quiet", False)
    args.verbose = getattr(args, "verbose", 0)
    levels = {0: optuna.logging.WARNING, 1: optuna.logging.INFO}
    optuna.logging.set_verbosity(
        optuna.logging.ERROR if args.quiet else levels.get(args.verbose, optuna.logging.DEBUG)
    )
    try:
        code: int = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except BrokenPipeError:
        # The reader went away (`hpsearch studies --json | head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except _api.WorkersFailed as err:  # the worker printed its own error
        print(f"hpsearch: error: {err}", file=sys.stderr)
        return err.code
    except HpsearchError as err:
        print(f"hpsearch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
