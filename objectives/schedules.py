"""Learning-rate schedules, and when each one steps.

Per-step schedules (cosine with warmup, one-cycle) step after every optimizer step; ``step``
decays per epoch; ReduceLROnPlateau steps once per epoch on the validation metric (never on a
batch's training loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from hpsearch.objectives._choices import SCHEDULES

Interval = Literal["step", "epoch", "plateau", "never"]


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "none"
    warmup_epochs: float = 0.0  # cosine: linear warmup from 0 over this many epochs
    step_size: int = 10  # step: decay every this many epochs
    gamma: float = 0.1  # step: decay factor
    plateau_patience: int = 2  # plateau: epochs without improvement before a decay
    plateau_factor: float = 0.5  # plateau: decay factor

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(
                f"Unknown schedule {self.name!r}; expected one of: {', '.join(SCHEDULES)}"
            )


@dataclass
class Schedule:
    scheduler: (
        torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None
    )
    interval: Interval

    def after_optimizer_step(self) -> None:
        if self.interval == "step" and self.scheduler is not None:
            self.scheduler.step()

    def after_epoch(self, val_metric: float) -> None:
        if self.interval == "epoch" and self.scheduler is not None:
            self.scheduler.step()
        elif self.interval == "plateau" and isinstance(
            self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau
        ):
            self.scheduler.step(val_metric)


def make_schedule(
    optimizer: torch.optim.Optimizer,
    cfg: ScheduleConfig,
    *,
    epochs: int,
    steps_per_epoch: int,
    lr: float,
    maximize: bool = True,
) -> Schedule:
    lr_scheduler = torch.optim.lr_scheduler
    total = max(1, epochs * steps_per_epoch)
    if cfg.name == "none":
        return Schedule(None, "never")
    if cfg.name == "step":
        return Schedule(
            lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma), "epoch"
        )
    if cfg.name == "cosine":
        warmup = round(cfg.warmup_epochs * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        return Schedule(lr_scheduler.LambdaLR(optimizer, factor), "step")
    if cfg.name == "onecycle":
        return Schedule(lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total), "step")
    return Schedule(
        lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max" if maximize else "min",
            patience=cfg.plateau_patience,
            factor=cfg.plateau_factor,
        ),
        "plateau",
    )


def rescale_lr(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler
    | torch.optim.lr_scheduler.ReduceLROnPlateau
    | None,
    ratio: float,
) -> None:
    """Scale every learning rate the optimizer and its schedule hold by ``ratio``.

    A run resumed with a new base lr continues its schedule where it was, at the new scale:
    the current lr keeps the schedule's factor, and what the schedule computes the next ones
    from (LambdaLR's and StepLR's ``base_lrs``, OneCycleLR's ``max_lr``, ``initial_lr`` and
    ``min_lr`` group entries) scales with it. ReduceLROnPlateau and no schedule read the
    group's lr alone.
    """
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if key in group:
                group[key] *= ratio
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * ratio for lr in scheduler.base_lrs]
    if scheduler is not None and hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
