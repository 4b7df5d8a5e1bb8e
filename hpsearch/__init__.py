"""hpsearch: hyperparameter search for PyTorch training on Optuna studies in a SQL database.

The Python API (the same as the ``hpsearch`` commands)::

    import hpsearch

    study = hpsearch.run("studies/digits.toml", storage="sqlite:///hpsearch.db", workers=2)
    print(study.best_value, hpsearch.export("digits-mlp", storage="sqlite:///hpsearch.db"))

Your own model trains through the engine (imported on first use, with torch)::

    def objective(trial, params):
        return hpsearch.fit(trial, params, model=build, train=train_set, val=val_set,
                            loss=torch.nn.functional.mse_loss)

Subpackages (the repository's top-level folders): ``hpsearch.search`` (the study file, the
worker runtime, results, the CLI), ``hpsearch.objectives`` (how one trial trains) and
``hpsearch.storage`` (where study state lives). Importing ``hpsearch`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpsearch.errors import HpsearchError, ObjectiveError, SpecError, StorageError
from hpsearch.search._api import WorkersFailed, create, export, load, run, status, studies, worker

if TYPE_CHECKING:
    from hpsearch.objectives.trainer import Fitted, Metric, accuracy, fit

# The training engine needs torch: imported when first named, so that `import hpsearch` (and
# every command that does not train) stays light.
_ENGINE = ("Fitted", "Metric", "accuracy", "fit")


def __getattr__(name: str) -> Any:
    if name in _ENGINE:
        from hpsearch.objectives import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")


__all__ = [
    "Fitted",
    "HpsearchError",
    "Metric",
    "ObjectiveError",
    "SpecError",
    "StorageError",
    "WorkersFailed",
    "accuracy",
    "create",
    "export",
    "fit",
    "load",
    "run",
    "status",
    "studies",
    "worker",
]
