"""The training loop: preloaded tensors, accumulation, DDP, schedules, AMP, one report per epoch.

Derived quantities (the batch plan, steps per epoch) are computed once and recorded on the trial.
The only Optuna touch points are ``trial.report``/``trial.should_prune`` (and user attributes).
Under torch.distributed every rank runs this same loop in lockstep; ``trial`` is then a
DistributedTrial that lets rank 0 alone talk to the study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hpsearch import attrs
from hpsearch.errors import NonFiniteLoss
from hpsearch.files import replacing
from hpsearch.objectives import interrupt
from hpsearch.objectives._choices import AMP_MODES
from hpsearch.objectives.batching import BatchPlan, halved, plan_batches
from hpsearch.objectives.data import TensorDataset
from hpsearch.objectives.schedules import ScheduleConfig, make_schedule

log = logging.getLogger(__name__)

# How often (optimizer steps) the loss is checked for NaN/inf: each check is a host sync.
FINITE_CHECK_STEPS = 32


class TrialLike(Protocol):
    """The part of ``optuna.Trial`` the trainer uses; lets the trainer run without a study."""

    def report(self, value: float, step: int) -> None: ...
    def should_prune(self) -> bool: ...
    def set_user_attr(self, key: str, value: Any) -> None: ...


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int  # effective: samples per optimizer step over all devices
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.9
    nesterov: bool = False
    l1: float = 0.0
    l2: float = 0.0
    l1_all_params: bool = False  # also penalise biases and norm scales
    seed: int = 0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    micro_batch: int | None = None  # cap on samples per forward on one device
    amp: str = "auto"  # autocast on CUDA: bf16 where supported ("auto"), "fp16", or "off"
    compile: bool = False
    maximize: bool = True  # direction of the validation metric (for ReduceLROnPlateau)
    checkpoint: str | None = None  # file saved after every epoch and resumed from if present

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


@dataclass
class TrainResult:
    metric: float  # the last epoch's validation accuracy
    plan: BatchPlan
    lr_history: list[float] = field(default_factory=list)  # learning rate at each epoch's end
    oom_fallbacks: list[dict[str, int]] = field(default_factory=list)


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


def l1_penalty(model: nn.Module, *, all_params: bool = False) -> torch.Tensor:
    """Sum of |w| over weight matrices and kernels; biases and norm scales only if asked."""
    weights = [p for p in model.parameters() if all_params or p.ndim > 1]
    return torch.stack([w.abs().sum() for w in weights]).sum()


def distributed_rank() -> tuple[int, int]:
    """(rank, world size), (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cuda", dtype=torch.bfloat16)


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, amp: str = "off", batch_size: int = 4096
) -> float:
    """Accuracy on (x, y); under DDP each rank scores a shard and the counts are summed."""
    rank, world = distributed_rank()
    model.eval()
    x, y = x[rank::world], y[rank::world]
    counts = torch.zeros(2, dtype=torch.float64, device=x.device)
    with _autocast(x.device, amp):
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size])
            counts[0] += (logits.argmax(dim=1) == y[start : start + batch_size]).sum()
    counts[1] = len(x)
    if world > 1:
        dist.all_reduce(counts)
    return float(counts[0] / counts[1])


