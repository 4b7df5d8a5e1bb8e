"""The training engine: ``fit`` trains any PyTorch model for one trial.

The user brings a model, training and validation data, a loss and metrics. The engine owns the
rest: the batch plan (the searched ``batch_size`` = micro-batch x accumulation x world size,
computed once and recorded on the trial), accumulation under ``no_sync``, L1/L2, the optimizer
and the schedule, AMP and compile, checkpoints and resume, out-of-memory fallback, NaN/inf
losses, and one ``trial.report``/``should_prune`` per evaluation of the study's metric. Under
torch.distributed every rank runs this same loop in lockstep (``trial`` is then a
DistributedTrial that lets rank 0 alone talk to the study), each on its shard of every step.

Data comes as preloaded tensors ``(x, y)`` (steps are index lookups on the device, the fast
path), a map-style ``torch.utils.data.Dataset`` of ``(input, target)`` pairs (a DataLoader with
workers and pinned memory; each rank loads its shard of each step) or an ``IterableDataset``
(one device). Each epoch's order comes from the seed and the epoch alone, so a resumed trial
replays exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from hpsearch import attrs
from hpsearch.errors import NonFiniteLoss
from hpsearch.files import replacing
from hpsearch.objectives import interrupt, sharding
from hpsearch.objectives._choices import AMP_MODES, ON_NONFINITE, OPTIMIZERS, STRATEGIES
from hpsearch.objectives._options import TRAINING
from hpsearch.objectives.batching import BatchPlan, halved, plan_batches
from hpsearch.objectives.context import current_context
from hpsearch.objectives.data import TensorDataset
from hpsearch.objectives.schedules import ScheduleConfig, make_schedule

log = logging.getLogger(__name__)

# How often (optimizer steps) the loss is checked for NaN/inf: each check is a host sync.
FINITE_CHECK_STEPS = 32
EVAL_ROWS = 1024  # rows per forward when evaluating preloaded tensors


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
    l1_all_params: bool = False  # also penalise biases and norm scales
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


@dataclass(frozen=True)
class Metric:
    """A validation metric. ``fn(outputs, targets)`` is one batch's mean (a scalar) or one value
    per sample; the engine averages it over the validation set (summed over ranks), then
    applies ``then``: ``Metric(cross_entropy, then=math.exp)`` is perplexity."""

    fn: Callable[[Any, Any], torch.Tensor]
    then: Callable[[float], float] | None = None


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of class scores ``(batch, classes)`` against class indices, per sample."""
    return (outputs.argmax(dim=1) == targets).double()


class Fitted(dict[str, float]):
    """What ``fit`` returns: the last evaluation's metrics by name (an objective may return it
    as it is), with the trained model and what the engine decided on the way."""

    def __init__(
        self,
        metrics: Mapping[str, float],
        *,
        model: nn.Module,
        plan: BatchPlan,
        lr_history: list[float],
        oom_fallbacks: list[dict[str, int]],
    ) -> None:
        super().__init__(metrics)
        self.model, self.plan = model, plan
        self.lr_history, self.oom_fallbacks = lr_history, oom_fallbacks


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


