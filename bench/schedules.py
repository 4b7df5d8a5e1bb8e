"""Search efficiency of the schedules: epochs until a target quality, and the best result, when
every method is given the same compute.

Each run is one study through the real path: a study file, ``hpsearch run`` on SQLite with one
worker, its worker claiming slot trials (the sampler reseeded per slot from the study's seed).
Every method of a task gets the same epochs: ``[budget] epochs = BUDGET`` (as many trials as fit
in it; a trial running when it is spent stops at its next report), and PBT a population of
``BUDGET / max_epochs`` members, each trained to ``max_epochs``. Run ``s`` of every method uses
seed ``s`` for its sampler and its training (the simulator's noise, the engine's seed): the
methods meet the same objective, seed by seed.

Two figures per run:

- **epochs to target**: the epochs its trials had reported, in the order they ran, up to and
  including the first reported value at or better than the task's target; a run that never got
  there counts every epoch it spent, marked as not reached (a lower bound). A continuation's copy
  of its paused trial's curve (ASHA, PBT) was spent there, and is counted once.
- **best**: the study's best trial at the end (a COMPLETE trial: for ASHA a configuration
  promoted to ``max_epochs``, for PBT the best member), what ``hpsearch export`` hands over.

Per method: the median over seeds with a 95% order-statistic interval (distribution-free), and the
ratio of its median epochs to the default's (TPE + median pruner) with a 95% percentile-bootstrap
interval (seeds resampled within each method).
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import tomli_w
from optuna.trial import FrozenTrial

from hpsearch.attrs import PROMOTED_FROM

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = "tpe + median (default)"


@dataclass(frozen=True)
class Task:
    """A study file compared across methods, and what a run of it may spend."""

    name: str
    study: Path
    maximize: bool
    target: float  # the metric's value to reach (at or above when maximized, else at or below)
    epochs: int  # a configuration's full training: [training] epochs, or max_epochs
    budget: int  # epochs per run, every method alike
    seeds: int
    asha_min_epochs: int  # the first rung
    pbt_interval: int
    training: Mapping[str, Any] = field(default_factory=dict)  # options over the study's

    @property
    def population(self) -> int:
        return self.budget // self.epochs


TASKS = (
    # The learning-curve simulator: curves cross (fast starters plateau high), seconds a run.
    # About 5% of random configurations reach 0.095 within 27 epochs; the space's best is
    # near 0.07. Seconds a run, so 60 seeds: a ratio's interval narrow enough to tell.
    Task(
        name="curves",
        study=ROOT / "studies" / "curves.toml",
        maximize=False,
        target=0.095,
        epochs=27,
        budget=22 * 27,
        seeds=60,
        asha_min_epochs=3,  # rungs at 3 and 9 of 27: past the warm-up's first epochs
        pbt_interval=3,
    ),
    # The built-in digits MLP (scikit-learn's digits, offline).
    Task(
        name="digits",
        study=ROOT / "studies" / "digits.toml",
        maximize=True,
        target=0.975,
        epochs=9,
        budget=16 * 9,
        seeds=5,
        asha_min_epochs=1,
        pbt_interval=3,
    ),
    # The character-level transformer LM (examples/charlm), validation perplexity (the
    # unigram baseline scores 22.5); epochs of 256 windows keep a run near two minutes on one
    # core. The target is what random search finds with the whole budget (8 configurations,
    # median best 8.95 over 5 seeds): about the best 8% of configurations. PBT compares its
    # members every epoch: 8 rounds of exploit and explore in a 9-epoch run.
    Task(
        name="charlm",
        study=ROOT / "examples" / "charlm" / "study.toml",
        maximize=False,
        target=9.0,
        epochs=9,
        budget=8 * 9,
        seeds=5,
        asha_min_epochs=1,
        pbt_interval=1,
        training={"windows": 256},
    ),
)


@dataclass(frozen=True)
class Method:
    name: str
    sections: Mapping[str, Any]  # the study file's tables that make it: [sampler], [pruner], ...


def methods(task: Task) -> list[Method]:
    """What is compared on ``task``: a name and the study-file tables that make it."""
    return [
        Method("random, no pruning", {"sampler": {"name": "random"}, "pruner": {"name": "none"}}),
        Method(DEFAULT, {"sampler": {"name": "tpe"}, "pruner": {"name": "median"}}),
        Method(
            "tpe + hyperband",
            {
                "sampler": {"name": "tpe"},
                "pruner": {
                    "name": "hyperband",
                    "options": {
                        "min_resource": 1,
                        "max_resource": task.epochs,
                        "reduction_factor": 3,
                    },
                },
            },
        ),
        Method(
            "tpe + asha (pausing)",
            {
                "sampler": {"name": "tpe"},
                "pruner": {"name": "none"},
                "scheduler": {
                    "name": "asha",
                    "min_epochs": task.asha_min_epochs,
                    "max_epochs": task.epochs,
                    "reduction_factor": 3,
                },
            },
        ),
        Method(
            "pbt",
            {
                "sampler": {"name": "tpe"},
                "pruner": {"name": "none"},
                "scheduler": {
                    "name": "pbt",
                    "population": task.population,
                    "interval_epochs": task.pbt_interval,
                    "max_epochs": task.epochs,
                },
            },
        ),
    ]


def study_file(task: Task, method: Method, *, seed: int) -> str:
    """The task's study file made into one run of ``method`` with ``seed``."""
    study = tomllib.loads(task.study.read_text())
    study["study"]["name"] = f"{task.name}-{seed}"
    objective = study["study"]["objective"]
    if ".py:" in objective and not Path(objective.split(":")[0]).is_absolute():
        # The run's study file lives elsewhere: name the objective's file absolutely.
        study["study"]["objective"] = str(task.study.parent / objective)
    study.update({table: dict(keys) for table, keys in method.sections.items()})
    study["resources"] = {"workers": 1}
    training = {**study.get("training", {}), **task.training, "seed": seed}
    scheduler = method.sections.get("scheduler", {})
    if scheduler:
        training.pop("epochs", None)  # the schedule's max_epochs is how long a trial trains
    else:
        training["epochs"] = task.epochs
    study["training"] = training
    if scheduler.get("name") == "pbt":
        study["budget"] = {}  # the population is the budget
    else:
        # More trials than the epochs allow: the epochs budget is the one reached.
        study["budget"] = {"n_trials": task.budget, "epochs": task.budget}
    study["sampler"]["seed"] = seed
    return tomli_w.dumps(study)


