"""Search efficiency on the learning-curve simulator: epochs until a target loss is first reached.

The simulator (hpsearch/objectives/curves.py) is a cheap objective whose curves cross (fast
starters plateau high, slow starters end lower), so it shows what pruning and scheduling cost or
save, over many seeds. Each run is one study through the real path: a study file, ``hpsearch
run`` with SQLite, its workers claiming slot trials (the sampler reseeded per slot from the
study's seed), the simulator reporting each epoch and checkpointing before it reports. Run ``s``
of every method uses sampler seed ``s`` and noise seed ``s``: the methods meet the same noisy
objective, seed by seed.

A run's cost is the epochs its trials had reported, in the order they ran, up to and including
the first reported validation loss at or below ``TARGET`` (a trial that gets there mid-way counts
its epochs up to that one); with several workers, every worker's epochs up to that moment (see
:func:`epochs_to_target`). A run that never did counts everything it spent, marked as not
reached (its cost is a lower bound). The full suite runs 1 worker and 4; quick mode 1. Per method: the median cost over seeds, with a 95% interval
from order statistics (distribution-free); and the ratio of its median to the default's (TPE +
median pruner) with a 95% percentile-bootstrap interval (seeds resampled within each method).

``METHODS`` is the list of what is compared: a name and the study-file sections that make it.
A method runs wherever a study file can express it: the pausing successive halving is its
``[scheduler]`` table (a continuation's copy of its paused trial's curve is not counted twice),
and PBT joins by adding an entry there.
"""

from __future__ import annotations

import math
import random
import statistics
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import tomli_w
from optuna.trial import FrozenTrial

from hpsearch.attrs import PROMOTED_FROM

ROOT = Path(__file__).resolve().parent.parent
# Validation loss to reach: about 5% of random configurations get there within 27 epochs; the
# best the space holds is near 0.07.
TARGET = 0.095
# The study the runs vary: its space, objective and epochs (27: hyperband's rungs at 1, 3, 9, 27).
STUDY = ROOT / "studies" / "curves.toml"
EPOCHS = tomllib.loads(STUDY.read_text())["training"]["epochs"]


@dataclass(frozen=True)
class Method:
    name: str
    sections: Mapping[str, Any]  # the study file's tables that make it: [sampler], [pruner], ...


DEFAULT = "tpe + median (default)"
# What is compared. The pausing successive halving and PBT are added here as entries whose
# sections name their study-file schedule; nothing else in this module changes.
METHODS: list[Method] = [
    Method("random, no pruning", {"sampler": {"name": "random"}, "pruner": {"name": "none"}}),
    Method(DEFAULT, {"sampler": {"name": "tpe"}, "pruner": {"name": "median"}}),
    Method(
        "tpe + asha (pausing)",
        {
            "sampler": {"name": "tpe"},
            "pruner": {"name": "none"},
            "scheduler": {
                "name": "asha",
                "min_epochs": 1,
                "max_epochs": EPOCHS,
                "reduction_factor": 3,
            },
        },
    ),
    Method(
        "tpe + hyperband",
        {
            "sampler": {"name": "tpe"},
            "pruner": {
                "name": "hyperband",
                "options": {"min_resource": 1, "max_resource": 27, "reduction_factor": 3},
            },
        },
    ),
]


def study_file(method: Method, *, seed: int, n_trials: int, workers: int) -> str:
    """studies/curves.toml made into one run: ``seed`` seeds the sampler (per slot) and the
    curves' noise; the method's tables replace the study's sampler and pruner."""
    study = tomllib.loads(STUDY.read_text())
    study["study"]["name"] = f"curves-{seed}"
    study["budget"] = {"n_trials": n_trials}
    study["resources"] = {"workers": workers}
    study["training"]["seed"] = seed
    study.update({table: dict(keys) for table, keys in method.sections.items()})
    if "scheduler" in method.sections:
        del study["training"]["epochs"]  # the schedule's max_epochs is how long a trial trains
    study["sampler"]["seed"] = seed
    return tomli_w.dumps(study)


@dataclass(frozen=True)
class Curve:
    """One trial of a run: when it started and ended (seconds) and the losses it reported."""

    start: float
    end: float
    losses: list[float]