def distributed_rank() -> tuple[int, int]:
    """(rank, world size), (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def trial_device(name: str = "auto") -> torch.device:
    """The device this rank trains on: ``auto`` is CUDA where there is one; a DDP rank takes
    its own GPU (the launcher restricts CUDA_VISIBLE_DEVICES to the trial's)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    rank, world = distributed_rank()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", rank % max(1, torch.cuda.device_count()))
    if device.type == "cuda" and world > 1:
        torch.cuda.set_device(device)
    return device


def _autocast_dtype(amp: str) -> torch.dtype | None:
    """What CUDA computes in under ``amp``: None for full precision."""
    if amp == "off":
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    dtype = _autocast_dtype(amp) if device.type == "cuda" else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


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


# --- batches: (inputs, target), where each may be a tensor or a tuple/list/dict of tensors ---


def _map(batch: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, tuple | list):
        return type(batch)(_map(item, fn) for item in batch)
    if isinstance(batch, dict):
        return {key: _map(value, fn) for key, value in batch.items()}
    return batch


def _rows(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor."""
    found: list[int] = []
    _map(batch, lambda t: found.append(len(t)))
    if not found:
        raise ValueError("a batch holds no tensor; the data must yield (input, target) tensors")
    return found[0]


def _split(batch: Any, micro: int) -> list[Any]:
    """A device's batch as micro-batches of ``micro`` samples."""

    def part(k: int) -> Any:
        return _map(batch, lambda t: t[k * micro : (k + 1) * micro])

    return [part(k) for k in range(math.ceil(_rows(batch) / micro))]


def _to(batch: Any, device: torch.device) -> Any:
    return _map(batch, lambda t: t.to(device, non_blocking=True))


def _pair(batch: Any, where: str) -> tuple[Any, Any]:
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise ValueError(
            f"{where} must yield (input, target) pairs, got a {type(batch).__name__}; "
            "return `x, y` from the Dataset's __getitem__"
        )
    return batch[0], batch[1]


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's sample order: from the seed and the epoch alone, so that every rank agrees
    and a resumed trial replays the epoch it stopped in."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


class _Steps(torch.utils.data.Sampler[list[int]]):
    """One rank's share of each optimizer step of one epoch, as index lists (a batch sampler)."""

    def __init__(self, order: torch.Tensor, plan: BatchPlan, rank: int, steps: range) -> None:
        self.order, self.plan, self.rank, self.steps = order, plan, rank, steps

    def __iter__(self) -> Iterator[list[int]]:
        per_device = self.plan.effective // self.plan.world_size
        for step in self.steps:
            start = step * self.plan.effective + self.rank * per_device
            yield self.order[start : start + per_device].tolist()

    def __len__(self) -> int:
        return len(self.steps)


class _Data:
    """Where a trial's batches come from: preloaded tensors, a Dataset, or an iterable."""

    def __init__(self, data: Any, *, name: str, device: torch.device, cfg: TrainConfig) -> None:
        self.name, self.device, self.cfg = name, device, cfg
        self.tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self.dataset: Dataset[Any] | None = None
        self.iterable: IterableDataset[Any] | None = None
        if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
            data = data.tensors
        if isinstance(data, IterableDataset):
            self.iterable = data
        elif (
            isinstance(data, tuple | list)
            and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)
        ):
            x, y = data
            if len(x) != len(y):
                raise ValueError(f"{name}: x has {len(x)} rows and y {len(y)}; they must match")
            self.tensors = (x.to(device), y.to(device))
        elif isinstance(data, Dataset):
            self.dataset = data
        else:
            raise ValueError(
                f"{name} must be a torch Dataset, an IterableDataset or a pair of tensors (x, y), "
                f"got a {type(data).__name__}"
            )

    def __len__(self) -> int:
        if self.tensors is not None:
            return len(self.tensors[0])
        if self.dataset is not None:
            return len(self.dataset)  # type: ignore[arg-type]
        raise TypeError("an IterableDataset has no length")

    @property
    def sized(self) -> bool:
        return self.iterable is None

    def _loader(self, **kwargs: Any) -> DataLoader[Any]:
        workers = self.cfg.loader_workers
        return DataLoader(
            kwargs.pop("dataset"),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            **kwargs,
        )

    def steps(
        self, epoch: int, plan: BatchPlan, rank: int, first: int, count: int
    ) -> Iterator[Any]:
        """This rank's batch of each optimizer step ``first..count-1`` of ``epoch``, on device."""
        if self.iterable is not None:
            loader = self._loader(dataset=self.iterable, batch_size=plan.effective, drop_last=True)
            for step, batch in enumerate(loader):
                if step >= first:
                    yield _to(batch, self.device)
            return
        order = epoch_order(len(self), self.cfg.seed, epoch)
        if self.tensors is not None:
            per_device = plan.effective // plan.world_size
            order = order.to(self.device)
            x, y = self.tensors
            for step in range(first, count):
                start = step * plan.effective + rank * per_device
                index = order[start : start + per_device]
                yield x[index], y[index]
            return
        sampler = _Steps(order, plan, rank, range(first, count))
        for batch in self._loader(dataset=self.dataset, batch_sampler=sampler):
            yield _to(batch, self.device)

    def evaluation(self, rank: int, world: int, rows: int) -> Iterator[Any]:
        """This rank's shard of the data, in batches of ``rows``."""
        if self.iterable is not None:
            yield from (
                _to(b, self.device) for b in self._loader(dataset=self.iterable, batch_size=rows)
            )
        elif self.tensors is not None:
            x, y = (t[rank::world] for t in self.tensors)
            for start in range(0, len(x), rows):
                yield x[start : start + rows], y[start : start + rows]
        else:
            assert self.dataset is not None
            shard = torch.utils.data.Subset(self.dataset, range(rank, len(self), world))
            for batch in self._loader(dataset=shard, batch_size=rows):
                yield _to(batch, self.device)


Loss = Callable[[Any, Any], torch.Tensor]


class _Loop:
    """One training run's state, so that each step is a short method."""

    def __init__(
        self,
        trial: TrialLike,
        model: nn.Module,
        train: _Data,
        val: _Data,
        cfg: TrainConfig,
        *,
        loss: Loss,
        metrics: Mapping[str, Metric],
        report: str | None,
        optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
        identity: Mapping[str, Any] | None = None,
        blocks: sharding.Blocks | None = None,
    ) -> None:
        self.trial, self.model, self.train, self.val, self.cfg = trial, model, train, val, cfg
        self.loss, self.metrics, self.report = loss, metrics, report
        self.rank, self.world = distributed_rank()
        self.device = train.device
        self.plan = plan_batches(cfg.batch_size, world_size=self.world, micro_cap=cfg.micro_batch)
        if not train.sized and self.world > 1:
            raise ValueError(
                "an IterableDataset trains on one device only (it cannot be sharded across "
                f"the trial's {self.world} ranks); use a map-style Dataset, or devices_per_trial = 1"
            )
        self.steps_per_epoch = len(train) // cfg.batch_size if train.sized else 0
        if train.sized and self.steps_per_epoch < 1:
            raise ValueError(
                f"batch_size {cfg.batch_size} is larger than the {len(train)} training samples"
            )
        if not train.sized and cfg.schedule.name in ("cosine", "onecycle"):
            raise ValueError(
                f"schedule {cfg.schedule.name!r} needs the steps per epoch, which an "
                "IterableDataset does not know; use none, step or plateau"
            )
        if self.device.type == "cuda" and train.tensors is not None and train.tensors[0].ndim == 4:
            model.to(memory_format=torch.channels_last)
        self.train_model: nn.Module = model
        self.sharded = self.world > 1 and cfg.strategy == "fsdp"
        if self.sharded:
            if cfg.l1 > 0:
                raise ValueError(
                    "l1 needs whole weights and strategy fsdp shards them; use l2, or "
                    'strategy = "ddp"'
                )
            bf16 = self.device.type == "cuda" and _autocast_dtype(cfg.amp) == torch.bfloat16
            sharding.shard(model, self.device, blocks=blocks, bf16=bf16, offload=cfg.cpu_offload)
        elif self.world > 1:
            model.to(self.device)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        else:
            model.to(self.device)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)  # type: ignore[assignment]
        # After sharding: the optimizer holds the shards, not the whole parameters.
        self.optimizer = optimizer(model) if optimizer is not None else make_optimizer(model, cfg)
        fp16 = self.device.type == "cuda" and cfg.amp == "fp16"
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.schedule = make_schedule(
            self.optimizer,
            cfg.schedule,
            epochs=cfg.epochs,
            steps_per_epoch=max(1, self.steps_per_epoch),
            lr=cfg.lr,
            maximize=cfg.maximize,
        )
        self.identity = {**_identity(cfg), **(identity or {})}
        self.result = TrainResult(metric=float("nan"), plan=self.plan)
        self._recent_losses: list[torch.Tensor] = []  # since the last NaN/inf check
        trial.set_user_attr(attrs.BATCH, self.plan.as_dict())
        log.debug("batch plan %s, %d steps per epoch", self.plan, self.steps_per_epoch)

    def _forward_loss(self, micro: Any) -> torch.Tensor:
        inputs, target = _pair(micro, self.train.name)
        with _autocast(self.device, self.cfg.amp):
            loss = self.loss(self.train_model(inputs), target)
        if self.cfg.l1 > 0:
            loss = loss + self.cfg.l1 * l1_penalty(self.model, all_params=self.cfg.l1_all_params)
        return loss

    def _accumulate(self, batch: Any) -> torch.Tensor:
        """Forward/backward over one device's share of an optimizer step; the summed loss."""
        micro_batches = _split(batch, self.plan.micro)
        total: torch.Tensor | None = None
        for k, micro in enumerate(micro_batches):
            last = k == len(micro_batches) - 1
            # DDP all-reduces (FSDP reduce-scatters) gradients only on the last micro-batch.
            if self.sharded:
                sharding.set_gradient_sync(self.model, last)
            no_sync = self.world > 1 and not last and hasattr(self.train_model, "no_sync")
            with self.train_model.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[operator]
                loss = self._forward_loss(micro)
                if len(micro_batches) > 1:
                    # Each micro-batch is a share of the step: the gradient is the whole mean's.
                    loss = loss * (_rows(micro) / _rows(batch))
                (self.scaler.scale(loss) if self.scaler else loss).backward()  # type: ignore[no-untyped-call]
            total = loss.detach() if total is None else total + loss.detach()
        assert total is not None  # at least one micro-batch
        return total

    def _step(self, epoch: int, step: int, batch: Any) -> torch.Tensor:
        """One optimizer step; on CUDA out-of-memory, retry it with half the micro-batch."""
        while True:
            try:
                return self._accumulate(batch)
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

    def _check_finite(self, loss: torch.Tensor | None, epoch: int, step: int) -> None:
        """Raise NonFiniteLoss once a loss since the last check was NaN or infinite.

        The losses are checked every FINITE_CHECK_STEPS optimizer steps and at the end of each
        epoch (``loss`` None), not every step: reading a GPU value forces a host sync, which
        would drain the queue of kernels every step (under DDP the decision is an all-reduce,
        taken together: every rank runs the same number of steps).
        """
        if loss is not None:
            self._recent_losses.append(loss)
            if len(self._recent_losses) < FINITE_CHECK_STEPS:
                return
        if not self._recent_losses:
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
                f"(last loss {losses[-1].item()})"
            )

    @torch.inference_mode()
    def evaluate(self) -> dict[str, float]:
        """Every metric (and ``val_loss``) over the validation set, the same on every rank."""
        self.model.eval()
        names = ["val_loss", *self.metrics]
        sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=self.device)
        rows = max(self.plan.micro, EVAL_ROWS if self.val.tensors is not None else 256)
        batches = 0
        with _autocast(self.device, self.cfg.amp):
            for batch in self.val.evaluation(self.rank, self.world, rows):
                inputs, target = _pair(batch, self.val.name)
                outputs = self.model(inputs)
                batches += 1
                size = _rows(target)
                values = [self.loss(outputs, target)] + [
                    m.fn(outputs, target) for m in self.metrics.values()
                ]
                for i, value in enumerate(values):
                    value = value.detach().double()
                    if value.ndim > 1 or (value.ndim == 1 and len(value) != size):
                        raise ValueError(
                            f"metric {names[i]!r} must return a scalar (the batch's mean) or one "
                            f"value per sample ({size}), got shape {tuple(value.shape)}"
                        )
                    # One value per sample sums exactly (a count of correct answers stays one).
                    sums[i] += value.sum() if value.ndim == 1 else value * size
                sums[-1] += size
            if self.sharded:
                # Each forward of a sharded model is a collective: a rank whose shard of the
                # validation data is a batch shorter runs one more, uncounted.
                most = math.ceil(math.ceil(len(self.val) / self.world) / rows)
                for _ in range(most - batches):
                    self.model(_map(inputs, lambda t: t[:1]))
        if self.world > 1:
            dist.all_reduce(sums)
        if float(sums[-1]) == 0:
            raise ValueError(f"{self.val.name} is empty on rank {self.rank}")
        means = (sums[:-1] / sums[-1]).tolist()
        result = dict(zip(names, means, strict=True))
        for name, metric in self.metrics.items():
            if metric.then is not None:
                result[name] = float(metric.then(result[name]))
        return result

    def _save(self, epoch: int, step: int) -> None:
        """Everything needed to continue exactly from here (the start of ``step`` in ``epoch``),
        written atomically by rank 0 (DDP ranks hold the same weights)."""
        path = self.cfg.checkpoint
        if path is None or (self.rank != 0 and not self.sharded):
            return
        state = {
            "epoch": epoch,
            "step": step,
            "scheduler": self.schedule.scheduler.state_dict() if self.schedule.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "torch_rng": torch.get_rng_state(),
            "lr_history": self.result.lr_history,
            "config": self.identity,  # the config that produced it
            "shapes": _shapes(self.model),
        }
        if self.rank == 0:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if self.sharded:  # every rank writes its shard: a folder
            sharding.save(path, self.model, self.optimizer, state)
            return
        state.update(model=self.model.state_dict(), optimizer=self.optimizer.state_dict())
        with replacing(path) as partial:
            torch.save(state, partial)

    def _restore(self) -> tuple[int, int]:
        """Where to start: (0, 0), or the epoch and step the last checkpoint ended at."""
        path = self.cfg.checkpoint
        if not path or not os.path.exists(path):
            return 0, 0
        try:
            if self.sharded:
                state = sharding.load_meta(path)
                if state is None:
                    raise ValueError("not a sharded checkpoint")
            else:
                state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as err:  # a torn or foreign file: training from scratch is still right
            log.warning("checkpoint %s is unreadable (%s); starting over", path, err)
            return 0, 0
        if state.get("config") != self.identity or state.get("shapes") != _shapes(self.model):
            log.warning("checkpoint %s was made with another configuration; starting over", path)
            return 0, 0
        if self.sharded:  # whatever group size wrote it
            sharding.load(path, self.model, self.optimizer)
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule.scheduler is not None and state["scheduler"] is not None:
            self.schedule.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.result.lr_history = list(state["lr_history"])
        epoch, step = int(state["epoch"]), int(state.get("step", 0))
        self.trial.set_user_attr(attrs.RESUMED_FROM_EPOCH, epoch)
        log.info("resuming from %s at epoch %d step %d", path, epoch, step)
        return epoch, step

    def _train_epoch(self, epoch: int, first: int) -> None:
        count, every = self.steps_per_epoch, self.cfg.checkpoint_every
        if count and first >= count:
            return  # resumed from a step checkpoint at the epoch's end: only its evaluation is left
        self.train_model.train()
        step = first - 1
        for step, batch in enumerate(
            self.train.steps(epoch, self.plan, self.rank, first, count), start=first
        ):
            interrupt.check()
            loss = self._step(epoch, step, batch)
            self._check_finite(loss, epoch, step)
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.schedule.after_optimizer_step()
            if every and count and (epoch * count + step + 1) % every == 0:
                self._save(epoch, step + 1)
        if step < first:
            raise ValueError(f"{self.train.name} yielded no full batch of {self.cfg.batch_size}")
        self._check_finite(None, epoch, step)

    def run(self) -> TrainResult:
        import optuna

        start_epoch, first_step = self._restore()
        for epoch in range(start_epoch, self.cfg.epochs):
            self._train_epoch(epoch, first_step if epoch == start_epoch else 0)
            metrics = self.result.metrics = self.evaluate()
            value = metrics.get(self.report) if self.report else None
            if value is not None:
                self.result.metric = value
                self.trial.report(value, epoch)
            self.schedule.after_epoch(metrics["val_loss"] if value is None else value)
            self.result.lr_history.append(float(self.optimizer.param_groups[0]["lr"]))
            self._save(epoch + 1, 0)
            if value is not None and self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} with {self.report} {value:.4g}")
        return self.result


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {name: list(tensor.shape) for name, tensor in model.state_dict().items()}


