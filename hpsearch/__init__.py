"""hpsearch: hyperparameter search for PyTorch training on Optuna studies in a SQL database.

The Python API (the same as the ``hpsearch`` commands)::

    import hpsearch

    study = hpsearch.run("studies/digits.toml", storage="sqlite:///hpsearch.db", workers=2)
    print(study.best_value, hpsearch.export("digits-mlp", storage="sqlite:///hpsearch.db"))

Subpackages (the repository's top-level folders): ``hpsearch.search`` (the study file, the
worker runtime, results, the CLI), ``hpsearch.objectives`` (how one trial trains) and
``hpsearch.storage`` (where study state lives). Importing ``hpsearch`` does not import torch.
"""

from __future__ import annotations

from hpsearch.errors import HpsearchError, ObjectiveError, SpecError, StorageError
from hpsearch.search._api import WorkersFailed, create, export, load, run, status, studies, worker

__all__ = [
    "HpsearchError",
    "ObjectiveError",
    "SpecError",
    "StorageError",
    "WorkersFailed",
    "create",
    "export",
    "load",
    "run",
    "status",
    "studies",
    "worker",
]
