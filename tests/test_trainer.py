"""The training engine: accumulation, DDP, schedules, regularisation, out-of-memory fallback."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import optuna
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hpsearch.objectives.batching import plan_batches
from hpsearch.objectives.data import TensorDataset, load_digits
from hpsearch.objectives.distributed import DistributedTrial, end_process_group
from hpsearch.objectives.models import MLP
from hpsearch.objectives.schedules import ScheduleConfig, make_schedule
from hpsearch.objectives.trainer import TrainConfig, train_classifier

from ._support import RecordingTrial


def small_digits(n_train: int) -> TensorDataset:
    data = load_digits(0.2)
    return TensorDataset(data.x_train[:n_train], data.y_train[:n_train], data.x_val, data.y_val, 10)


def fresh_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MLP(64, 10, width=32, depth=2, activation_name="tanh")


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_same_weights(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-6) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-5)


def test_batch_plan_invariants() -> None:
    assert plan_batches(256).as_dict() == {
        "effective": 256,
        "micro": 256,
        "accumulation": 1,
        "world_size": 1,
    }
    plan = plan_batches(256, world_size=2, micro_cap=64)
    assert (plan.micro, plan.accumulation) == (64, 2)
    assert plan.micro * plan.accumulation * plan.world_size == 256
    assert plan_batches(96, micro_cap=40).micro == 32  # the largest divisor under the cap
    with pytest.raises(ValueError, match="not divisible by the trial's 3 devices"):
        plan_batches(64, world_size=3)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_accumulation_matches_one_large_batch(optimizer: str) -> None:
    """k micro-steps of b give the weights of one batch of k*b after an optimizer step."""
    data = small_digits(64)  # exactly one optimizer step per epoch
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.1, optimizer=optimizer, momentum=0.0)
    whole, accumulated = fresh_model(), fresh_model()
    assert_same_weights(weights(whole), weights(accumulated))
    train_classifier(RecordingTrial(), whole, data, cfg)
    result = train_classifier(
        RecordingTrial(), accumulated, data, TrainConfig(**{**cfg.__dict__, "micro_batch": 16})
    )
    assert (result.plan.micro, result.plan.accumulation) == (16, 4)
    assert_same_weights(weights(whole), weights(accumulated), atol=1e-5)
    assert not torch.equal(weights(whole)[0], weights(fresh_model())[0])  # it did train


class RunsOutOfMemory(nn.Module):
    """Raises CUDA's out-of-memory error for training batches above ``limit`` (CPU simulation)."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(f"simulated: batch {x.shape[0]} > {self.limit}")
        return self.inner(x)  # type: ignore[no-any-return]


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch() -> None:
    data = small_digits(128)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, optimizer="sgd", momentum=0.0)
    reference = fresh_model()
    train_classifier(RecordingTrial(), reference, data, cfg)
    trial = RecordingTrial()
    limited = RunsOutOfMemory(fresh_model(), limit=16)
    result = train_classifier(trial, limited, data, cfg)
    assert result.plan.as_dict() == {
        "effective": 64,
        "micro": 16,
        "accumulation": 4,
        "world_size": 1,
    }
    assert [(f["from_micro"], f["to_micro"]) for f in result.oom_fallbacks] == [(64, 32), (32, 16)]
    assert trial.user_attrs["batch"]["micro"] == 16
    assert trial.user_attrs["oom_fallbacks"] == result.oom_fallbacks
    assert_same_weights(weights(reference), weights(limited.inner), atol=1e-5)


def test_out_of_memory_at_one_sample_gives_up() -> None:
    with pytest.raises(torch.cuda.OutOfMemoryError):
        train_classifier(
            RecordingTrial(),
            RunsOutOfMemory(fresh_model(), limit=0),
            small_digits(64),
            TrainConfig(epochs=1, batch_size=8, lr=0.1),
        )


def test_plateau_steps_once_per_epoch_on_the_validation_metric() -> None:
    # A learning rate too small to change the accuracy (but above the scheduler's eps):
    # the metric plateaus from epoch 0.
    cfg = TrainConfig(
        epochs=5,
        batch_size=32,
        lr=1e-6,
        optimizer="sgd",
        momentum=0.0,
        schedule=ScheduleConfig("plateau", plateau_patience=1, plateau_factor=0.5),
    )
    result = train_classifier(RecordingTrial(), fresh_model(), small_digits(256), cfg)
    # 8 batches per epoch: stepped per batch it would have decayed within the first epoch.
    assert result.lr_history == pytest.approx([1e-6, 1e-6, 5e-7, 5e-7, 2.5e-7])


def test_step_schedule_decays_per_epoch() -> None:
    cfg = TrainConfig(
        epochs=3,
        batch_size=32,
        lr=0.08,
        optimizer="sgd",
        schedule=ScheduleConfig("step", step_size=1, gamma=0.5),
    )
    result = train_classifier(RecordingTrial(), fresh_model(), small_digits(128), cfg)
    assert result.lr_history == pytest.approx([0.04, 0.02, 0.01])


