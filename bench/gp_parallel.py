"""Optuna's GP sampler in parallel: why the auto sampler's lead shrinks with several workers.

In one process, on the learning-curve simulator's four continuous parameters without noise
(bench/samplers.py), 50 trials per study, 20 seeds: proposals one at a time, or in batches of 4
asked before any is told (4 workers, each proposing while the other 3 run: trials long beside
a proposal, as training is). Regret: the best loss found minus the simulator's estimated
optimum, median over seeds with a 95% interval. GP as Optuna ships it (the auto sampler's:
running trials as fantasies of q-expected improvement), and two variants that override a
private method of Optuna's GPSampler, measurements, not features: running trials ignored, and
running trials as if they had ended at the best value so far (a constant liar); TPE for
reference.

    .venv/bin/python -m bench.gp_parallel [--samplers NAME ...] [--seeds 20]

``--through-workers`` runs studies through ``hpsearch run`` instead: the auto sampler (GP on this
space) with 1 worker, and Optuna's GP (``name = "gp"``) with 4. On this objective a trial is over as soon
as it is proposed, so the other workers' trials are mostly still being proposed (no params yet)
when one proposes: it measures the cost of concurrent proposals more than the handling of
running trials.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from bench.samplers import _final_loss, curves_optimum
from bench.schedules import median_interval

TRIALS = 50


class _IgnoreRunning(optuna.samplers.GPSampler):
    def _sample_relative_impl(  # type: ignore[no-untyped-def]
        self, study, completed_trials, running_trials, search_space
    ):
        return super()._sample_relative_impl(study, completed_trials, [], search_space)


class _ConstantLiar(optuna.samplers.GPSampler):
    def _sample_relative_impl(  # type: ignore[no-untyped-def]
        self, study, completed_trials, running_trials, search_space
    ):
        best = min(float(t.value) for t in completed_trials)
        lies = [
            optuna.trial.create_trial(
                value=best,
                params={name: _running_params(t)[name] for name in search_space},
                distributions=search_space,
            )
            for t in running_trials
        ]
        return super()._sample_relative_impl(study, [*completed_trials, *lies], [], search_space)


def _running_params(trial: FrozenTrial) -> dict[str, Any]:
    from optuna.samplers._gp.sampler import _get_params

    return dict(_get_params(trial))


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed),
    "gp, running ignored": lambda seed: _IgnoreRunning(seed=seed),
    "gp, constant liar": lambda seed: _ConstantLiar(seed=seed),
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
}


def _objective(trial: optuna.Trial) -> float:
    return _final_loss(
        trial.suggest_float("lr", 1e-4, 1.0, log=True),
        trial.suggest_int("width", 8, 1024, log=True),
        trial.suggest_float("warmup_epochs", 0.0, 10.0),
        trial.suggest_float("l2", 1e-6, 1e-1, log=True),
    )


def regret(sampler: str, seed: int, batch: int) -> float:
    study = optuna.create_study(sampler=SAMPLERS[sampler](seed))
    while len(study.trials) < TRIALS:
        asked = [study.ask() for _ in range(min(batch, TRIALS - len(study.trials)))]
        for trial, value in [(t, _objective(t)) for t in asked]:
            study.tell(trial, value)
    return study.best_value - curves_optimum()


def through_workers(*, seeds: int, trials: int) -> list[dict[str, Any]]:
    """The same task as studies through ``hpsearch run`` (bench/samplers.py's runs: SQLite,
    per-slot seeding, the workers of one node): the auto sampler with 1 worker (GP here), and
    Optuna's GP sampler (``name = "gp"``) with 4. Per method: the median regret after ``trials``
    with its 95% interval, and its ratio to auto with 1 worker."""
    from bench.samplers import Method, search_run, tasks

    curves = tasks()[-1]
    methods = (Method("auto, 1 worker", "auto", 1), Method("gp, 4 workers", "gp", 4))
    jobs = [(method, seed) for seed in range(seeds) for method in methods]
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda job: search_run(curves, *job, trials=trials), jobs))
    rows = []
    for method in methods:
        of = [run for (m, _), run in zip(jobs, runs, strict=True) if m is method]
        regrets = [run.regrets[trials - 1] for run in of]
        rows.append(
            {
                "method": method.name,
                "regret": statistics.median(regrets),
                "regret_95": list(median_interval(regrets)),
                "trial_seconds": statistics.median(run.trial_seconds for run in of),
            }
        )
    alone = rows[0]["regret"]
    for row in rows:
        row["vs_1_worker"] = row["regret"] / alone if alone else None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gp_parallel")
    parser.add_argument(
        "--through-workers",
        action="store_true",
        help="run studies through hpsearch run (1 worker, and 4) instead of one process",
    )
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument(
        "--samplers", nargs="*", choices=list(SAMPLERS), help="in one process: these only"
    )
    parser.add_argument("--trials", type=int, default=TRIALS, help="with --through-workers")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if args.through_workers:
        for row in through_workers(seeds=args.seeds, trials=args.trials):
            low, high = row["regret_95"]
            print(
                f"{row['method']:26s} regret at {args.trials}: {row['regret']:.5f} "
                f"({low:.5f}-{high:.5f}), {row['vs_1_worker']:.2f}x 1 worker, "
                f"trial {row['trial_seconds'] * 1000:.0f} ms",
                flush=True,
            )
        return
    for sampler in args.samplers or SAMPLERS:
        for batch in (1, 4):
            if batch == 1 and sampler.startswith("gp,"):
                continue  # one at a time, nothing else runs: the same as "gp"
            regrets = [regret(sampler, seed, batch) for seed in range(args.seeds)]
            low, high = median_interval(regrets)
            print(
                f"{sampler:40s} {'one at a time' if batch == 1 else '4 in parallel':14s} "
                f"regret at {TRIALS}: {statistics.median(regrets):.5f} ({low:.5f}-{high:.5f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
