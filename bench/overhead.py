"""Coordination overhead: `hpsearch worker` against a plain Optuna loop, on a trivial objective.

The objective costs nothing (``x ** 2``), so a trial's time is all coordination: the sampler, the
storage round trips, and in hpsearch's case the budget queue, the heartbeat and the provenance
attributes. Both sides run as separate processes on the same database server and sampler:

- ours: ``hpsearch worker --workers W`` on a study created by ``hpsearch create``;
- plain: W processes, each ``optuna.load_study(...).optimize(objective, n_trials=N / W)``
  (bench/plain_worker.py).

Per-trial cost = the span from the first measured trial's start to the last one's end, divided by
the number of measured trials. Each worker process's first trial waits at a barrier until all W
processes are up (bench/trivial.py); the measured trials are those started after it opens, so
process start-up, which on a few cores is staggered over seconds, is outside the span on both
sides. For the growth with study size, the study is first filled with N0 finished trials in bulk
(SQL inserts in Optuna's schema, as if earlier trials had run), and the next trials are timed the
same way.

The journal comparison (full mode) runs the same plain loop on Optuna's JournalStorage with its
Redis backend (a key prefix per run, deleted afterwards) beside PostgreSQL's RDBStorage, with 4
and 16 worker processes, and `hpsearch worker` on PostgreSQL for reference.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages._rdb import models
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pg_soak import fresh_database  # noqa: E402
from bench.plain_worker import STUDY as STUDY  # noqa: E402
from bench.plain_worker import open_storage  # noqa: E402
from bench.trivial import BARRIER  # noqa: E402
from hpsearch.attrs import SLOT  # noqa: E402
from hpsearch.search import create_study, load_spec_file  # noqa: E402
from hpsearch.search.runtime._budget import BATCH, _slot_trial  # noqa: E402

X = optuna.distributions.FloatDistribution(-10.0, 10.0)
ADMIN_URLS = {
    "postgresql": os.environ.get(
        "HPSEARCH_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
    "mysql": os.environ.get("HPSEARCH_BENCH_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
REDIS_URL = os.environ.get("HPSEARCH_BENCH_REDIS", "redis://127.0.0.1:6379")
DATABASE = "hpsearch_bench_overhead"  # dropped and created afresh on those servers for each run
# The overhead table's rows, (dialect, workers): quick mode keeps the SQLite ones, full mode
# adds ROWS_FULL. The Redis JournalStorage comparison (full mode) runs JOURNAL_WORKERS workers.
ROWS = (("sqlite", 1), ("sqlite", 2), ("postgresql", 1), ("postgresql", 2))
ROWS_FULL = (("postgresql", 4), ("mysql", 4))
JOURNAL_WORKERS = (4, 16)
# Runs of each method with 16 workers: ~20 s each of ours is start-up (16 imports of torch on 2
# cores), so a third round would cost ~40 s more of a suite that must stay under 15 minutes.
JOURNAL_REPEATS_16 = 2


def target(workers: int) -> float:
    """The overhead allowed: +5% for 1 and 2 workers, 1.1x plain Optuna for 4 and more."""
    return 0.05 if workers <= 2 else 0.10


STUDY_FILE = """
[study]
name = "{name}"
objective = "{objective}"
direction = "minimize"

[budget]
n_trials = {n_trials}

[sampler]
name = "{sampler}"
seed = 0

[pruner]
name = "none"

