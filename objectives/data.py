"""Datasets as preloaded tensors: training batches are index lookups, never per-sample Python."""

from __future__ import annotations

import functools
import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class TensorDataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int

    @property
    def num_features(self) -> int:
        return int(self.x_train[0].numel())

    def to(self, device: torch.device) -> TensorDataset:
        return TensorDataset(
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_val.to(device),
            self.y_val.to(device),
            self.num_classes,
        )


def _digits_arrays() -> tuple[Any, Any]:
    """(pixels, labels) as scikit-learn's ``load_digits`` returns them. Read straight from the
    CSV file scikit-learn ships: importing ``sklearn.datasets`` takes longer (seconds, with
    SciPy) than anything else a worker does before its first trial."""
    import numpy

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    folder = spec.submodule_search_locations if spec is not None else None
    path = Path(next(iter(folder or [""])), "datasets", "data", "digits.csv.gz")
    if not path.is_file():  # a scikit-learn that keeps it elsewhere: its own loader
        from sklearn.datasets import load_digits as sklearn_digits

        bunch = sklearn_digits()
        return bunch.data, bunch.target
    with gzip.open(path, "rt") as rows:
        data = numpy.loadtxt(rows, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int)


@functools.lru_cache(maxsize=4)
def load_digits(val_fraction: float = 0.2) -> TensorDataset:
    """scikit-learn's 8x8 digits (1,797 images, shipped inside the package), scaled to [0, 1].

    The split is fixed (seed 0) so that every trial is scored on the same validation set.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    pixels, labels = _digits_arrays()
    x = torch.tensor(pixels, dtype=torch.float32) / 16.0
    y = torch.tensor(labels, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_val = max(1, round(len(x) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train], x[val], y[val], num_classes=10)
