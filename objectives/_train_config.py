"""The engine's configuration: the options a trial trains with, the optimizer they build, and
what a training run gives back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from hpsearch.objectives._choices import AMP_MODES, OPTIMIZERS, STRATEGIES
from hpsearch.objectives._options import TRAINING
from hpsearch.objectives.batching import BatchPlan
from hpsearch.objectives.schedules import ScheduleConfig


class TrialLike(Protocol):
    """The part of ``optuna.Trial`` the engine uses; lets it run without a study."""

    def report(self, value: float, step: int) -> None: ...
    def should_prune(self) -> bool: ...
    def set_user_attr(self, key: str, value: Any) -> None: ...


@dataclass(frozen=True)
class TrainConfig:
    """The engine's options; their defaults live in ``objectives/_options.py``."""

    epochs: int
    batch_size: int  # effective: samples per optimizer step over all devices
    lr: float
    optimizer: str = TRAINING["optimizer"]
    momentum: float = TRAINING["momentum"]
    nesterov: bool = TRAINING["nesterov"]
    l1: float = TRAINING["l1"]
    l2: float = TRAINING["l2"]
    seed: int = TRAINING["seed"]
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    micro_batch: int | None = None  # cap on samples per forward on one device
    amp: str = TRAINING["amp"]  # autocast on CUDA: bf16 where supported ("auto"), "fp16", "off"
    compile: bool = TRAINING["compile"]
    maximize: bool = True  # direction of the reported metric (for ReduceLROnPlateau)
    checkpoint: str | None = None  # file saved after every epoch and resumed from if present
    checkpoint_every: int = TRAINING["checkpoint_every"]  # also every N optimizer steps (0: off)
    loader_workers: int = TRAINING["loader_workers"]
    strategy: str = TRAINING["strategy"]  # several devices: "ddp" replicates, "fsdp" shards
    cpu_offload: bool = TRAINING["cpu_offload"]

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.l1 < 0 or self.l2 < 0:
            raise ValueError(f"l1 and l2 must be >= 0, got l1={self.l1} l2={self.l2}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if self.checkpoint_every < 0 or self.loader_workers < 0:
            raise ValueError(
                "checkpoint_every and loader_workers must be >= 0, got "
                f"{self.checkpoint_every} and {self.loader_workers}"
            )

    @classmethod
    def from_options(cls, params: Mapping[str, Any], **overrides: Any) -> TrainConfig:
        """The config a trial's ``params`` give, every option it does not name at its default."""
        o = {**TRAINING, **params}
        micro = o["micro_batch"]
        config = cls(
            epochs=int(o["epochs"]),
            batch_size=int(o["batch_size"]),
            lr=float(o["lr"]),
            optimizer=str(o["optimizer"]),
            momentum=float(o["momentum"]),
            nesterov=bool(o["nesterov"]),
            l1=float(o["l1"]),
            l2=float(o["l2"]),
            seed=int(o["seed"]),
            schedule=ScheduleConfig(
                name=str(o["schedule"]),
                warmup_epochs=float(o["warmup_epochs"]),
                step_size=int(o["step_size"]),
                gamma=float(o["gamma"]),
                plateau_patience=int(o["plateau_patience"]),
                plateau_factor=float(o["plateau_factor"]),
            ),
            micro_batch=None if micro in (None, 0) else int(micro),
            amp=str(o["amp"]),
            compile=bool(o["compile"]),
            checkpoint_every=int(o["checkpoint_every"]),
            loader_workers=int(o["loader_workers"]),
            strategy=str(o["strategy"]),
            cpu_offload=bool(o["cpu_offload"]),
        )
        return dataclasses.replace(config, **overrides)

    def as_options(self) -> dict[str, Any]:
        """The engine options this config trains with (``from_options`` of them gives it back,
        but for ``maximize`` and ``checkpoint``, which the trial's context gives)."""
        schedule = self.schedule
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "optimizer": self.optimizer,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "l1": self.l1,
            "l2": self.l2,
            "seed": self.seed,
            "schedule": schedule.name,
            "warmup_epochs": schedule.warmup_epochs,
            "step_size": schedule.step_size,
            "gamma": schedule.gamma,
            "plateau_patience": schedule.plateau_patience,
            "plateau_factor": schedule.plateau_factor,
            "micro_batch": self.micro_batch or 0,
            "amp": self.amp,
            "compile": self.compile,
            "checkpoint_every": self.checkpoint_every,
            "loader_workers": self.loader_workers,
            "strategy": self.strategy,
            "cpu_offload": self.cpu_offload,
        }


@dataclass
class TrainResult:
    metric: float  # the last evaluation's value of the reported metric
    plan: BatchPlan
    lr_history: list[float] = field(default_factory=list)  # learning rate at each epoch's end
    oom_fallbacks: list[dict[str, int]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation, by name


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """L2 is the optimizer's weight decay (decoupled for AdamW)."""
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.l2,
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.l2)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.l2)
    raise ValueError(
        f"Unknown optimizer {cfg.optimizer!r}; expected one of: {', '.join(OPTIMIZERS)}"
    )


def l1_penalty(model: nn.Module, *, all_params: bool = False) -> torch.Tensor:
    """Sum of |w| over weight matrices and kernels; biases and norm scales only if asked."""
    weights = [p for p in model.parameters() if all_params or p.ndim > 1]
    return torch.stack([w.abs().sum() for w in weights]).sum()
