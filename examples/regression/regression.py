"""Your own model: a regression MLP on a map-style Dataset read from a CSV file.

hpsearch's engine (``hpsearch.fit``) does the training: the batch plan and accumulation, the
optimizer and schedule the study searches, checkpoints and resume, NaN pruning, DDP when the
worker owns several devices. This file only says what to train on and how to score it.
Run it with ``hpsearch run examples/regression/study.toml``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import hpsearch

DATA = Path(__file__).with_name("friedman.csv")  # Friedman #1: 10 features, 5 of them used


class CsvRows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Rows ``[start, stop)`` of a CSV file whose last column is the target."""

    def __init__(self, path: Path, start: int, stop: int | None = None) -> None:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))[1:][start:stop]
        table = torch.tensor([[float(v) for v in row] for row in rows])
        self.x, self.y = table[:, :-1], table[:, -1:]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


def build(params: Mapping[str, Any]) -> nn.Module:
    width, depth = int(params["width"]), int(params["depth"])
    layers: list[nn.Module] = []
    features = 10
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.SiLU()]
        features = width
    return nn.Sequential(*layers, nn.Linear(features, 1))


# Declares that the objective trains through the engine and reads two options of its own:
# `hpsearch create` then refuses any other name (a misspelt `epoch` or `batchsize`) in one line.
@hpsearch.uses_engine(options=["width", "depth"])
def objective(trial: Any, params: dict[str, Any]) -> dict[str, float]:
    return hpsearch.fit(
        trial,
        params,
        model=build,
        train=CsvRows(DATA, 0, 1600),
        val=CsvRows(DATA, 1600),
        loss=F.mse_loss,
        metrics={"mse": F.mse_loss},
    )
