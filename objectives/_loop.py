"""The training loop of one trial: steps with accumulation, the NaN/inf check, evaluation,
checkpoints before each report, and resume.

Under torch.distributed every rank runs this same loop in lockstep (``trial`` is then a
DistributedTrial that lets rank 0 alone talk to the study), each on its shard of every step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hpsearch import attrs
from hpsearch.errors import NonFiniteLoss
from hpsearch.files import replacing
from hpsearch.objectives import interrupt, sharding
from hpsearch.objectives._batches import Data, batch_rows, map_tensors, pair, split
from hpsearch.objectives._options import LIVE_OPTIONS
from hpsearch.objectives._placement import autocast, autocast_dtype, distributed_rank
from hpsearch.objectives._train_config import (
    TrainConfig,
    TrainResult,
    TrialLike,
    l1_penalty,
    make_optimizer,
)
from hpsearch.objectives.batching import halved, plan_batches
from hpsearch.objectives.context import current_context
from hpsearch.objectives.schedules import make_schedule, rescale_lr

# The engine logs under one name, whichever of its modules speaks.
log = logging.getLogger("hpsearch.objectives.trainer")

# How often (optimizer steps) the loss is checked for NaN/inf: each check is a host sync.
FINITE_CHECK_STEPS = 32
EVAL_ROWS = 1024  # rows per forward when evaluating preloaded tensors


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


Loss = Callable[[Any, Any], torch.Tensor]


class Loop:
    """One training run's state, so that each step is a short method."""

    def __init__(
        self,
        trial: TrialLike,
        model: nn.Module,
        train: Data,
        val: Data,
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
        # `hpsearch train` of a PBT member: its live values by the epoch they switch at, checked
        # here so that a schedule the engine cannot replay is refused before anything trains.
        self.replay = _replay_schedule(current_context().replay, cfg)
        self.sharded = self.world > 1 and cfg.strategy == "fsdp"
        if self.sharded:
            if cfg.l1 > 0 or any(values.get("l1", 0) > 0 for values in self.replay.values()):
                raise ValueError(
                    "l1 needs whole weights and strategy fsdp shards them; use l2, or "
                    'strategy = "ddp"'
                )
            bf16 = self.device.type == "cuda" and autocast_dtype(cfg.amp) == torch.bfloat16
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
        self.custom_optimizer = optimizer
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
        if self.replay:
            # A checkpoint trained under one schedule is no start for another's replay.
            self.identity["replay"] = [
                [epoch, dict(values)] for epoch, values in self.replay.items()
            ]
        late = [epoch for epoch in self.replay if epoch >= cfg.epochs]
        if late:
            log.warning(
                "the replayed schedule switches at epoch %s, past this run's %d epochs",
                ", ".join(map(str, late)),
                cfg.epochs,
            )
        # The live option values in force from each epoch on, saved with each checkpoint: a
        # PBT continuation shows which values trained the weights it ended with.
        self.live_history: list[list[Any]] = [[0, _live_values(self.identity)]]
        self.result = TrainResult(metric=float("nan"), plan=self.plan)
        self._recent_losses: list[torch.Tensor] = []  # since the last NaN/inf check
        self._last_report: tuple[int, float] | None = (
            None  # (epoch, value), saved with each checkpoint
        )
        trial.set_user_attr(attrs.BATCH, self.plan.as_dict())
        log.debug("batch plan %s, %d steps per epoch", self.plan, self.steps_per_epoch)

    def _forward_loss(self, micro: Any) -> torch.Tensor:
        inputs, target = pair(micro, self.train.name)
        with autocast(self.device, self.cfg.amp):
            loss = self.loss(self.train_model(inputs), target)
        if self.cfg.l1 > 0:
            loss = loss + self.cfg.l1 * l1_penalty(self.model)
        return loss

    def _accumulate(self, batch: Any) -> torch.Tensor:
        """Forward/backward over one device's share of an optimizer step; the summed loss."""
        micro_batches = split(batch, self.plan.micro)
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
                    loss = loss * (batch_rows(micro) / batch_rows(batch))
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
        with autocast(self.device, self.cfg.amp):
            for batch in self.val.evaluation(self.rank, self.world, rows):
                inputs, target = pair(batch, self.val.name)
                outputs = self.model(inputs)
                batches += 1
                size = batch_rows(target)
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
                    self.model(map_tensors(inputs, lambda t: t[:1]))
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
        written atomically by rank 0 (DDP ranks hold the same weights).

        With ``strategy = "fsdp"`` it is a folder of shards on any number of devices, one
        included: a retry on another number of devices resumes from it and keeps writing it.
        """
        path = self.cfg.checkpoint
        folder = self.cfg.strategy == "fsdp"
        if path is None or (self.rank != 0 and not folder):
            return
        state = {
            "epoch": epoch,
            "step": step,
            "scheduler": self.schedule.scheduler.state_dict() if self.schedule.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "torch_rng": torch.get_rng_state(),
            "lr_history": self.result.lr_history,
            "last_report": self._last_report,
            "config": self.identity,  # the config that produced it
            "live_history": self.live_history,
            "shapes": _shapes(self.model),
        }
        if self.rank == 0:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if folder:  # every rank writes its shard (a whole model: one shard)
            sharding.save(path, self.model, self.optimizer, state)
            return
        state.update(model=self.model.state_dict(), optimizer=self.optimizer.state_dict())
        if os.path.isdir(path):
            # The folder of another configuration (it did not resume): a file cannot replace
            # a folder in one step.
            shutil.rmtree(path)
        with replacing(path) as partial:
            torch.save(state, partial)

    def _restore(self) -> tuple[int, int]:
        """Where to start: (0, 0), or the epoch and step the last checkpoint ended at."""
        path = self.cfg.checkpoint
        if not path or not os.path.exists(path):
            return 0, 0
        folder = os.path.isdir(path)
        try:
            if folder:
                state = sharding.load_meta(path)
                if state is None:
                    raise ValueError("a folder without a sharded checkpoint's metadata")
            elif self.sharded:
                raise ValueError("not a sharded checkpoint")
            else:
                state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as err:  # a torn or foreign file: training from scratch is still right
            log.warning("checkpoint %s is unreadable (%s); starting over", path, err)
            return 0, 0
        config = state.get("config")
        live = set(current_context().live) & set(LIVE_OPTIONS)
        if (
            not isinstance(config, dict)
            or _without(config, live) != _without(self.identity, live)
            or state.get("shapes") != _shapes(self.model)
        ):
            log.warning("checkpoint %s was made with another configuration; starting over", path)
            return 0, 0
        # The optimizer was built with this run's values; loading its state puts the
        # checkpoint's back in its param groups.
        built = [_group_options(group) for group in self.optimizer.param_groups]
        if folder:  # whatever group size wrote it, into shards or into a whole model
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
        old = _live_values(config)
        # A checkpoint from before the history was kept: its config gives the first values.
        self.live_history = [list(entry) for entry in state.get("live_history") or [[0, old]]]
        new = _live_values(self.identity)
        if old != new:
            self._apply_live(old, new, built, epoch, doing="resuming with")
        if self.replay:
            # The values in force where it stopped, a replayed switch included: the loss reads
            # l1 from the config (the optimizer's state holds the others).
            self.cfg = dataclasses.replace(self.cfg, **self.live_history[-1][1])
        last = state.get("last_report")
        self._last_report = None if last is None else (int(last[0]), float(last[1]))
        self._decide_again()
        return epoch, step

    def _apply_live(
        self,
        old: dict[str, Any],
        new: dict[str, Any],
        built: list[dict[str, Any]],
        epoch: int,
        *,
        doing: str,
    ) -> None:
        """Continue from ``epoch`` with the live option values ``new`` where they differ from
        ``old`` (the checkpoint's, or those in force before a replayed switch); ``built``: the
        param group entries an optimizer built with ``new`` has; ``doing`` starts the log line.
        """
        for group, values in zip(self.optimizer.param_groups, built, strict=True):
            if "base_momentum" in group:
                # One-cycle sets the momentum every step (the option is not used): the group
                # holds its value for the next step, which the value built at its start is not.
                values = {key: value for key, value in values.items() if key != "momentum"}
            group.update(values)  # weight decay (l2) and momentum
        if "lr" in old and old["lr"] != new["lr"]:
            # The schedule goes on from where it was, scaled to the new base lr.
            rescale_lr(self.optimizer, self.schedule.scheduler, new["lr"] / old["lr"])
        # The loss reads l1 from the config.
        self.cfg = dataclasses.replace(self.cfg, **new)
        changed = [f"{k} {v} (was {old.get(k)})" for k, v in new.items() if old.get(k) != v]
        log.info("%s %s", doing, ", ".join(changed))
        if self.live_history[-1][0] == epoch:  # a change at the same epoch replaces it
            self.live_history.pop()
        self.live_history.append([epoch, new])

    def _replay_switch(self, epoch: int) -> None:
        """Switch to the replayed schedule's values from ``epoch`` on, as the PBT member that
        resumed there with them did (the same code path, so the same floating-point steps)."""
        old = dict(self.live_history[-1][1])
        new = {**old, **self.replay[epoch]}
        if new == old:
            return  # in force already (a run resumed within the epoch) or no change at all
        if self.custom_optimizer is None:
            built = [
                _group_options(group)
                for group in make_optimizer(
                    self.model, dataclasses.replace(self.cfg, **new)
                ).param_groups
            ]
        else:  # the objective's own optimizer keeps its own values, as at a resume
            built = [_group_options(group) for group in self.optimizer.param_groups]
        self._apply_live(
            old, new, built, epoch, doing=f"from epoch {epoch} the replayed schedule trains with"
        )
        self._record_schedule()

    def _record_schedule(self) -> None:
        self.trial.set_user_attr(
            attrs.PARAM_SCHEDULE, [[first, dict(values)] for first, values in self.live_history]
        )

    def _decide_again(self) -> None:
        """Report the checkpoint's last evaluation again and ask the pruner about it.

        The checkpoint is written before its report: a process killed between the two (or
        between the report and the decision: a pruner's, a scheduler's pause at a rung) would
        otherwise resume past an evaluation no one decided on.
        """
        if self._last_report is None or not self.report or not current_context().report_on_resume:
            return
        import optuna

        epoch, value = self._last_report
        with warnings.catch_warnings():
            # Usually the retry inherited the report; Optuna keeps it and warns.
            warnings.simplefilter("ignore")
            self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} with {self.report} {value:.4g}")

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
        if current_context().live or self.replay:
            # Only a PBT member's history changes (at a restore) and a replay's (at its
            # switches): one write per trial, and one per switch.
            self._record_schedule()
        for epoch in range(start_epoch, self.cfg.epochs):
            if epoch in self.replay:
                self._replay_switch(epoch)
            self._train_epoch(epoch, first_step if epoch == start_epoch else 0)
            metrics = self.result.metrics = self.evaluate()
            value = metrics.get(self.report) if self.report else None
            self.schedule.after_epoch(metrics["val_loss"] if value is None else value)
            self.result.lr_history.append(float(self.optimizer.param_groups[0]["lr"]))
            if value is not None:
                self._last_report = (epoch, value)
            # The epoch's checkpoint is complete (every shard, on every rank) before its report
            # is: whatever is decided at that report (prune, pause at a rung, a kill seen by a
            # watcher) finds the checkpoint of this epoch to resume from.
            self._save(epoch + 1, 0)
            if value is None:
                continue
            self.result.metric = value
            self.trial.report(value, epoch)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} with {self.report} {value:.4g}")
        return self.result


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {name: list(tensor.shape) for name, tensor in model.state_dict().items()}


def _live_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """The live option values of a checkpoint's config (its identity)."""
    return {name: config[name] for name in LIVE_OPTIONS if name in config}


def _group_options(group: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of an optimizer's param group that live options set (l2, momentum)."""
    return {key: group[key] for key in ("weight_decay", "momentum", "nesterov") if key in group}


def _replay_schedule(
    replay: tuple[tuple[int, Mapping[str, Any]], ...], cfg: TrainConfig
) -> dict[int, dict[str, float]]:
    """A replayed schedule's switches by epoch, in order, each the live values it changes.

    Refuses an option that is not live (the run could not change it mid-way, so the replay
    would not be the run it reproduces) and a value the config refuses (``lr`` <= 0).
    """
    schedule: dict[int, dict[str, float]] = {}
    in_force: dict[str, Any] = {name: getattr(cfg, name) for name in LIVE_OPTIONS}
    for epoch, _ in replay:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(
                f"the replayed schedule's epochs must be whole numbers >= 0, got {epoch!r}"
            )
    for epoch, values in sorted(replay, key=lambda entry: entry[0]):
        for name in values:
            if name not in LIVE_OPTIONS:
                raise ValueError(
                    f"the replayed schedule changes {name!r} at epoch {epoch}, which a run cannot "
                    f"change mid-way (it can: {', '.join(LIVE_OPTIONS)})"
                )
        try:
            entry = {name: float(value) for name, value in values.items()}
            in_force.update(entry)
            dataclasses.replace(cfg, **in_force)  # the config's own checks
        except (TypeError, ValueError) as err:
            raise ValueError(f"the replayed schedule at epoch {epoch}: {err}") from None
        schedule[epoch] = {**schedule.get(epoch, {}), **entry}
    return schedule


def _without(identity: Mapping[str, Any], names: set[str]) -> dict[str, Any]:
    """``identity`` without the options ``names``, among its own and the objective's params."""
    kept = {k: v for k, v in identity.items() if k not in names}
    if isinstance(kept.get("params"), Mapping):
        kept["params"] = {k: v for k, v in kept["params"].items() if k not in names}
    return kept


def _identity(cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the config without its own path."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoint"}
