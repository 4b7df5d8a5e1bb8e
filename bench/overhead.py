"""Coordination overhead: `hpsearch worker` against a plain Optuna loop, on a trivial objective.

The objective costs nothing (``x ** 2``), so a trial's time is all coordination: the sampler, the
storage round trips, and in hpsearch's case the budget queue, the heartbeat and the provenance
attributes. Both sides run as separate processes on the same database server and sampler:

- ours: ``hpsearch worker --workers W`` on a study created by ``hpsearch create``;
- plain: W processes, each ``optuna.load_study(...).optimize(objective, n_trials=N / W)``
  (bench/plain_worker.py).

Per-trial cost = the span from the first measured trial's start to the last one's end, divided by
the number of trials; process start-up is outside the span on both sides. For the growth with
study size, the study is first filled with N0 finished trials in bulk (SQL inserts in Optuna's
schema, as if earlier trials had run), and the next trials are timed the same way.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages._rdb import models
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pg_soak import fresh_database  # noqa: E402
from bench.plain_worker import STUDY  # noqa: E402
from hpsearch.attrs import SLOT  # noqa: E402
from hpsearch.search import create_study, load_spec_file  # noqa: E402
from hpsearch.search.runtime._budget import BATCH, _slot_trial  # noqa: E402

X = optuna.distributions.FloatDistribution(-10.0, 10.0)
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
    if dialect == "sqlite":
        yield f"sqlite:///{folder}/{tag}.db"
        return
    admin = os.environ.get(
        "HPSEARCH_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    yield fresh_database(admin, "hpsearch_bench_overhead")


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
        ids = dict(
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
    """Run it; per-trial milliseconds over the trials after the prefilled ones."""
    hpsearch = str(Path(sys.executable).parent / "hpsearch")
    total = run.prefilled + run.trials
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
            optuna.create_study(study_name=STUDY, storage=url, direction="minimize")
            if run.prefilled:
                prefill(url, run.prefilled, total, slots=False)
            shares = [run.trials // run.workers] * run.workers
            shares[0] += run.trials - sum(shares)
            command = [
                [sys.executable, "-m", "bench.plain_worker", url, run.sampler, str(n), str(i)]
                for i, n in enumerate(shares)
            ]
        processes = [
            subprocess.Popen(c, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for c in command
        ]
        errors = [p.communicate()[1].decode() for p in processes]
        failed = [
            e.strip().splitlines()[-1]
            for p, e in zip(processes, errors, strict=True)
            if p.returncode
        ]
        if failed:
            raise RuntimeError(f"{run}: a worker failed: {failed[0]}")
        completed, start, end = _span(url, run.prefilled)
    if completed != run.trials:
        raise RuntimeError(f"{run}: {completed} trials completed, expected {run.trials}")
    return {"ms_per_trial": (end - start).total_seconds() * 1000 / completed}


def _span(url: str, first: int) -> tuple[int, datetime, datetime]:
    """(completed trials, first start, last end) of the trials numbered ``first`` and up.

    One SQL query: loading a 10,000-trial study through Optuna took seconds per run."""
    trials = models.TrialModel.__table__
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            count, start, end = connection.execute(
                sqlalchemy.select(
                    sqlalchemy.func.count(),
                    sqlalchemy.func.min(trials.c.datetime_start),
                    sqlalchemy.func.max(trials.c.datetime_complete),
                ).where(trials.c.number >= first, trials.c.state == TrialState.COMPLETE)
            ).one()
    finally:
        engine.dispose()
    if not count:
        raise RuntimeError(f"no completed trials after {first} in {url}")
    return int(count), start, end


def measure(*, quick: bool, dialects: tuple[str, ...] = ("sqlite", "postgresql")) -> dict[str, Any]:
    """The overhead table (random sampler, 1 and 2 workers per dialect) and the growth with
    study size (random and TPE samplers, one worker, SQLite). Medians of interleaved repeats.

    The random sampler costs next to nothing, so the table shows coordination alone; TPE's own
    cost grows with the study on both sides alike, which the growth rows show."""
    repeats = 1 if quick else 3
    n_trials = 20 if quick else 80
    sizes = (16, 64) if quick else (1024, 9984)
    growth_trials = {"random": 10 if quick else 80, "tpe": 6}
    # TPE's 6 trials at 10,000 cost seconds each; its rows show TPE's own growth, not ours.
    growth_repeats = {"random": 1 if quick else 2, "tpe": 1}
    if quick:
        dialects, growth_trials = dialects[:1], {"random": 10}
    figures: dict[str, Any] = {
        "trials_per_run": n_trials,
        "repeats": repeats,
        "growth_trials_per_run": growth_trials,
        "growth_repeats": growth_repeats,
        "overhead": [],
    }
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as folder:
        for dialect in dialects:
            for workers in (1, 2):
                costs = _interleaved(
                    [Run(m, dialect, "random", workers, n_trials) for m in ("plain", "ours")],
                    repeats,
                    folder,
                )
                figures["overhead"].append(
                    {"dialect": dialect, "sampler": "random", "workers": workers, **costs}
                )
        figures["growth"] = []
        for sampler, trials in growth_trials.items():
            for size in sizes:
                costs = _interleaved(
                    [Run(m, "sqlite", sampler, 1, trials, size) for m in ("plain", "ours")],
                    growth_repeats[sampler],
                    folder,
                )
                figures["growth"].append({"sampler": sampler, "study_size": size, **costs})
    return figures


def _interleaved(runs: list[Run], repeats: int, folder: str) -> dict[str, Any]:
    times: dict[str, list[float]] = {run.method: [] for run in runs}
    for repeat in range(repeats):
        for run in runs:  # interleaved, so drift hits both alike
            tag = f"{run.method}-{run.dialect}-{run.sampler}-{run.workers}-{run.prefilled}-{repeat}"
            times[run.method].append(timed_run(run, folder, tag)["ms_per_trial"])
    ours, plain = statistics.median(times["ours"]), statistics.median(times["plain"])
    return {
        "ours_ms_per_trial": round(ours, 2),
        "plain_ms_per_trial": round(plain, 2),
        "overhead": round(ours / plain - 1, 3),
    }