def _identity(cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the config without its own path."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoint"}


def _as_metric(value: Metric | Callable[[Any, Any], torch.Tensor]) -> Metric:
    return value if isinstance(value, Metric) else Metric(value)


def _reported(metric: str | None, evaluated: list[str]) -> tuple[str | None, bool]:
    """The metric each evaluation reports to the pruner, and whether it is maximized.

    The study's (from the worker's context) unless ``metric`` names one; none when the study
    optimizes a measurement made after training (size, latency), unless it prunes: a pruner fed
    another quantity would prune the best trials, so that is refused.
    """
    context = current_context()
    directions = dict(zip(context.metrics, context.directions, strict=False))
    if metric is None and len(context.metrics) > 1:
        return None, False  # Optuna prunes single-objective studies only
    name = metric or (context.metrics[0] if context.metrics else "val_loss")
    if name not in evaluated:
        if context.prunes:
            raise ValueError(
                f"the study's metric {name!r} is not one fit evaluates ({', '.join(evaluated)}), "
                "so its pruner would get nothing to compare; add it to fit's metrics, or set "
                '[pruner] name = "none"'
            )
        return None, False
    return name, directions.get(name, "minimize") == "maximize"


def fit(
    trial: TrialLike,
    params: Mapping[str, Any],
    *,
    model: nn.Module | Callable[[Mapping[str, Any]], nn.Module],
    train: Any,
    val: Any,
    loss: Loss,
    metrics: Mapping[str, Metric | Callable[[Any, Any], torch.Tensor]] | None = None,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    metric: str | None = None,
    blocks: sharding.Blocks | None = None,
) -> Fitted:
    """Train ``model`` for one trial; the last evaluation's metrics by name.

    ``params``: the objective's params (the study's ``[training]`` under the suggested values);
    the engine reads its options from them (``epochs``, ``batch_size``, ``lr``, ``optimizer``,
    ``l1``, ``l2``, ``schedule``, ``amp``, ... see ``objectives/_options.py``) and ignores the
    rest. ``model``: a module, or a function of ``params`` that builds one (seeded with
    ``seed``, so every rank and a retrain build the same weights). ``train``/``val``: tensors
    ``(x, y)``, a Dataset of ``(input, target)`` or an IterableDataset. ``loss(outputs,
    targets)``: a scalar. ``metrics``: name -> ``fn(outputs, targets)`` (a batch mean) or a
    Metric; ``val_loss`` is always measured. ``optimizer``: a function of the model that
    builds your own (``l2`` is then yours to apply). ``metric``: what each evaluation reports
    to the pruner, by default the study's.

    A NaN or infinite loss prunes the trial with the reason (``on_nonfinite = "fail"`` fails
    it instead); the pruner's decision raises ``optuna.TrialPruned``.
    """
    import optuna

    options = {**TRAINING, **params}
    if options["on_nonfinite"] not in ON_NONFINITE:
        raise ValueError(
            f"on_nonfinite must be one of {', '.join(ON_NONFINITE)}, got {options['on_nonfinite']!r}"
        )
    device = trial_device(str(options["device"]))
    measured = {name: _as_metric(m) for name, m in (metrics or {}).items()}
    report, maximize = _reported(metric, ["val_loss", *measured])
    context = current_context()
    cfg = TrainConfig.from_options(options, maximize=maximize, checkpoint=context.checkpoint)
    if not isinstance(model, nn.Module):
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and in a retrain
        model = model(params)
    module = model  # moved to the device by the loop (FSDP moves one shard at a time)
    loop = _Loop(
        trial,
        module,
        _Data(train, name="train", device=device, cfg=cfg),
        _Data(val, name="val", device=device, cfg=cfg),
        cfg,
        loss=loss,
        metrics=measured,
        report=report,
        optimizer=optimizer,
        identity={"params": _plain(params)},
        blocks=blocks,
    )
    try:
        result = loop.run()
    except NonFiniteLoss as err:
        trial.set_user_attr(attrs.NONFINITE_LOSS, str(err))
        if options["on_nonfinite"] == "prune":
            raise optuna.TrialPruned(str(err)) from None
        raise
    if context.model_path:
        # A sharded model is gathered whole (every rank takes part); rank 0 saves it.
        weights = sharding.full_state_dict(module) if loop.sharded else module.state_dict()
        if loop.rank == 0:
            os.makedirs(os.path.dirname(os.path.abspath(context.model_path)), exist_ok=True)
            with replacing(context.model_path) as partial:
                torch.save(weights, partial)
    return Fitted(
        result.metrics,
        model=module,
        plan=result.plan,
        lr_history=result.lr_history,
        oom_fallbacks=result.oom_fallbacks,
    )


def _plain(params: Mapping[str, Any]) -> dict[str, Any]:
    """The params a checkpoint must match, as comparable plain values."""
    return {
        k: v for k, v in sorted(params.items()) if isinstance(v, str | int | float | bool | None)
    }


def train_classifier(
    trial: TrialLike,
    model: nn.Module,
    data: TensorDataset,
    cfg: TrainConfig,
    *,
    report: str | None = "val_accuracy",
) -> TrainResult:
    """Train a classifier on preloaded tensors (already on the trial's device) with
    cross-entropy, reporting ``report`` (validation accuracy by default) every epoch.

    Raises ``optuna.TrialPruned`` when the pruner says so, and NonFiniteLoss when the loss stops
    being a number. The built-ins train through it.
    """
    device = data.x_train.device
    loop = _Loop(
        trial,
        model,
        _Data((data.x_train, data.y_train), name="train", device=device, cfg=cfg),
        _Data((data.x_val, data.y_val), name="val", device=device, cfg=cfg),
        cfg,
        loss=F.cross_entropy,
        metrics={"val_accuracy": Metric(accuracy)},
        report=report,
    )
    return loop.run()