def test_cosine_warmup_and_onecycle_step_per_optimizer_step() -> None:
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = make_schedule(
        optimizer, ScheduleConfig("cosine", warmup_epochs=1), epochs=3, steps_per_epoch=4, lr=0.1
    )
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.after_optimizer_step()
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])  # linear warmup over one epoch
    assert lrs[4] == pytest.approx(0.1) and lrs[-1] < 0.01  # then cosine decay towards 0
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = make_schedule(
        optimizer, ScheduleConfig("onecycle"), epochs=2, steps_per_epoch=10, lr=0.1
    )
    lrs = []
    for _ in range(20):
        optimizer.step()
        schedule.after_optimizer_step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(0.1, rel=0.05)  # peaks at lr
    assert lrs[0] < 0.02 and lrs[-1] < 0.002  # from low, back down below the start


def _weight_norms(cfg: TrainConfig) -> tuple[float, float]:
    model = fresh_model()
    train_classifier(RecordingTrial(), model, small_digits(256), cfg)
    l1 = sum(float(p.detach().abs().sum()) for p in model.parameters() if p.ndim > 1)
    l2 = sum(float((p.detach() ** 2).sum()) for p in model.parameters() if p.ndim > 1)
    return l1, l2


def test_l1_and_l2_shrink_the_weights() -> None:
    base = TrainConfig(epochs=3, batch_size=32, lr=0.05, optimizer="sgd")
    plain_l1, plain_l2 = _weight_norms(base)
    with_l1, _ = _weight_norms(TrainConfig(**{**base.__dict__, "l1": 0.05}))
    _, with_l2 = _weight_norms(TrainConfig(**{**base.__dict__, "l2": 0.1}))
    assert with_l1 < 0.9 * plain_l1
    assert with_l2 < 0.9 * plain_l2


def test_adamw_decay_is_decoupled() -> None:
    model = fresh_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    from hpsearch.objectives.trainer import make_optimizer

    built = make_optimizer(
        model, TrainConfig(epochs=1, batch_size=8, lr=0.1, optimizer="adamw", l2=0.5)
    )
    assert isinstance(built, torch.optim.AdamW) and built.param_groups[0]["weight_decay"] == 0.5
    assert isinstance(optimizer, torch.optim.AdamW)


# --- DDP: two gloo processes on this CPU -------------------------------------------------

DDP_CFG = {"epochs": 2, "batch_size": 32, "lr": 0.1, "optimizer": "sgd", "momentum": 0.5}


def _ddp_rank(rank: int, world: int, init_file: str, out_dir: str, prune_at: int | None) -> None:
    import datetime as dt

    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=dt.timedelta(seconds=60),
    )
    torch.set_num_threads(1)
    try:
        trial = DistributedTrial(RecordingTrial(prune_at=prune_at) if rank == 0 else None)
        model = fresh_model()
        try:
            result = train_classifier(trial, model, small_digits(256), TrainConfig(**DDP_CFG))
        except optuna.TrialPruned:
            Path(out_dir, f"pruned-{rank}").write_text("pruned")
            return
        torch.save(
            {"weights": weights(model), "metric": result.metric, "plan": result.plan.as_dict()},
            os.path.join(out_dir, f"rank-{rank}.pt"),
        )
    finally:
        dist.barrier()  # tear down together
        end_process_group()


def _spawn_ddp(tmp_path: Path, prune_at: int | None) -> None:
    context = mp.start_processes(
        _ddp_rank,
        args=(2, str(tmp_path / "init"), str(tmp_path), prune_at),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    while not context.join(timeout=120):
        pass


@pytest.mark.slow
def test_ddp_two_ranks_match_a_single_process(tmp_path: Path) -> None:
    _spawn_ddp(tmp_path, prune_at=None)
    single_model = fresh_model()
    single = train_classifier(
        RecordingTrial(), single_model, small_digits(256), TrainConfig(**DDP_CFG)
    )
    rank0 = torch.load(tmp_path / "rank-0.pt")
    rank1 = torch.load(tmp_path / "rank-1.pt")
    assert rank0["plan"] == {"effective": 32, "micro": 16, "accumulation": 1, "world_size": 2}
    assert_same_weights(rank0["weights"], rank1["weights"], atol=0)  # replicas stay identical
    assert_same_weights(rank0["weights"], weights(single_model), atol=1e-5)
    assert rank0["metric"] == pytest.approx(single.metric)


@pytest.mark.slow
def test_pruned_ddp_trial_ends_on_every_rank(tmp_path: Path) -> None:
    _spawn_ddp(tmp_path, prune_at=0)  # rank 0's pruner says stop after the first epoch
    assert (tmp_path / "pruned-0").exists() and (tmp_path / "pruned-1").exists()
