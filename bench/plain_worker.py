"""One plain Optuna worker of the coordination benchmark (bench/overhead.py).

    python -m bench.plain_worker URL SAMPLER N_TRIALS SEED

It imports Optuna and the trivial objective only, as a hand-written Optuna loop would, so that
its start-up does not pay for hpsearch's imports (torch among them). URL is a database URL, or
``redis://HOST:PORT#PREFIX`` for Optuna's JournalStorage on Redis, its log under keys ``PREFIX:*``.
"""

from __future__ import annotations

import sys
import warnings

import optuna
from optuna.storages.journal import JournalRedisBackend

from bench.trivial import plain_objective

STUDY = "overhead"


def open_storage(url: str) -> str | optuna.storages.BaseStorage:
    """What ``optuna.load_study(storage=...)`` takes for ``url``: a JournalStorage for Redis."""
    if not url.startswith("redis://"):
        return url
    address, _, prefix = url.partition("#")
    with warnings.catch_warnings():  # "JournalRedisBackend is experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        backend = JournalRedisBackend(address, prefix=prefix)
    return optuna.storages.JournalStorage(backend)


def sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler hpsearch builds from the same study file (search/_samplers.py): Optuna's
    defaults, since the benchmark's one-parameter space is not conditional."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def main() -> int:
    url, name, n_trials, seed = sys.argv[1:5]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=STUDY, storage=open_storage(url), sampler=sampler(name, int(seed))
    )
    study.optimize(plain_objective, n_trials=int(n_trials))
    return 0


if __name__ == "__main__":
    sys.exit(main())
