"""Epochs to target without the budget's cap, for a method whose runs did not all get there.

``bench/schedules.py`` gives every method the same epochs; a run that never reached the target
counts every epoch it spent, a lower bound, so a median over such runs is censored (``>= 72``).
Here the censored seeds of one method are run again with ``--factor`` times the budget. A run's
first epochs do not depend on its budget (the sampler is reseeded per slot, the budget only ends
the study), so the larger run is the capped one continued: its epochs to target are the capped
run's, measured instead of bounded. The other seeds keep their stored figures
(``bench/results/latest.json``, the schedules section).

    .venv/bin/python -m bench.uncensored --task charlm --factor 3 > default.json
    .venv/bin/python -m bench.uncensored --task charlm --method "tpe + asha (pausing)" > asha.json
    .venv/bin/python -m bench.uncensored --compare asha.json default.json

``--compare`` prints the ratio of the first method's median to the second's, with the same 95%
percentile-bootstrap interval as the schedules table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import schedules

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def stored_runs(task: str, method: str) -> list[dict[str, Any]]:
    """The per-seed figures of ``method`` on ``task`` from the stored schedules section."""
    section = json.loads(RESULTS.read_text())["schedules"]
    [table] = [t["table"] for t in section["tasks"] if t["task"] == task]
    [row] = [r for r in table if r["method"] == method]
    return list(row["per_seed"])


def uncensor(task_name: str, method_name: str, factor: int) -> dict[str, Any]:
    task = next(t for t in schedules.TASKS if t.name == task_name)
    method = next(m for m in schedules.methods(task) if m.name == method_name)
    wider = dataclasses.replace(task, budget=factor * task.budget)
    runs = stored_runs(task_name, method_name)
    epochs: list[int] = []
    reran: dict[int, dict[str, Any]] = {}
    for seed, stored in enumerate(runs):
        if stored["reached"]:
            epochs.append(int(stored["epochs_to_target"]))
            continue
        run = schedules.search_run(wider, method, seed=seed)
        spent, reached = schedules.epochs_to_target(run.curves, task.target, maximize=task.maximize)
        reran[seed] = {"epochs_to_target": spent, "reached": reached, "budget": wider.budget}
        print(f"{task_name}, {method_name}, seed {seed}: {reran[seed]}", file=sys.stderr)
        epochs.append(spent)
    reached = sum(1 for seed, r in enumerate(runs) if r["reached"] or reran[seed]["reached"])
    return {
        "task": task_name,
        "method": method_name,
        "factor": factor,
        "epochs_to_target": epochs,
        "reached": f"{reached}/{len(runs)}",
        "median": statistics.median(epochs),
        "reran": reran,
    }


def compare(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """median(first) / median(second), with a 95% bootstrap interval over their seeds."""
    low, high = schedules.ratio_interval(first["epochs_to_target"], second["epochs_to_target"])
    return {
        "task": first["task"],
        "methods": [first["method"], second["method"]],
        "medians": [first["median"], second["median"]],
        "ratio": first["median"] / second["median"],
        "interval_95": [low, high],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="charlm", choices=[t.name for t in schedules.TASKS])
    parser.add_argument("--method", default=schedules.DEFAULT)
    parser.add_argument("--factor", type=int, default=3, help="budget multiple for the reruns")
    parser.add_argument("--compare", nargs=2, metavar="JSON", help="two outputs of this script")
    args = parser.parse_args()
    if args.compare:
        first, second = (json.loads(Path(path).read_text()) for path in args.compare)
        print(json.dumps(compare(first, second), indent=2))
        return
    print(json.dumps(uncensor(args.task, args.method, args.factor), indent=2))


if __name__ == "__main__":
    main()
