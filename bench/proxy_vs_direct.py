"""Direct PostgreSQL vs `hpsearch proxy` (Optuna's gRPC storage proxy): throughput and connections.

N `hpsearch worker` processes run a study of T trials of a trivial objective (examples/quadratic.py:
three reported steps, so the storage dominates), once straight on PostgreSQL and once through a
proxy, interleaved over R repetitions. Throughput is measured from the trials' own timestamps
(first start to last completion), so process start-up is not counted; the database connections
are sampled from pg_stat_activity while the workers run. Run by hand (not a timed test):

    .venv/bin/python bench/proxy_vs_direct.py --workers 4 --trials 200 --repeats 3 \
        --admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres

It drops and recreates the database ``hpsearch_bench_proxy`` on that server and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import sqlalchemy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pg_soak import fresh_database

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "hpsearch_bench_proxy"
STUDY = """
[study]
name = "{name}"
objective = "quadratic.py:quadratic"
direction = "minimize"
metric = "loss"

[budget]
n_trials = {trials}

[sampler]
name = "random"
seed = 0

[pruner]
name = "none"

[training]
steps = 3

[space.x]
type = "float"
low = -10.0
high = 10.0
"""


def _hpsearch() -> list[str]:
    return [str(Path(sys.executable).parent / "hpsearch")]


class ConnectionSampler:
    """The most client connections to the bench database seen while it runs."""

    def __init__(self, admin_url: str) -> None:
        self._engine = sqlalchemy.create_engine(admin_url, poolclass=sqlalchemy.pool.NullPool)
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        with self._engine.connect() as connection:
            while not self._stop.wait(0.2):
                count = connection.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity "
                    f"WHERE datname = '{DATABASE}' AND backend_type = 'client backend'"
                ).scalar()
                self.peak = max(self.peak, int(count or 0))

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._engine.dispose()


def _run(
    workdir: Path, db_url: str, storage: str, name: str, trials: int, workers: int, admin: str
) -> dict[str, float]:
    study_file = workdir / f"{name}.toml"
    study_file.write_text(STUDY.format(name=name, trials=trials))
    subprocess.run([*_hpsearch(), "create", str(study_file), "--storage", db_url], check=True)
    command = [*_hpsearch(), "worker", "--study", name, "--storage", storage]
    with ConnectionSampler(admin) as sampler:
        subprocess.run(
            [*command, "--workers", str(workers)], check=True, cwd=workdir, capture_output=True
        )
    done = optuna.load_study(study_name=name, storage=db_url).get_trials()
    assert len(done) == trials and all(t.state.is_finished() for t in done), name
    start = min(t.datetime_start for t in done if t.datetime_start)
    end = max(t.datetime_complete for t in done if t.datetime_complete)
    return {
        "trials_per_second": trials / (end - start).total_seconds(),
        "peak_connections": sampler.peak,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()

    db_url = fresh_database(args.admin_url, DATABASE)
    workdir = Path(tempfile.mkdtemp(prefix="hpsearch-bench-proxy-"))
    shutil.copy(ROOT / "examples" / "quadratic.py", workdir / "quadratic.py")
    # The proxy needs the schema: the first study creates it.
    first = workdir / "schema.toml"
    first.write_text(STUDY.format(name="schema", trials=1))
    subprocess.run([*_hpsearch(), "create", str(first), "--storage", db_url], check=True)
    port = _free_port()
    proxy = subprocess.Popen(
        [*_hpsearch(), "proxy", "--storage", db_url, "--port", str(port)],
        stderr=subprocess.DEVNULL,
    )
    try:
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            time.sleep(0.2)
        storages = {"direct": db_url, "proxy": f"grpc://127.0.0.1:{port}"}
        runs: dict[str, list[dict[str, float]]] = {"direct": [], "proxy": []}
        for repeat in range(args.repeats):
            order = ["direct", "proxy"] if repeat % 2 == 0 else ["proxy", "direct"]
            for mode in order:
                result = _run(
                    workdir,
                    db_url,
                    storages[mode],
                    f"{mode}-{repeat}",
                    args.trials,
                    args.workers,
                    args.admin_url,
                )
                runs[mode].append(result)
                print(f"{mode} #{repeat}: {result}", file=sys.stderr, flush=True)
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
    median = {
        mode: statistics.median(r["trials_per_second"] for r in results)
        for mode, results in runs.items()
    }
    figures = {
        "workers": args.workers,
        "trials": args.trials,
        "repeats": args.repeats,
        "median_trials_per_second": median,
        "proxy_over_direct": median["proxy"] / median["direct"],
        "peak_connections": {m: max(r["peak_connections"] for r in rs) for m, rs in runs.items()},
        "runs": runs,
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