def search_run(method: Method, *, seed: int, n_trials: int, workers: int) -> list[Curve]:
    """One study through ``hpsearch run``; its trials' curves."""
    hpsearch = str(Path(sys.executable).parent / "hpsearch")
    with tempfile.TemporaryDirectory(prefix="hpsearch-curves-") as folder:
        path = Path(folder) / "curves.toml"
        path.write_text(study_file(method, seed=seed, n_trials=n_trials, workers=workers))
        url = f"sqlite:///{folder}/curves.db"
        subprocess.run(
            [hpsearch, "-q", "run", str(path), "--storage", url],
            check=True,
            capture_output=True,
            cwd=folder,  # checkpoints go under the run's folder
        )
        study = optuna.load_study(study_name=f"curves-{seed}", storage=url)
        trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    return [
        Curve(
            t.datetime_start.timestamp(),
            t.datetime_complete.timestamp(),
            [t.intermediate_values[step] for step in sorted(_own_steps(t, by_number))],
        )
        for t in trials
        if t.datetime_start is not None and t.datetime_complete is not None
    ]


def _own_steps(trial: FrozenTrial, by_number: Mapping[int, FrozenTrial]) -> set[int]:
    """The epochs a trial trained itself: a continuation of a paused configuration starts with
    a copy of its paused trial's curve, which was spent (and is counted) there."""
    paused = by_number.get(trial.system_attrs.get(PROMOTED_FROM, -1))
    copied = set(paused.intermediate_values) if paused is not None else set()
    return set(trial.intermediate_values) - copied


def epochs_to_target(curves: Sequence[Curve], target: float) -> tuple[int, bool]:
    """Epochs spent, by all workers together, until a reported loss first reached ``target``,
    and whether one did (if not: every epoch the run spent).

    A trial's epochs are taken as evenly spread between its start and its end (the database
    keeps no time per report): exact with one worker, whose trials never overlap; with several,
    the epochs other workers had run by the time of the first hit are estimated so.
    """
    reports = sorted(
        (c.start + (epoch / len(c.losses)) * (c.end - c.start), loss)
        for c in curves
        for epoch, loss in enumerate(c.losses, 1)
    )
    for spent, (_, loss) in enumerate(reports, 1):
        if loss <= target:
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


def compare(runs: Mapping[str, Sequence[Sequence[Curve]]]) -> list[dict[str, Any]]:
    """Per method: the median epochs to the target over seeds, with 95% intervals, and its
    ratio to the default's."""
    results = {
        name: [epochs_to_target(curves, TARGET) for curves in of] for name, of in runs.items()
    }
    default = [float(cost) for cost, _ in results[DEFAULT]]
    table: list[dict[str, Any]] = []
    for name, outcomes in results.items():
        costs = [float(cost) for cost, _ in outcomes]
        reached = sum(hit for _, hit in outcomes)
        low, high = median_interval(costs)
        ratio_low, ratio_high = ratio_interval(costs, default)
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
                "median_epochs_spent": statistics.median(
                    sum(len(c.losses) for c in curves) for curves in runs[name]
                ),
            }
        )
    return table


def measure(*, quick: bool, processes: int = 2) -> dict[str, Any]:
    seeds = 2 if quick else 20
    n_trials = 6 if quick else 60
    worker_counts = (1,) if quick else (1, 4)
    jobs = [
        (method, seed, workers)
        for workers in worker_counts
        for seed in range(seeds)
        for method in METHODS
    ]
    with ThreadPoolExecutor(processes) as pool:  # each job is an `hpsearch run` process
        runs = list(
            pool.map(
                lambda job: search_run(job[0], seed=job[1], n_trials=n_trials, workers=job[2]),
                jobs,
            )
        )
    tables = []
    for workers in worker_counts:
        by_method: dict[str, list[list[Curve]]] = {m.name: [] for m in METHODS}
        for (method, _, used), curves in zip(jobs, runs, strict=True):
            if used == workers:
                by_method[method.name].append(curves)
        tables.append({"workers": workers, "table": compare(by_method)})
    return {
        "seeds": seeds,
        "n_trials": n_trials,
        "epochs_per_trial": EPOCHS,
        "target_val_loss": TARGET,
        "tables": tables,
    }
