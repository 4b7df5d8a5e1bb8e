"""Warm starts on related tasks: trials until a target regret, cold against warm-started.

A pair is two HPOBench MLP tables (bench/tabular.py): the *source* dataset's study runs first
(TPE, ``TRIALS`` trials); then the *target* dataset is searched twice with the same seed, cold
and with ``[warm_start] studies = [source]``. Every study goes through ``hpsearch run`` on one
SQLite file with one worker. The target regret of a pair is the median, over seeds, of the cold
searches' regret at their last trial; per seed, the trials each search took to reach it (a search
that never did counts ``TRIALS``, a lower bound). Reported per pair: medians over seeds and the
ratio warm / cold of the median trials, with a 95% bootstrap interval.
"""

from __future__ import annotations

import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import tomli_w

from bench import tabular
from bench.schedules import ratio_interval, run_study

ROOT = Path(__file__).resolve().parent.parent
TRIALS = 50
# (source, target): tables of the same MLP grid on other data.
PAIRS = (
    ("credit_g", "australian"),
    ("vehicle", "segment"),
    ("phoneme", "kc1"),
    ("car", "blood_transfusion"),
)


def _study(name: str, dataset: str, seed: int, warm: str | None) -> dict[str, Any]:
    return {
        "study": {
            "name": name,
            "objective": f"{ROOT / 'bench' / 'tabular.py'}:hpobench",
            "direction": "maximize",
            "metric": "val_acc",
        },
        "budget": {"n_trials": TRIALS},
        "sampler": {"name": "tpe", "seed": seed},
        "pruner": {"name": "none"},
        "resources": {"workers": 1},
        "training": {"dataset": dataset},
        "space": tabular.space(dataset),
        **({"warm_start": {"studies": [warm]}} if warm else {}),
    }


def _run(folder: Path, url: str, study: dict[str, Any]) -> list[float]:
    """One study through ``hpsearch run``: its values in trial order."""
    path = folder / f"{study['study']['name']}.toml"
    path.write_text(tomli_w.dumps(study))
    run_study(path, url, path.name)
    trials = optuna.load_study(study_name=study["study"]["name"], storage=url).get_trials()
    return [float(t.value) for t in sorted(trials, key=lambda t: t.number) if t.value is not None]


def pair_run(source: str, target: str, seed: int, trials: int) -> tuple[list[float], list[float]]:
    """Regrets after each trial on ``target``: cold, then warm-started from ``source``."""
    with tempfile.TemporaryDirectory(prefix="hpsearch-warm-") as name:
        folder, url = Path(name), f"sqlite:///{name}/runs.db"

        def run(study: dict[str, Any]) -> list[float]:
            study["budget"]["n_trials"] = trials
            return _run(folder, url, study)

        run(_study("source", source, seed, None))
        top = tabular.best(target)
        regrets = []
        for warm in (None, "source"):
            values = run(_study("warm" if warm else "cold", target, seed, warm))
            regrets.append([top - max(values[: i + 1]) for i in range(len(values))])
        return regrets[0], regrets[1]


def _to_reach(regrets: list[float], target: float) -> int:
    """Trials until the regret was at or below ``target`` (all of them if never)."""
    return next((i + 1 for i, r in enumerate(regrets) if r <= target), len(regrets))


def measure(*, quick: bool, processes: int = 2) -> dict[str, Any]:
    """Every pair over its seeds (quick: one pair, 2 seeds, 12 trials: that it runs)."""
    pairs, seeds, trials = (PAIRS[:1], 2, 12) if quick else (PAIRS, 10, TRIALS)
    jobs = [(source, target, seed) for source, target in pairs for seed in range(seeds)]
    with ThreadPoolExecutor(processes) as pool:
        runs = list(pool.map(lambda job: pair_run(*job, trials=trials), jobs))
    rows = []
    for source, target in pairs:
        of = [run for (s, t, _), run in zip(jobs, runs, strict=True) if (s, t) == (source, target)]
        goal = statistics.median(cold[-1] for cold, _ in of)
        cold_trials = [float(_to_reach(cold, goal)) for cold, _ in of]
        warm_trials = [float(_to_reach(warm, goal)) for _, warm in of]
        low, high = ratio_interval(warm_trials, cold_trials)
        rows.append(
            {
                "source": source,
                "target": target,
                "target_regret": goal,
                "median_trials_cold": statistics.median(cold_trials),
                "median_trials_warm": statistics.median(warm_trials),
                "warm_vs_cold": round(
                    statistics.median(warm_trials) / statistics.median(cold_trials), 3
                ),
                "warm_vs_cold_95": [round(low, 3), round(high, 3)],
                "median_final_regret_cold": statistics.median(c[-1] for c, _ in of),
                "median_final_regret_warm": statistics.median(w[-1] for _, w in of),
            }
        )
    return {"trials": trials, "seeds": seeds, "sampler": "tpe", "pairs": rows}
