"""Optuna's GP sampler in parallel: why the auto sampler's lead shrinks with several workers.

In one process, on the learning-curve simulator's four continuous parameters without noise
(bench/samplers.py), 50 trials per study, 10 seeds: proposals one at a time, or in batches of 4
asked before any is told (4 workers, each proposing while the other 3 run). Regret: the best
loss found minus the simulator's estimated optimum, median over seeds. The GP variants that
treat running trials otherwise than Optuna does (``ignore``: as if they did not exist; ``liar``:
as if they had ended at the best value so far) override a private method of Optuna's
GPSampler; they are measurements, not features.

    .venv/bin/python -m bench.gp_parallel
"""

from __future__ import annotations

import copy
import statistics
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bench.samplers import _final_loss, curves_optimum

TRIALS, SEEDS = 50, 10


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
        lies = []
        for trial in running_trials:
            lie = copy.copy(trial)
            lie.state, lie.values = TrialState.COMPLETE, [best]
            lie.params = dict(_running_params(trial))
            lie.distributions = dict(search_space)
            lies.append(lie)
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


def main() -> None:
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for sampler in SAMPLERS:
        for batch in (1, 4):
            if batch == 1 and sampler.startswith("gp,"):
                continue  # one at a time, nothing else runs: the same as "gp"
            median = statistics.median(regret(sampler, seed, batch) for seed in range(SEEDS))
            print(
                f"{sampler:22s} {'one at a time' if batch == 1 else '4 in parallel':14s} "
                f"regret at {TRIALS}: {median:.5f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
