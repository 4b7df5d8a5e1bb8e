"""hpsearch: hyperparameter search for PyTorch training on Optuna studies in a SQL database.

The Python API (the same as the ``hpsearch`` commands)::

    import hpsearch

    study = hpsearch.run("studies/digits.toml", storage="sqlite:///hpsearch.db", workers=2)
    print(study.best_value, hpsearch.export("digits-mlp", storage="sqlite:///hpsearch.db"))

Your own model trains through the engine (imported on first use, with torch)::

    def objective(trial, params):
        return hpsearch.fit(trial, params, model=build, train=train_set, val=val_set,
                            loss=torch.nn.functional.mse_loss)

An objective that declares ``@hpsearch.uses_engine(options=["width"])`` has its study file's
engine options checked at ``create``, as a built-in's are.

A training loop of your own reports, checkpoints, resumes and stops through the service::

    saved = hpsearch.get_checkpoint(trial)        # what a retried or promoted trial resumes from
    hpsearch.report(trial, {"loss": loss}, epoch, checkpoint={"model": model.state_dict(), ...})

Subpackages (the repository's top-level folders): ``hpsearch.search`` (the study file, the
worker runtime, results, the CLI), ``hpsearch.objectives`` (how one trial trains) and
``hpsearch.storage`` (where study state lives). Importing ``hpsearch`` imports neither torch,
Optuna nor SQLAlchemy: each name loads what it needs when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hpsearch.errors import HpsearchError, ObjectiveError, SpecError, StorageError

if TYPE_CHECKING:
    from hpsearch.objectives._options import uses_engine
    from hpsearch.objectives.command import connect
    from hpsearch.objectives.interrupt import TrialInterrupted
    from hpsearch.objectives.reporting import (
        Sharded,
        get_checkpoint,
        report,
        report_fixed,
        resumable,
        safe_point,
    )
    from hpsearch.objectives.trainer import Fitted, Metric, accuracy, fit
    from hpsearch.search._api import (
        WorkersFailed,
        create,
        export,
        load,
        run,
        status,
        studies,
        worker,
    )

# The package's face is lazy: each name is imported when first named. `import hpsearch` stays
# light, and importing a subpackage (`hpsearch.objectives.context`, the engine in a worker) never
# loads what another needs: the API needs Optuna's storage and SQLAlchemy, the engine torch.
_LAZY = {
    **dict.fromkeys(("Fitted", "Metric", "accuracy", "fit"), "hpsearch.objectives.trainer"),
    "uses_engine": "hpsearch.objectives._options",
    "connect": "hpsearch.objectives.command",
    "TrialInterrupted": "hpsearch.objectives.interrupt",
    **dict.fromkeys(
        ("Sharded", "get_checkpoint", "report", "report_fixed", "resumable", "safe_point"),
        "hpsearch.objectives.reporting",
    ),
    **dict.fromkeys(
        ("WorkersFailed", "create", "export", "load", "run", "status", "studies", "worker"),
        "hpsearch.search._api",
    ),
}
_SUBPACKAGES = ("objectives", "search", "storage")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"hpsearch.{name}")
    raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "Fitted",
    "HpsearchError",
    "Metric",
    "ObjectiveError",
    "Sharded",
    "SpecError",
    "StorageError",
    "TrialInterrupted",
    "WorkersFailed",
    "accuracy",
    "connect",
    "create",
    "export",
    "fit",
    "get_checkpoint",
    "load",
    "report",
    "report_fixed",
    "resumable",
    "run",
    "safe_point",
    "status",
    "studies",
    "uses_engine",
    "worker",
]
