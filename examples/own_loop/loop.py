"""A training loop of your own, served by hpsearch: report, checkpoint, resume, stop.

No ``hpsearch.fit`` here: the loop is plain PyTorch (an MLP on the regression example's CSV
file), and four calls give it what ``fit`` gets. ``hpsearch.get_checkpoint`` hands a retried
trial (its worker killed, its node preempted) or a promoted one (ASHA) the state its last
report saved; ``hpsearch.report`` saves the next, reports the study's metric to the pruner and
stops the trial where the pruner, the budget or a SIGTERM says so. Under DDP
(``devices_per_trial = 2``) every rank runs this same function and gets the same parameters and
decisions. Run it with ``hpsearch run examples/own_loop/study.toml``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import hpsearch

DATA = Path(__file__).resolve().parent.parent / "regression" / "friedman.csv"


def load(start: int, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    with DATA.open(newline="") as handle:
        rows = list(csv.reader(handle))[1:][start:stop]
    table = torch.tensor([[float(v) for v in row] for row in rows])
    return table[:, :-1], table[:, -1:]


@hpsearch.resumable  # a pausing schedule (ASHA, PBT) may pause it and resume it later
def objective(trial: Any, params: dict[str, Any]) -> float:
    torch.manual_seed(params.get("seed", 0))
    model = nn.Sequential(nn.Linear(10, params["width"]), nn.SiLU(), nn.Linear(params["width"], 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
    saved = hpsearch.get_checkpoint(trial)  # None for a fresh trial
    start = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        for group in optimizer.param_groups:  # PBT may resume it with another lr
            group["lr"] = params["lr"]
        start = saved["epoch"] + 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    trained = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    x, y = load(0, 1600)
    val_x, val_y = load(1600)
    batch = params["batch_size"]
    mse = float("nan")
    for epoch in range(start, params["epochs"]):
        # Each epoch's order depends on the epoch alone: a resumed trial sees the same batches.
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for first in range(0, len(x) - batch + 1, batch):
            rows = order[first : first + batch][rank::world]  # this rank's share of the batch
            optimizer.zero_grad()
            F.mse_loss(trained(x[rows]), y[rows]).backward()
            optimizer.step()
        with torch.no_grad():
            mse = F.mse_loss(model(val_x), val_y).item()
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        hpsearch.report(trial, {"mse": mse}, epoch, checkpoint=state)
    return mse
