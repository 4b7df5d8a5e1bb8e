"""Live options: a run resumed from a checkpoint whose config differs only in options the
trial's context names live (what population-based training explores between intervals)
continues with the new values, its schedule scaled to the new lr, and records their history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hpsearch
from hpsearch.attrs import PARAM_SCHEDULE, RESUMED_FROM_EPOCH
from hpsearch.objectives import _loop
from hpsearch.objectives.context import TrialContext, trial_context
from hpsearch.objectives.schedules import Schedule

from ._support import RecordingTrial

# 96 training rows in batches of 16: 6 optimizer steps an epoch.
STEPS_PER_EPOCH = 6
BASE = {
    "epochs": 4,
    "batch_size": 16,
    "lr": 0.02,
    "optimizer": "sgd",
    "momentum": 0.9,
    "l2": 1e-4,
    "device": "cpu",
}
LIVE = ("lr", "l2")


def _data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=generator)
    y = x @ torch.randn(8, 1, generator=generator) + 0.1 * torch.randn(128, 1, generator=generator)
    return (x[:96], y[:96]), (x[96:], y[96:])


TRAIN, VAL = _data()


def build(params: Mapping[str, Any]) -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def fit(params: Mapping[str, Any], trial: RecordingTrial | None = None) -> RecordingTrial:
    trial = RecordingTrial() if trial is None else trial
    hpsearch.fit(
        trial,
        {**BASE, **params},
        model=build,
        train=TRAIN,
        val=VAL,
        loss=F.mse_loss,
        metric="val_loss",
    )
    return trial


def first_interval(params: Mapping[str, Any]) -> RecordingTrial:
    """Epochs 0 and 1, then the trial ends at its second report, as a PBT member's does."""
    trial = RecordingTrial(prune_at=1)
    with pytest.raises(optuna.TrialPruned):
        fit(params, trial)
    return trial


