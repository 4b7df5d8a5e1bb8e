"""Every private Optuna name hpsearch relies on, in one place.

Optuna's public API has no equivalent for these; a new Optuna release may rename or change any
of them. ``tests/test_optuna_internals.py`` checks each one against the installed Optuna and
fails with a message naming the internal, so an upgrade breaks one test, not a study.
"""

from __future__ import annotations

import os
import types
from typing import TYPE_CHECKING

import optuna
from optuna.storages._cached_storage import _CachedStorage

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from optuna.study._frozen import FrozenStudy
    from optuna.trial import FrozenTrial

__all__ = [
    "add_claimed_trial_to_cache",
    "alembic_folder",
    "enter_optimize_loop",
    "make_grpc_server",
    "rdb_models",
    "reseed_sampler",
    "save_dashboard_note",
    "stop_requested",
    "storage_of",
    "study_id_of",
    "trial_id_of",
]


def rdb_models() -> types.ModuleType:
    """Optuna's SQLAlchemy models (``optuna.storages._rdb.models``). Imported when first used:
    declaring them costs a command that never queries (``hpsearch --help``) a tenth of a second."""
    from optuna.storages._rdb import models

    return models


def study_id_of(study: optuna.Study | FrozenStudy) -> int:
    """The storage's id of a study (Optuna keeps it private on ``Study`` and ``FrozenStudy``)."""
    return int(study._study_id)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study object reads and writes through (``Study._storage``)."""
    storage: optuna.storages.BaseStorage = study._storage
    return storage


def trial_id_of(trial: FrozenTrial | optuna.Trial) -> int:
    """The storage's id of a trial (``FrozenTrial._trial_id``, ``Trial._trial_id``)."""
    return int(trial._trial_id)


def add_claimed_trial_to_cache(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Make Optuna's trial cache (``_CachedStorage``) know a trial claimed without reading it
    through the cache; False when the storage has no such cache for the study (then the caller
    reads the trials the public way)."""
    cache = study._storage
    if not isinstance(cache, _CachedStorage) or study._study_id not in cache._studies:
        return False
    with cache._lock:
        cache._add_trials_to_cache(study._study_id, [trial])
        cache._studies[study._study_id].unfinished_trial_ids.add(trial._trial_id)
    return True


def enter_optimize_loop(study: optuna.Study) -> None:
    """Mark the calling thread as inside ``Study.optimize``, as Optuna's own loop does, so that a
    sampler may call ``study.stop()`` (the grid sampler does once its grid is exhausted)."""
    study._thread_local.in_optimize_loop = True
    study._stop_flag = False


def stop_requested(study: optuna.Study) -> bool:
    """Whether ``study.stop()`` was called inside the loop."""
    return bool(study._stop_flag)


def make_grpc_server(
    storage: optuna.storages.BaseStorage, host: str, port: int, executor: ThreadPoolExecutor
) -> grpc.Server:
    """Optuna's gRPC storage proxy server (``optuna.storages._grpc.server.make_server``)."""
    from optuna.storages._grpc.server import make_server

    server: grpc.Server = make_server(storage, host, port, executor)
    return server


def alembic_folder() -> str:
    """The folder of Optuna's schema migrations (alembic scripts) inside the installed Optuna."""
    from optuna.storages._rdb import storage as rdb_module

    return os.path.join(os.path.dirname(rdb_module.__file__), "alembic")


def reseed_sampler(sampler: optuna.samplers.BaseSampler, seed: int) -> int:
    """Seed every random state of ``sampler`` and of the samplers it delegates to (TPE's and
    NSGA's start-up ``_random_sampler``, GP's, CMA-ES's and QMC's ``_independent_sampler``, a
    partially fixed sampler's base), each from ``seed`` and its own path, so that the sampler's
    next proposals depend on ``seed`` alone (and, for a model-based phase, on the history).
    Returns how many random states it seeded (a test checks each sampler has some)."""
    import numpy as np
    from optuna.samplers._lazy_random_state import LazyRandomState

    def visit(obj: object, path: str, seen: set[int]) -> int:
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        seeded = 0
        for name, value in vars(obj).items():
            if isinstance(value, LazyRandomState):
                entropy = [seed, *f"{path}.{name}".encode()]
                value.rng.seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
                seeded += 1
            elif isinstance(value, optuna.samplers.BaseSampler):
                seeded += visit(value, f"{path}.{name}", seen)
        return seeded

    return visit(sampler, "sampler", set())


def save_dashboard_note(study: optuna.Study, body: str) -> None:
    """``optuna_dashboard.save_note(study, body)`` without importing the dashboard's app.

    The package's ``__init__`` imports its web app, and with it scikit-learn (Optuna's fANOVA
    importance): two seconds before a new study's first trial. Its ``_note`` module needs only
    Optuna, so it is loaded from its file on its own."""
    import importlib.util
    import sys

    loaded = sys.modules.get("optuna_dashboard")
    if loaded is not None:
        loaded.save_note(study, body)
        return
    package = importlib.util.find_spec("optuna_dashboard")
    assert package is not None and package.origin is not None, "optuna-dashboard is installed"
    spec = importlib.util.spec_from_file_location(
        "hpsearch_dashboard_note", os.path.join(os.path.dirname(package.origin), "_note.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.save_note(study, body)
