"""A Lightning model tuned by hpsearch: the regression example's MLP as a LightningModule.

``objective`` is the study's objective (``hpsearch run examples/lightning/study.toml``): the
worker calls it per trial, the callback reports, checkpoints, resumes and prunes. ``train.py``
is the same training as a script, for torchrun and a command study on several ranks.
"""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hpsearch.objectives.lightning import HpsearchCallback

# Lightning's notes at INFO (devices found, tips) would fill the worker's log every trial.
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's, about torch's pytree

DATA = Path(__file__).resolve().parent.parent / "regression" / "friedman.csv"


def _rows(start: int, stop: int | None = None) -> TensorDataset:
    with DATA.open(newline="") as handle:
        rows = list(csv.reader(handle))[1:][start:stop]
    table = torch.tensor([[float(v) for v in row] for row in rows])
    return TensorDataset(table[:, :-1], table[:, -1:])


class Regression(pl.LightningModule):
    def __init__(self, width: int, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(10, width), nn.SiLU(), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self(x), y)

    def validation_step(self, batch: Any, _: int) -> None:
        x, y = batch
        self.log("mse", F.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def fit(trial: Any, params: dict[str, Any], **trainer: Any) -> float:
    """Train with Lightning; the study's metric at the last validation."""
    pl.seed_everything(int(params.get("seed", 0)), verbose=False)
    callback = HpsearchCallback(trial, metric="mse")
    batch = int(params["batch_size"])
    # A fixed order: a resumed trial sees the batches it would have seen (Lightning restores
    # the loops, not a shuffling sampler's generator).
    train = DataLoader(_rows(0, 1600), batch_size=batch)
    val = DataLoader(_rows(1600), batch_size=400)
    pl.Trainer(
        max_epochs=int(params["epochs"]),
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,  # the callback keeps the trial's one checkpoint
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer,
    ).fit(
        Regression(int(params["width"]), float(params["lr"])),
        train,
        val,
        ckpt_path=callback.resume_from(),
    )
    assert callback.value is not None
    return callback.value


def objective(trial: Any, params: dict[str, Any]) -> float:
    return fit(trial, params, accelerator="cpu", devices=1)
