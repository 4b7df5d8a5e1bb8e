"""The training loop: preloaded tensors, one report per epoch, pruning honoured."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from objectives.data import TensorDataset

log = logging.getLogger(__name__)


class TrialLike(Protocol):
    """The part of ``optuna.Trial`` the trainer uses; lets the trainer run without a study."""

    def report(self, value: float, step: int) -> None: ...
    def should_prune(self) -> bool: ...
    def set_user_attr(self, key: str, value: Any) -> None: ...


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the caller decides whether that prunes or fails."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.9
    nesterov: bool = False
    l1: float = 0.0
    l2: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.l1 < 0 or self.l2 < 0:
            raise ValueError(f"l1 and l2 must be >= 0, got l1={self.l1} l2={self.l2}")


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
    raise ValueError(f"Unknown optimizer {cfg.optimizer!r}; expected one of: sgd, adam, adamw")


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over weight matrices and kernels only: biases and norm scales are left alone."""
    weights = [p for p in model.parameters() if p.ndim > 1]
    return torch.stack([w.abs().sum() for w in weights]).sum()


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """Accuracy on (x, y)."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return correct / len(x)


def train_classifier(
    trial: TrialLike, model: nn.Module, data: TensorDataset, cfg: TrainConfig
) -> float:
    """Train ``model`` and return the last epoch's validation accuracy.

    Reports the validation accuracy every epoch; raises ``optuna.TrialPruned`` when the pruner
    says so, and NonFiniteLoss when the loss stops being a number.
    """
    import optuna  # the only Optuna touch points are report/should_prune below

    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    n = len(data.x_train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    log.debug(
        "training %d epochs x %d steps (batch %d)", cfg.epochs, steps_per_epoch, cfg.batch_size
    )
    accuracy = 0.0
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=generator).to(data.x_train.device)
        for start in range(0, n, cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            loss = F.cross_entropy(model(data.x_train[index]), data.y_train[index])
            if cfg.l1 > 0:
                loss = loss + cfg.l1 * l1_penalty(model)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss became {loss.item()} at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        accuracy = evaluate(model, data.x_val, data.y_val)
        trial.report(accuracy, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} with val accuracy {accuracy:.4f}")
    return accuracy