[space.x]
type = "float"
low = -10.0
high = 10.0
"""


@dataclass(frozen=True)
class Run:
    """One timed run: `method` (ours | plain) on `dialect` with `workers` processes."""

    method: str
    dialect: str
    sampler: str
    workers: int
    trials: int
    prefilled: int = 0


@contextmanager
def database(dialect: str, folder: str, tag: str) -> Iterator[str]:
    """A fresh storage for one run: a SQLite file, an emptied server database, or a Redis key
    prefix of its own (``redis://HOST:PORT#PREFIX``, its keys deleted afterwards)."""
    if dialect == "sqlite":
        yield f"sqlite:///{folder}/{tag}.db"
    elif dialect == "redis":
        prefix = f"hpsearch-bench-{uuid.uuid4().hex}"
        try:
            yield f"{REDIS_URL}#{prefix}"
        finally:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
    else:
        yield fresh_database(ADMIN_URLS[dialect], DATABASE)


def redis_unreachable() -> str | None:
    """Why Redis cannot be measured (a sentence), or None if it answers."""
    try:
        import redis
    except ImportError:
        return "the redis package is not installed (pip install redis)"
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
        client.close()
    except redis.RedisError as err:
        return f"Redis unreachable at {REDIS_URL} ({str(err).rstrip('.')})"
    return None


def prefill(url: str, n_done: int, n_trials: int, *, slots: bool) -> None:
    """Put ``n_done`` finished trials in the study in bulk, as if they had run.

    With ``slots`` (an hpsearch study) the finished trials hold budget slots 0..n_done-1 and the
    queue is replaced by the batch that follows them, as the workers would have left it.
    """
    engine = sqlalchemy.create_engine(url)
    trials, values = models.TrialModel.__table__, models.TrialValueModel.__table__
    params, attrs = models.TrialParamModel.__table__, models.TrialSystemAttributeModel.__table__
    rng = random.Random(0)
    now = datetime.now()
    with engine.begin() as connection:
        study_id = connection.execute(
            sqlalchemy.select(models.StudyModel.study_id).where(
                models.StudyModel.study_name == STUDY
            )
        ).scalar_one()
        waiting = [
            row[0]
            for row in connection.execute(
                sqlalchemy.select(trials.c.trial_id).where(trials.c.study_id == study_id)
            )
        ]
        connection.execute(attrs.delete().where(attrs.c.trial_id.in_(waiting)))
        connection.execute(trials.delete().where(trials.c.trial_id.in_(waiting)))
        queued = range(n_done, min(n_done + BATCH, n_trials)) if slots else range(0)
        connection.execute(
            trials.insert(),
            [
                {
                    "number": n,
                    "study_id": study_id,
                    "state": TrialState.COMPLETE if n < n_done else TrialState.WAITING,
                    "datetime_start": now if n < n_done else None,
                    "datetime_complete": now if n < n_done else None,
                }
                for n in range(n_done + len(queued))
            ],
        )
        ids: dict[int, int] = dict(
            connection.execute(
                sqlalchemy.select(trials.c.number, trials.c.trial_id).where(
                    trials.c.study_id == study_id
                )
            ).all()
        )
        xs = [rng.uniform(-10, 10) for _ in range(n_done)]
        connection.execute(
            params.insert(),
            [
                {
                    "trial_id": ids[n],
                    "param_name": "x",
                    "param_value": xs[n],
                    "distribution_json": optuna.distributions.distribution_to_json(X),
                }
                for n in range(n_done)
            ],
        )
        connection.execute(
            values.insert(),
            [
                {
                    "trial_id": ids[n],
                    "objective": 0,
                    "value": xs[n] ** 2,
                    "value_type": models.TrialValueModel.TrialValueType.FINITE,
                }
                for n in range(n_done)
            ],
        )
        if slots:
            rows = [
                {"trial_id": ids[n], "key": SLOT, "value_json": json.dumps(n)}
                for n in range(n_done)
            ]
            for slot in queued:
                for key, value in _slot_trial(slot, n_trials).system_attrs.items():
                    rows.append(
                        {"trial_id": ids[slot], "key": key, "value_json": json.dumps(value)}
                    )
            connection.execute(attrs.insert(), rows)
    engine.dispose()


def timed_run(run: Run, folder: str, tag: str) -> dict[str, Any]:
    """Run it; per-trial milliseconds over the measured trials.

    Each worker process's first trial waits at the barrier (bench/trivial.py) until every worker
    is up; the measured trials are those that start after it opens, and after the prefilled ones.
    """
    hpsearch = str(Path(sys.executable).parent / "hpsearch")
    total = run.prefilled + run.trials
    barrier = Path(folder) / f"{tag}.barrier"
    barrier.mkdir()
    with database(run.dialect, folder, tag) as url:
        if run.method == "ours":
            study_file = Path(folder) / f"{tag}.toml"
            study_file.write_text(
                STUDY_FILE.format(
                    name=STUDY,
                    objective=f"{ROOT / 'bench' / 'trivial.py'}:objective",
                    n_trials=total,
                    sampler=run.sampler,
                )
            )
            create_study(load_spec_file(str(study_file)), url)  # as `hpsearch create` does
            if run.prefilled:
                prefill(url, run.prefilled, total, slots=True)
            command = [[hpsearch, "worker", "--study", STUDY, "--storage", url]]
            command[0] += ["--workers", str(run.workers)]
        else:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            optuna.create_study(study_name=STUDY, storage=open_storage(url), direction="minimize")
            if run.prefilled:
                prefill(url, run.prefilled, total, slots=False)
            shares = [run.trials // run.workers] * run.workers
            shares[0] += run.trials - sum(shares)
            command = [
                [sys.executable, "-m", "bench.plain_worker", url, run.sampler, str(n), str(i)]
                for i, n in enumerate(shares)
            ]
        if run.dialect == "mysql":
            microsecond_times(url)
        env = {**os.environ, BARRIER: str(barrier)}
        logs = [barrier / f"stderr-{i}" for i in range(len(command))]
        processes = []
        for argv, log in zip(command, logs, strict=True):
            with log.open("wb") as stderr:
                processes.append(
                    subprocess.Popen(
                        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
                    )
                )
        opened = _release(processes, barrier, run.workers)
        for process in processes:
            process.wait()
        failed = [
            (log.read_text().strip().splitlines() or ["(no output)"])[-1]
            for process, log in zip(processes, logs, strict=True)
            if process.returncode
        ]
        if failed:
            raise RuntimeError(f"{run}: a worker failed: {failed[0]}")
        completed, start, end = _span(url, run.prefilled, opened)
    expected = run.trials - run.workers  # each worker's first trial waited at the barrier
    if completed != expected:
        raise RuntimeError(f"{run}: {completed} measured trials completed, expected {expected}")
    return {"ms_per_trial": (end - start).total_seconds() * 1000 / completed}


def _release(processes: list[subprocess.Popen[bytes]], barrier: Path, workers: int) -> float:
    """Wait until ``workers`` processes wait at the barrier, open it, return when (time.time)."""
    deadline = time.monotonic() + 300
    while len(list(barrier.glob("ready-*"))) < workers:
        if any(p.poll() is not None for p in processes):
            break  # one ended before its first trial: the caller reports its error
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers did not all reach the barrier in {barrier} in 300 s")
        time.sleep(0.01)
    opened = time.time()
    (barrier / "go").touch()
    return opened


def microsecond_times(url: str) -> None:
    """Widen the trials' start and end columns to microseconds on MySQL and MariaDB.

    Optuna creates them as DATETIME, whole seconds there, which a span of a few seconds cannot
    afford; done on both sides alike, after the study is created and before a trial runs."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "ALTER TABLE trials MODIFY datetime_start DATETIME(6) NULL, "
                "MODIFY datetime_complete DATETIME(6) NULL"
            )
    finally:
        engine.dispose()


def _span(url: str, first: int, opened: float) -> tuple[int, datetime, datetime]:
    """(completed trials, first start, last end) of the trials numbered ``first`` and up that
    started at or after ``opened`` (a time.time()).

    For a database, one SQL query (loading a 10,000-trial study through Optuna took seconds per
    run): Optuna stores naive UTC there. For Redis, the trials read through the JournalStorage:
    naive local time, as Optuna's FrozenTrial has it."""
    if url.startswith("redis://"):
        after = datetime.fromtimestamp(opened)
        study = optuna.load_study(study_name=STUDY, storage=open_storage(url))
        measured = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.number >= first and t.datetime_start and t.datetime_start >= after
        ]
        if not measured:
            raise RuntimeError(f"no completed trials after {first} in {url}")
        return (
            len(measured),
            min(t.datetime_start for t in measured if t.datetime_start),
            max(t.datetime_complete for t in measured if t.datetime_complete),
        )
    after = datetime.fromtimestamp(opened, UTC).replace(tzinfo=None)
    trials = models.TrialModel.__table__
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            count, start, end = connection.execute(
                sqlalchemy.select(
                    sqlalchemy.func.count(),
                    sqlalchemy.func.min(trials.c.datetime_start),
                    sqlalchemy.func.max(trials.c.datetime_complete),
                ).where(
                    trials.c.number >= first,
                    trials.c.state == TrialState.COMPLETE,
                    trials.c.datetime_start >= after,
                )
            ).one()
    finally:
        engine.dispose()
    if not count:
        raise RuntimeError(f"no completed trials after {first} in {url}")
    return int(count), start, end


def measure(*, quick: bool) -> dict[str, Any]:
    """The overhead table (random sampler; SQLite and PostgreSQL with 1 and 2 workers, and in
    full mode PostgreSQL and MariaDB with 4), the growth with study size (random and TPE
    samplers, one worker, SQLite) and, in full mode, Optuna's JournalStorage on Redis against
    PostgreSQL with 4 and 16 workers. Medians of interleaved repeats.

    The random sampler costs next to nothing, so the table shows coordination alone; TPE's own
    cost grows with the study on both sides alike, which the growth rows show."""
    repeats = 1 if quick else 3
    n_trials = 20 if quick else 80
    sizes = (16, 64) if quick else (1024, 9984)
    growth_trials = {"random": 10 if quick else 80, "tpe": 6}
    # TPE's 6 trials at 10,000 cost seconds each; its rows show TPE's own growth, not ours.
    growth_repeats = {"random": 1 if quick else 2, "tpe": 1}
    rows = [r for r in ROWS if r[0] == "sqlite"] if quick else [*ROWS, *ROWS_FULL]
    if quick:
        growth_trials = {"random": 10}
    unreachable = None if quick else redis_unreachable()
    journal = not quick and unreachable is None
    figures: dict[str, Any] = {
        "trials_per_run": n_trials,
        "repeats": repeats,
        "growth_trials_per_run": growth_trials,
        "growth_repeats": growth_repeats,
        "overhead": [],
    }
    journal_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as folder:
        for dialect, workers in rows:
            plain, ours = (Run(m, dialect, "random", workers, n_trials) for m in ("plain", "ours"))
            # PostgreSQL with 4 workers is also the journal table's first row: Redis joins it.
            redis = Run("plain", "redis", "random", workers, n_trials)
            with_redis = journal and (dialect, workers) == ("postgresql", JOURNAL_WORKERS[0])
            started = time.monotonic()
            ms = _interleaved([plain, ours, *[redis] * with_redis], repeats, folder)
            figures["overhead"].append(
                {
                    "dialect": dialect,
                    "sampler": "random",
                    "workers": workers,
                    **_versus(ms[ours], ms[plain], target(workers)),
                    "seconds": round(time.monotonic() - started, 1),  # what the row cost
                }
            )
            if with_redis:
                journal_rows.append(
                    _journal_row(workers, n_trials, repeats, ms[redis], ms[plain], ms[ours])
                )
        if journal:
            for workers in JOURNAL_WORKERS[1:]:
                # 9 measured per worker after its barrier trial: 16 workers' start-up (an import
                # of torch each on our side) already takes most of a run's time on 2 cores.
                trials = 10 * workers
                plain, ours, redis = (
                    Run(m, d, "random", workers, trials)
                    for m, d in (
                        ("plain", "postgresql"),
                        ("ours", "postgresql"),
                        ("plain", "redis"),
                    )
                )
                started = time.monotonic()
                ms = _interleaved([redis, plain, ours], JOURNAL_REPEATS_16, folder)
                journal_rows.append(
                    _journal_row(
                        workers, trials, JOURNAL_REPEATS_16, ms[redis], ms[plain], ms[ours]
                    )
                )
                journal_rows[-1]["seconds"] = round(time.monotonic() - started, 1)
        figures["growth"] = []
        for sampler, trials in growth_trials.items():
            for size in sizes:
                plain, ours = (
                    Run(m, "sqlite", sampler, 1, trials, size) for m in ("plain", "ours")
                )
                ms = _interleaved([plain, ours], growth_repeats[sampler], folder)
                figures["growth"].append(
                    {"sampler": sampler, "study_size": size, **_versus(ms[ours], ms[plain])}
                )
    if not quick:
        figures["journal"] = {"redis": REDIS_URL, "not_measured": unreachable, "rows": journal_rows}
    return figures


def _versus(ours: float, plain: float, allowed: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "ours_ms_per_trial": round(ours, 2),
        "plain_ms_per_trial": round(plain, 2),
        "overhead": round(ours / plain - 1, 3),
    }
    if allowed is not None:
        row["target_overhead"] = allowed
        row["target_met"] = ours / plain - 1 <= allowed
    return row


def _journal_row(
    workers: int, trials: int, repeats: int, redis: float, postgresql: float, ours: float
) -> dict[str, Any]:
    return {
        "workers": workers,
        "trials_per_run": trials,
        "repeats": repeats,
        "redis_journal_ms_per_trial": round(redis, 2),
        "postgresql_plain_ms_per_trial": round(postgresql, 2),
        "postgresql_ours_ms_per_trial": round(ours, 2),
        "redis_vs_postgresql": round(redis / postgresql, 3),
    }


def _interleaved(runs: list[Run], repeats: int, folder: str) -> dict[Run, float]:
    """Median milliseconds per trial of each run, the runs taking turns in every repeat."""
    times: dict[Run, list[float]] = {run: [] for run in runs}
    for repeat in range(repeats):
        for run in runs:  # interleaved, so drift hits all alike
            tag = f"{run.method}-{run.dialect}-{run.sampler}-{run.workers}-{run.prefilled}-{repeat}"
            times[run].append(timed_run(run, folder, tag)["ms_per_trial"])
    return {run: statistics.median(values) for run, values in times.items()}
