"""Soak check: N `hpsearch worker` processes run a digits study of T trials on PostgreSQL.

Reports whether the budget was met exactly and counts storage errors in the workers' output.
Run by hand (not a timed test):

    .venv/bin/python bench/pg_soak.py --workers 4 --trials 200 \
        --admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres

It drops and recreates the database ``hpsearch_bench`` on that server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import sqlalchemy

STUDY = """
[study]
name = "soak"
objective = "digits-mlp"

[budget]
n_trials = {trials}

[sampler]
name = "tpe"
seed = 0

[pruner]
name = "median"
options = {{ n_startup_trials = 5, n_warmup_steps = 1 }}

[training]
epochs = {epochs}

[space.lr]
type = "float"
low = 1e-4
high = 3e-1
log = true

[space.batch_size]
type = "categorical"
choices = [32, 64, 128]

[space.optimizer]
type = "categorical"
choices = ["adam", "sgd"]

[space.momentum]
type = "float"
low = 0.0
high = 0.99
when = {{ optimizer = "sgd" }}

[space.activation]
type = "categorical"
choices = ["relu", "tanh", "gelu"]

[space.width]
type = "int"
low = 16
high = 128
log = true
"""

STORAGE_ERROR = re.compile(
    r"Traceback|OperationalError|StorageError|already finished|deadlock", re.I
)


def fresh_database(admin_url: str, name: str) -> str:
    """Drop database ``name`` on the server of ``admin_url`` (PostgreSQL, MySQL or MariaDB),
    ending its sessions first, create it empty and return its URL."""
    url = sqlalchemy.make_url(admin_url)
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            if url.get_backend_name() == "postgresql":
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            else:  # MySQL and MariaDB have no FORCE: end the database's sessions by hand
                sessions = connection.execute(
                    sqlalchemy.text(
                        "SELECT id FROM information_schema.processlist "
                        "WHERE db = :name AND id <> CONNECTION_ID()"
                    ),
                    {"name": name},
                ).scalars()
                for session in list(sessions):
                    with contextlib.suppress(sqlalchemy.exc.DBAPIError):  # it ended meanwhile
                        connection.exec_driver_sql(f"KILL {int(session)}")
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
    finally:
        engine.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()

    hpsearch = str(Path(sys.executable).parent / "hpsearch")
    url = fresh_database(args.admin_url, "hpsearch_bench")
    with tempfile.TemporaryDirectory() as folder:
        study_file = Path(folder) / "soak.toml"
        study_file.write_text(STUDY.format(trials=args.trials, epochs=args.epochs))
        subprocess.run([hpsearch, "create", str(study_file), "--storage", url], check=True)
        started = time.monotonic()
        result = subprocess.run(
            [
                hpsearch,
                "worker",
                "--study",
                "soak",
                "--storage",
                url,
                "--workers",
                str(args.workers),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.monotonic() - started
    log = result.stdout + result.stderr
    trials = optuna.load_study(study_name="soak", storage=url).get_trials()
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    figures = {
        "workers": args.workers,
        "budget": args.trials,
        "epochs_per_trial": args.epochs,
        "exit_code": result.returncode,
        "trials_in_study": len(trials),
        "states": states,
        "exact_budget": len(trials) == args.trials and all(t.state.is_finished() for t in trials),
        "storage_error_lines": sum(1 for line in log.splitlines() if STORAGE_ERROR.search(line)),
        "failed_with_error": sum(1 for t in trials if "error" in t.user_attrs),
        "distinct_worker_pids": len({t.user_attrs["worker"]["pid"] for t in trials}),
        "wall_seconds": round(seconds, 1),
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return (
        0
        if figures["exact_budget"]
        and figures["storage_error_lines"] == 0
        and result.returncode == 0
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
