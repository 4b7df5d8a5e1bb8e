"""One plain Optuna worker of the coordination benchmark (bench/overhead.py).

    python -m bench.plain_worker URL SAMPLER N_TRIALS SEED

It imports Optuna and the trivial objective only, as a hand-written Optuna loop would, so that
its start-up does not pay for hpsearch's imports (torch among them).
"""

from __future__ import annotations

import sys

import optuna

from bench.trivial import plain_objective

STUDY = "overhead"


def sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler hpsearch builds from the same study file (search/_samplers.py): Optuna's
    defaults, since the benchmark's one-parameter space is not conditional."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def main() -> int:
    url, name, n_trials, seed = sys.argv[1:5]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=STUDY, storage=url, sampler=sampler(name, int(seed)))
    study.optimize(plain_objective, n_trials=int(n_trials))
    return 0


if __name__ == "__main__":
    sys.exit(main())