@dataclass(frozen=True)
class Curve:
    """One trial of a run: when it started and ended (seconds) and the values it reported."""

    start: float
    end: float
    values: list[float]


@dataclass(frozen=True)
class Run:
    curves: list[Curve]
    best: float | None  # the study's best value at the end (None: no trial completed)


def run_study(path: Path, url: str, what: str) -> None:
    """``hpsearch run`` of the study file ``path`` on ``url``, in the file's folder (checkpoints
    go there); a failure raises, naming ``what`` ran."""
    hpsearch = str(Path(sys.executable).parent / "hpsearch")
    result = subprocess.run(
        [hpsearch, "-q", "run", str(path), "--storage", url],
        capture_output=True,
        text=True,
        cwd=path.parent,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{what}: hpsearch run failed: {result.stderr.strip()[-2000:]}")


def search_run(task: Task, method: Method, *, seed: int) -> Run:
    """One study through ``hpsearch run``."""
    with tempfile.TemporaryDirectory(prefix=f"hpsearch-{task.name}-") as folder:
        path = Path(folder) / "study.toml"
        path.write_text(study_file(task, method, seed=seed))
        url = f"sqlite:///{folder}/runs.db"
        run_study(path, url, f"{task.name}, {method.name}, seed {seed}")
        study = optuna.load_study(study_name=f"{task.name}-{seed}", storage=url)
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = study.best_value if complete else None
    by_number = {t.number: t for t in trials}
    curves = [
        Curve(
            t.datetime_start.timestamp(),
            t.datetime_complete.timestamp(),
            [t.intermediate_values[step] for step in sorted(_own_steps(t, by_number))],
        )
        for t in trials
        if t.datetime_start is not None and t.datetime_complete is not None
    ]
    return Run(curves, best)


def _own_steps(trial: FrozenTrial, by_number: Mapping[int, FrozenTrial]) -> set[int]:
    """The epochs a trial trained itself: a continuation of a paused configuration starts with
    a copy of a curve (its own, or its PBT donor's: the same epochs) that was spent, and is
    counted, there."""
    paused = by_number.get(trial.system_attrs.get(PROMOTED_FROM, -1))
    copied = set(paused.intermediate_values) if paused is not None else set()
    return set(trial.intermediate_values) - copied


def epochs_to_target(
    curves: Sequence[Curve], target: float, *, maximize: bool = False
) -> tuple[int, bool]:
    """Epochs spent, by all workers together, until a reported value first reached ``target``,
    and whether one did (if not: every epoch the run spent).

    A trial's epochs are taken as evenly spread between its start and its end (the database
    keeps no time per report): exact with one worker, whose trials never overlap; with several,
    the epochs other workers had run by the time of the first hit are estimated so.
    """
    reports = sorted(
        (c.start + (epoch / len(c.values)) * (c.end - c.start), value)
        for c in curves
        for epoch, value in enumerate(c.values, 1)
    )
    for spent, (_, value) in enumerate(reports, 1):
        if (value >= target) if maximize else (value <= target):
            return spent, True
    return len(reports), False


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval of the median: order statistics ``(x_(j), x_(k))`` with
    Binomial(n, 1/2) mass of at least ``level`` between them (the whole range if n is small)."""
    ordered, n = sorted(values), len(values)
    pmf = [math.comb(n, i) / 2**n for i in range(n + 1)]
    # (x_(j+1), x_(n-j)) covers the median with probability sum(pmf[j + 1 : n - j]): narrow
    # it while the next pair still covers at least ``level``.
    j = 0
    while j + 2 < n - j - 1 and sum(pmf[j + 2 : n - j - 1]) >= level:
        j += 1
    return ordered[j], ordered[n - 1 - j]


def ratio_interval(
    costs: Sequence[float], default: Sequence[float], *, draws: int = 4000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile-bootstrap interval of median(costs) / median(default), seeds resampled."""
    rng = random.Random(0)
    ratios = sorted(
        statistics.median(rng.choices(costs, k=len(costs)))
        / statistics.median(rng.choices(default, k=len(default)))
        for _ in range(draws)
    )
    tail = (1 - level) / 2
    return ratios[int(tail * draws)], ratios[min(draws - 1, int((1 - tail) * draws))]


def compare(task: Task, runs: Mapping[str, Sequence[Run]]) -> list[dict[str, Any]]:
    """Per method: epochs to the target and the best result, medians over seeds with 95%
    intervals, and the ratio of its epochs to the default's."""
    outcomes = {
        name: [epochs_to_target(r.curves, task.target, maximize=task.maximize) for r in of]
        for name, of in runs.items()
    }
    default = [float(cost) for cost, _ in outcomes[DEFAULT]]
    table: list[dict[str, Any]] = []
    for name, results in outcomes.items():
        costs = [float(cost) for cost, _ in results]
        reached = sum(hit for _, hit in results)
        low, high = median_interval(costs)
        ratio_low, ratio_high = ratio_interval(costs, default)
        bests = [r.best for r in runs[name] if r.best is not None]
        table.append(
            {
                "method": name,
                "median_epochs_to_target": statistics.median(costs),
                "median_epochs_95": [low, high],
                "reached": f"{reached}/{len(costs)}",
                # More than half of the runs censored: the median is a lower bound.
                "median_is_lower_bound": reached <= len(costs) / 2,
                "vs_default": round(statistics.median(costs) / statistics.median(default), 3),
                "vs_default_95": [round(ratio_low, 3), round(ratio_high, 3)],
                "median_best": statistics.median(bests) if bests else None,
                "median_best_95": list(median_interval(bests)) if bests else None,
                "median_epochs_spent": statistics.median(
                    sum(len(c.values) for c in r.curves) for r in runs[name]
                ),
                # Seed by seed, so a reader can pair the methods or try another target's rule.
                "per_seed": [
                    {"epochs_to_target": cost, "reached": hit, "best": r.best}
                    for (cost, hit), r in zip(results, runs[name], strict=True)
                ],
            }
        )
    return table


def measure(
    *, quick: bool, processes: int = 2, tasks: Sequence[str] | None = None
) -> dict[str, Any]:
    """Every method on every task, or on ``tasks`` (quick mode: the simulator alone, 2 seeds, a
    quarter of its budget: that it runs, not what it finds)."""
    names = tasks or (["curves"] if quick else [t.name for t in TASKS])
    chosen = [t for t in TASKS if t.name in names]
    if quick:
        chosen = [
            dataclasses.replace(t, seeds=2, budget=max(2 * t.epochs, t.budget // 4)) for t in chosen
        ]
    jobs = [
        (task, method, seed)
        # The costly tasks (listed last) first: a failure shows early, and the pool ends on
        # short runs.
        for task in reversed(chosen)
        for seed in range(task.seeds)
        for method in methods(task)
    ]
    with ThreadPoolExecutor(processes) as pool:  # each job is an `hpsearch run` process
        runs = list(pool.map(lambda job: search_run(job[0], job[1], seed=job[2]), jobs))
    figures: dict[str, Any] = {"tasks": []}
    for task in chosen:
        by_method: dict[str, list[Run]] = {m.name: [] for m in methods(task)}
        for (of, method, _), run in zip(jobs, runs, strict=True):
            if of is task:
                by_method[method.name].append(run)
        figures["tasks"].append(
            {
                "task": task.name,
                "study": str(task.study.relative_to(ROOT)),
                "metric_maximized": task.maximize,
                "target": task.target,
                "epochs_per_configuration": task.epochs,
                "budget_epochs": task.budget,
                "pbt_population": task.population,
                "seeds": task.seeds,
                "table": compare(task, by_method),
            }
        )
    return figures