@pytest.fixture
def optimizers(monkeypatch: pytest.MonkeyPatch) -> list[torch.optim.Optimizer]:
    """Every optimizer the engine builds, in order (the last is the last run's)."""
    built: list[torch.optim.Optimizer] = []
    make = _loop.make_optimizer

    def recording(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        built.append(make(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(_loop, "make_optimizer", recording)
    return built


@pytest.fixture
def step_lrs(
    monkeypatch: pytest.MonkeyPatch, optimizers: list[torch.optim.Optimizer]
) -> Iterator[list[float]]:
    """The lr each optimizer step took (read before the schedule steps), over every run."""
    lrs: list[float] = []
    after: Callable[[Schedule], None] = Schedule.after_optimizer_step

    def recording(self: Schedule) -> None:
        lrs.append(float(optimizers[-1].param_groups[0]["lr"]))
        after(self)

    monkeypatch.setattr(Schedule, "after_optimizer_step", recording)
    yield lrs


def values(params: Mapping[str, Any]) -> dict[str, float]:
    options = {"l1": 0.0, **BASE, **params}
    return {name: options[name] for name in ("lr", "momentum", "l1", "l2")}


NEW = {"lr": 0.05, "l2": 1e-3}


def test_a_resume_with_new_live_values_continues_with_them(
    tmp_path: Path, optimizers: list[torch.optim.Optimizer], caplog: pytest.LogCaptureFixture
) -> None:
    context = TrialContext(checkpoint=str(tmp_path / "checkpoint.pt"), live=LIVE)
    with trial_context(context):
        before = first_interval({})
        with caplog.at_level("INFO", logger="hpsearch.objectives.trainer"):
            after = fit(NEW)
    assert before.user_attrs[PARAM_SCHEDULE] == [[0, values({})]]
    assert after.user_attrs[RESUMED_FROM_EPOCH] == 2  # not from scratch
    assert [step for step, _ in after.reports] == [2, 3]
    assert "resuming with lr 0.05 (was 0.02), l2 0.001 (was 0.0001)" in caplog.text
    for group in optimizers[-1].param_groups:
        assert group["lr"] == pytest.approx(0.05)  # no schedule: the new lr itself
        assert group["weight_decay"] == pytest.approx(1e-3)
        assert group["momentum"] == pytest.approx(0.9)
    assert after.user_attrs[PARAM_SCHEDULE] == [[0, values({})], [2, values(NEW)]]
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["live_history"] == after.user_attrs[PARAM_SCHEDULE]  # the next one goes on


def test_a_checkpoint_without_a_history_starts_it_from_its_config(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    with trial_context(TrialContext(checkpoint=str(checkpoint), live=LIVE)):
        first_interval({})
        saved = torch.load(checkpoint, weights_only=False)
        del saved["live_history"]  # as written before live options existed
        torch.save(saved, checkpoint)
        after = fit(NEW)
    assert after.user_attrs[RESUMED_FROM_EPOCH] == 2
    assert after.user_attrs[PARAM_SCHEDULE] == [[0, values({})], [2, values(NEW)]]


@pytest.mark.parametrize(
    ("live", "changed"),
    [((), {"lr": 0.05}), (("lr",), {"l2": 1e-3}), (("batch_size",), {"batch_size": 32})],
    ids=["no-live-options", "l2-not-live", "not-a-live-option"],
)
def test_a_change_outside_the_live_options_starts_over(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    live: tuple[str, ...],
    changed: dict[str, Any],
) -> None:
    with trial_context(TrialContext(checkpoint=str(tmp_path / "checkpoint.pt"), live=live)):
        first_interval({})
        after = fit(changed)
    assert RESUMED_FROM_EPOCH not in after.user_attrs
    assert [step for step, _ in after.reports] == [0, 1, 2, 3]
    assert "was made with another configuration; starting over" in caplog.text
    # An ordinary study's trial gets no history attribute.
    assert (PARAM_SCHEDULE in after.user_attrs) == bool(live)


SCHEDULES = {
    "cosine": {"schedule": "cosine", "warmup_epochs": 1.0},
    "onecycle": {"schedule": "onecycle"},
    "step": {"schedule": "step", "step_size": 1, "gamma": 0.5},
    "plateau": {"schedule": "plateau", "plateau_patience": 0},
    "none": {"schedule": "none"},
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_the_schedule_continues_at_the_new_lr(
    tmp_path: Path, step_lrs: list[float], schedule: str
) -> None:
    params = SCHEDULES[schedule]
    fit(params)  # uninterrupted, at the old lr
    reference = list(step_lrs)
    assert len(reference) == 4 * STEPS_PER_EPOCH
    step_lrs.clear()
    with trial_context(TrialContext(checkpoint=str(tmp_path / "checkpoint.pt"), live=LIVE)):
        first_interval(params)
        assert step_lrs == pytest.approx(reference[: 2 * STEPS_PER_EPOCH])
        step_lrs.clear()
        fit({**params, "lr": 2 * BASE["lr"]})
    resumed = reference[2 * STEPS_PER_EPOCH :]
    assert len(step_lrs) == len(resumed)
    assert step_lrs[0] == pytest.approx(2 * resumed[0], rel=1e-6)
    if schedule != "plateau":  # which plateaus decay depends on the metric the new lr gives
        assert step_lrs == pytest.approx([2 * lr for lr in resumed], rel=1e-6)


def test_a_sharded_checkpoint_resumes_with_a_new_lr(
    tmp_path: Path, optimizers: list[torch.optim.Optimizer]
) -> None:
    """strategy fsdp on one process trains unsharded but writes the sharded folder."""
    checkpoint = tmp_path / "checkpoint.pt"
    params = {"strategy": "fsdp"}
    with trial_context(TrialContext(checkpoint=str(checkpoint), live=LIVE)):
        first_interval(params)
        assert checkpoint.is_dir()
        after = fit({**params, **NEW})
    assert after.user_attrs[RESUMED_FROM_EPOCH] == 2
    for group in optimizers[-1].param_groups:
        assert group["lr"] == pytest.approx(0.05)
        assert group["weight_decay"] == pytest.approx(1e-3)
    assert after.user_attrs[PARAM_SCHEDULE] == [
        [0, values(params)],
        [2, values({**params, **NEW})],
    ]


def resumed_run(tmp_path: Path, params: Mapping[str, Any]) -> tuple[list[float], RecordingTrial]:
    """Run A: a PBT member's two intervals, the second resumed with NEW; its reported values
    over the four epochs, and the second interval's trial."""
    with trial_context(TrialContext(checkpoint=str(tmp_path / "checkpoint.pt"), live=LIVE)):
        before = first_interval(params)
        after = fit({**params, **NEW})
    assert after.user_attrs[RESUMED_FROM_EPOCH] == 2
    return before.values + after.values, after


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_a_replayed_schedule_reproduces_the_resumed_run(tmp_path: Path, schedule: str) -> None:
    params = SCHEDULES[schedule]
    resumed, after = resumed_run(tmp_path, params)
    exported = after.user_attrs[PARAM_SCHEDULE]
    assert exported == [[0, values(params)], [2, values({**params, **NEW})]]
    # Run B: from scratch with the first entry's values, switching as `hpsearch train` asks.
    replay = tuple((first, dict(live)) for first, live in exported[1:])
    with trial_context(TrialContext(replay=replay)):
        replayed = fit(params)
    assert [step for step, _ in replayed.reports] == [0, 1, 2, 3]
    assert replayed.values == pytest.approx(resumed, rel=1e-6)
    assert replayed.user_attrs[PARAM_SCHEDULE] == exported


def test_a_replayed_switch_at_epoch_0_starts_with_its_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    context = TrialContext(replay=((0, NEW),))
    with trial_context(context), caplog.at_level("INFO", logger="hpsearch.objectives.trainer"):
        replayed = fit({})
    direct = fit(NEW)
    assert "from epoch 0 the replayed schedule trains with lr 0.05 (was 0.02)" in caplog.text
    assert replayed.values == pytest.approx(direct.values, rel=1e-6)
    # The switch replaces the first entry: the run trained with NEW throughout.
    assert replayed.user_attrs[PARAM_SCHEDULE] == [[0, values(NEW)]]


def test_a_replayed_schedule_may_change_live_options_only() -> None:
    trial = RecordingTrial()
    context = TrialContext(replay=((2, {"lr": 0.05, "batch_size": 32}),))
    with (
        trial_context(context),
        pytest.raises(ValueError, match="changes 'batch_size' at epoch 2") as raised,
    ):
        fit({}, trial)
    assert "\n" not in str(raised.value)
    assert "it can: lr, momentum, l1, l2" in str(raised.value)
    assert trial.reports == []  # refused before anything trained


def test_one_cycle_keeps_cycling_the_momentum_at_a_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, optimizers: list[torch.optim.Optimizer]
) -> None:
    """One-cycle sets SGD's momentum every step: a resume with a new lr leaves it to it."""
    momenta: list[float] = []
    after: Callable[[Schedule], None] = Schedule.after_optimizer_step

    def recording(self: Schedule) -> None:
        momenta.append(float(optimizers[-1].param_groups[0]["momentum"]))
        after(self)

    monkeypatch.setattr(Schedule, "after_optimizer_step", recording)
    params = SCHEDULES["onecycle"]
    fit(params)
    reference = list(momenta)
    momenta.clear()
    with trial_context(TrialContext(checkpoint=str(tmp_path / "checkpoint.pt"), live=LIVE)):
        first_interval(params)
        fit({**params, **NEW})
    assert momenta == pytest.approx(reference)