class _Loop:
    """One training run's state, so that each step is a short method."""

    def __init__(self, trial: TrialLike, model: nn.Module, data: TensorDataset, cfg: TrainConfig):
        self.trial, self.model, self.data, self.cfg = trial, model, data, cfg
        self.rank, self.world = distributed_rank()
        self.device = data.x_train.device
        self.plan = plan_batches(cfg.batch_size, world_size=self.world, micro_cap=cfg.micro_batch)
        self.steps_per_epoch = len(data.x_train) // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"batch_size {cfg.batch_size} is larger than the {len(data.x_train)} training samples"
            )
        if self.device.type == "cuda" and data.x_train.ndim == 4:
            model.to(memory_format=torch.channels_last)
        self.train_model: nn.Module = model
        if self.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)  # type: ignore[assignment]
        self.optimizer = make_optimizer(model, cfg)
        fp16 = self.device.type == "cuda" and cfg.amp == "fp16"
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.schedule = make_schedule(
            self.optimizer,
            cfg.schedule,
            epochs=cfg.epochs,
            steps_per_epoch=self.steps_per_epoch,
            lr=cfg.lr,
            maximize=cfg.maximize,
        )
        self.result = TrainResult(metric=float("nan"), plan=self.plan)
        self._recent_losses: list[torch.Tensor] = []  # since the last NaN/inf check
        # The same generator on every rank: all ranks agree on each step's batch.
        self.generator = torch.Generator().manual_seed(cfg.seed)
        trial.set_user_attr(attrs.BATCH, self.plan.as_dict())
        log.debug("batch plan %s, %d steps per epoch", self.plan, self.steps_per_epoch)

    def _micro_batches(self, shard: torch.Tensor) -> Iterator[tuple[torch.Tensor, bool]]:
        """(indices, last) per micro-step; DDP all-reduces gradients only on the last one."""
        for k in range(self.plan.accumulation):
            yield (
                shard[k * self.plan.micro : (k + 1) * self.plan.micro],
                k == self.plan.accumulation - 1,
            )

    def _accumulate(self, shard: torch.Tensor) -> torch.Tensor:
        """Forward/backward over one device's shard of an optimizer step; the summed loss."""
        total: torch.Tensor | None = None
        for index, last in self._micro_batches(shard):
            no_sync = self.world > 1 and not last and hasattr(self.train_model, "no_sync")
            with self.train_model.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[operator]
                with _autocast(self.device, self.cfg.amp):
                    loss = F.cross_entropy(
                        self.train_model(self.data.x_train[index]), self.data.y_train[index]
                    )
                if self.cfg.l1 > 0:
                    loss = loss + self.cfg.l1 * l1_penalty(
                        self.model, all_params=self.cfg.l1_all_params
                    )
                if self.plan.accumulation > 1:
                    # Each micro-batch is 1/accumulation of the step: the gradient is the mean's.
                    loss = loss / self.plan.accumulation
                (self.scaler.scale(loss) if self.scaler else loss).backward()  # type: ignore[no-untyped-call]
            total = loss.detach() if total is None else total + loss.detach()
        assert total is not None  # accumulation >= 1
        return total

    def _step(self, epoch: int, step: int, shard: torch.Tensor) -> torch.Tensor:
        """One optimizer step; on CUDA out-of-memory, retry it with half the micro-batch."""
        while True:
            try:
                return self._accumulate(shard)
            except torch.cuda.OutOfMemoryError:
                smaller = halved(self.plan)
                if self.world > 1 or smaller is None:
                    raise  # a lone DDP rank cannot re-plan without the others
                self.optimizer.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.result.oom_fallbacks.append(
                    {
                        "epoch": epoch,
                        "step": step,
                        "from_micro": self.plan.micro,
                        "to_micro": smaller.micro,
                    }
                )
                log.warning(
                    "out of memory at micro-batch %d; retrying with %d",
                    self.plan.micro,
                    smaller.micro,
                )
                self.plan = self.result.plan = smaller
                self.trial.set_user_attr(attrs.BATCH, self.plan.as_dict())
                self.trial.set_user_attr(attrs.OOM_FALLBACKS, self.result.oom_fallbacks)

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        """Raise NonFiniteLoss once a loss since the last check was NaN or infinite.

        The losses are checked every FINITE_CHECK_STEPS optimizer steps and at the end of each
        epoch, not every step: reading a GPU value forces a host sync, which would drain the
        queue of kernels every step (under DDP the decision is an all-reduce, taken together).
        """
        self._recent_losses.append(loss)
        if step != self.steps_per_epoch - 1 and len(self._recent_losses) < FINITE_CHECK_STEPS:
            return
        losses, self._recent_losses = torch.stack(self._recent_losses), []
        flag = (~torch.isfinite(losses)).any().to(torch.int32)
        if self.world > 1:
            # Every rank decides together, or one would wait in the next all-reduce alone.
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if bool(flag):
            where = "" if self.world == 1 else " on some rank"
            raise NonFiniteLoss(
                f"loss became NaN or infinite by step {step} of epoch {epoch}{where} "
                f"(last loss {loss.item()})"
            )

    def _save(self, next_epoch: int) -> None:
        """Everything needed to continue exactly where this epoch ended, written atomically."""
        assert self.cfg.checkpoint is not None
        state = {
            "epoch": next_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.scheduler.state_dict() if self.schedule.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "lr_history": self.result.lr_history,
            "config": _identity(self.cfg),  # the config that produced it
            "shapes": _shapes(self.model),
        }
        folder = os.path.dirname(os.path.abspath(self.cfg.checkpoint))
        os.makedirs(folder, exist_ok=True)
        with replacing(self.cfg.checkpoint) as partial:
            torch.save(state, partial)

    def _restore(self) -> int:
        """The epoch to start from: 0, or the one after the last checkpointed epoch."""
        path = self.cfg.checkpoint
        if not path or not os.path.exists(path):
            return 0
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as err:  # a torn or foreign file: training from scratch is still right
            log.warning("checkpoint %s is unreadable (%s); starting over", path, err)
            return 0
        if state.get("config") != _identity(self.cfg) or state.get("shapes") != _shapes(self.model):
            log.warning("checkpoint %s was made with another configuration; starting over", path)
            return 0
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule.scheduler is not None and state["scheduler"] is not None:
            self.schedule.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.result.lr_history = list(state["lr_history"])
        epoch = int(state["epoch"])
        self.trial.set_user_attr(attrs.RESUMED_FROM_EPOCH, epoch)
        log.info("resuming from %s at epoch %d", path, epoch)
        return epoch

    def run(self) -> TrainResult:
        import optuna

        cfg, n = self.cfg, len(self.data.x_train)
        per_device = cfg.batch_size // self.world
        for epoch in range(self._restore(), cfg.epochs):
            self.train_model.train()
            order = torch.randperm(n, generator=self.generator).to(self.device)
            for step in range(self.steps_per_epoch):
                interrupt.check()
                batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                shard = batch[self.rank * per_device : (self.rank + 1) * per_device]
                loss = self._step(epoch, step, shard)
                self._check_finite(loss, epoch, step)
                if self.scaler:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.schedule.after_optimizer_step()
            metric = evaluate(self.model, self.data.x_val, self.data.y_val, amp=cfg.amp)
            self.result.metric = metric
            self.trial.report(metric, epoch)
            self.schedule.after_epoch(metric)
            self.result.lr_history.append(float(self.optimizer.param_groups[0]["lr"]))
            if cfg.checkpoint and self.rank == 0:
                self._save(epoch + 1)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} with val accuracy {metric:.4f}")
        return self.result


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {name: list(tensor.shape) for name, tensor in model.state_dict().items()}


def _identity(cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the config without its own path."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoint"}


def train_classifier(
    trial: TrialLike, model: nn.Module, data: TensorDataset, cfg: TrainConfig
) -> TrainResult:
    """Train ``model`` on ``data`` (tensors already on the trial's device).

    Reports the validation accuracy every epoch; raises ``optuna.TrialPruned`` when the pruner
    says so, and NonFiniteLoss when the loss stops being a number.
    """
    return _Loop(trial, model, data, cfg).run()
