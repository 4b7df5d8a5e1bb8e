"""ASHA's settings on the learning-curve simulator: epochs to the target per (min_epochs,
reduction_factor), against the default (TPE + median pruning).

Each setting runs the schedules section's ASHA method on its ``curves`` task (one study per seed
through ``hpsearch run``, every seed of the task, the budget and target as there) with only
``min_epochs`` and ``reduction_factor`` changed. The default's per-seed figures are the stored
ones (``bench/results/latest.json``, the schedules section): the same seeds and objective.

    .venv/bin/python -m bench.asha_settings 1,3 2,3 3,3 4,3 3,2 3,4

Prints one JSON object: per setting, its rungs, the median epochs to target over the seeds, how
many reached it, and the ratio to the default's median with its 95% bootstrap interval (as the
schedules table computes it).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import schedules
from bench.uncensored import stored_runs
from hpsearch.search.spec._scheduler import Schedule

ASHA = "tpe + asha (pausing)"


def setting(text: str) -> tuple[int, int]:
    """``MIN_EPOCHS,REDUCTION_FACTOR`` from the command line."""
    try:
        low, eta = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give MIN_EPOCHS,REDUCTION_FACTOR, two whole numbers (e.g. 3,3)"
        ) from None
    if low < 1 or eta < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: min_epochs >= 1 and reduction_factor >= 2")
    return low, eta


def _run(task: schedules.Task, method: schedules.Method, seed: int) -> schedules.Run:
    return schedules.search_run(task, method, seed=seed)


def measure(
    settings: list[tuple[int, int]], *, processes: int = 2, seeds: int | None = None
) -> dict[str, Any]:
    """Each setting over the task's seeds (``seeds``: the first so many)."""
    task = next(t for t in schedules.TASKS if t.name == "curves")
    task = dataclasses.replace(task, seeds=seeds or task.seeds)
    base = next(m for m in schedules.methods(task) if m.name == ASHA)
    default = [float(r["epochs_to_target"]) for r in stored_runs(task.name, schedules.DEFAULT)]
    rows = []
    for low, eta in settings:
        scheduler = {**base.sections["scheduler"], "min_epochs": low, "reduction_factor": eta}
        method = dataclasses.replace(base, sections={**base.sections, "scheduler": scheduler})
        with ThreadPoolExecutor(processes) as pool:
            runs = list(pool.map(functools.partial(_run, task, method), range(task.seeds)))
        outcomes = [schedules.epochs_to_target(r.curves, task.target) for r in runs]
        costs = [float(cost) for cost, _ in outcomes]
        low_ratio, high_ratio = schedules.ratio_interval(costs, default)
        row = {
            "min_epochs": low,
            "reduction_factor": eta,
            "rungs": Schedule(low, task.epochs, eta).rungs,
            "median_epochs_to_target": statistics.median(costs),
            "reached": f"{sum(hit for _, hit in outcomes)}/{len(outcomes)}",
            "vs_default": round(statistics.median(costs) / statistics.median(default), 3),
            "vs_default_95": [round(low_ratio, 3), round(high_ratio, 3)],
        }
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    return {
        "task": task.name,
        "target": task.target,
        "seeds": task.seeds,
        "default_median_epochs": statistics.median(default),
        "settings": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+", type=setting, help="MIN_EPOCHS,REDUCTION_FACTOR")
    args = parser.parse_args()
    print(json.dumps(measure(args.settings), indent=2))


if __name__ == "__main__":
    main()
