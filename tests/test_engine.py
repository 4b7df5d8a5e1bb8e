"""Acceptance of the training engine for a user's own model and loss: the regression example.

``hpsearch.fit`` trains examples/regression/regression.py's MLP with its mean-squared-error loss
and "mse" metric (minimized): accumulation, DDP and the two data paths give the same weights;
a trial killed (kill -9, a crash mid-epoch) resumes from its checkpoint to the curve an
uninterrupted run draws, and SIGTERM hands a trial back uncounted; a NaN loss prunes with its reason; the pruner compares the study's
metric in the study's direction, and refuses a metric the engine never evaluates.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from optuna.trial import FrozenTrial, TrialState

import hpsearch
from hpsearch.attrs import NONFINITE_LOSS, RESUMED_FROM_EPOCH, RETRY_OF, SLOT
from hpsearch.objectives import interrupt
from hpsearch.objectives.context import TrialContext, trial_context
from hpsearch.objectives.distributed import DistributedTrial, end_process_group
from hpsearch.search import budget_state, create_study, load_spec_file
from hpsearch.search.runtime._launch import available_cores

from ._support import PAUSING_TRIAL, RecordingTrial, write_study_file
from .conftest import ROOT, hpsearch_command
from .test_fault_tolerance import _trials
from .test_trainer import assert_same_weights, weights

EXAMPLE = ROOT / "examples" / "regression" / "regression.py"


@functools.cache
def regression() -> ModuleType:
    """The example module, as a user wrote it (its build, its Dataset, its data file)."""
    spec = importlib.util.spec_from_file_location("hpsearch_test_regression_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dataset(start: int, stop: int) -> Any:
    example = regression()
    return example.CsvRows(example.DATA, start, stop)


def tensors(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = dataset(start, stop)
    return rows.x, rows.y


# Small slices of the example's data: 256 training rows (8 steps of 32 per epoch), 200 to score.
TRAIN, VAL = (0, 256), (1600, 1800)
BASE = {"width": 32, "depth": 2, "epochs": 2, "batch_size": 32, "lr": 0.003, "device": "cpu"}


def fit(
    params: Mapping[str, Any],
    *,
    trial: Any = None,
    data: str = "dataset",
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.mse_loss,
    mse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.mse_loss,
) -> tuple[hpsearch.Fitted, Any]:
    """The example's model, loss and metric through ``hpsearch.fit``; (result, trial)."""
    trial = RecordingTrial() if trial is None else trial
    load = dataset if data == "dataset" else tensors
    result = hpsearch.fit(
        trial,
        {**BASE, **params},
        model=regression().build,
        train=load(*TRAIN),
        val=load(*VAL),
        loss=loss,
        metrics={"mse": mse},
        metric="mse",
    )
    return result, trial


def initial_weights(params: Mapping[str, Any]) -> list[torch.Tensor]:
    torch.manual_seed(int(params.get("seed", 0)))  # as fit seeds a model it builds
    return weights(regression().build({**BASE, **params}))


# --- accumulation, data paths, DDP ---------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_accumulation_4_x_k_equals_one_batch_of_4k(optimizer: str) -> None:
    params = {"optimizer": optimizer, "batch_size": 32}
    accumulated, _ = fit({**params, "micro_batch": 8})
    whole, _ = fit({**params, "micro_batch": 0})
    assert accumulated.plan.as_dict() == {
        "effective": 32,
        "micro": 8,
        "accumulation": 4,
        "world_size": 1,
    }
    assert (whole.plan.micro, whole.plan.accumulation) == (32, 1)
    assert_same_weights(weights(accumulated.model), weights(whole.model), atol=1e-5)
    assert not torch.allclose(weights(whole.model)[0], initial_weights(params)[0])  # it trained
    assert accumulated["mse"] == pytest.approx(whole["mse"], rel=1e-5)


DDP_PARAMS = {"optimizer": "sgd", "momentum": 0.5, "lr": 0.002, "micro_batch": 8}


@functools.cache
def single_process(data: str) -> tuple[list[torch.Tensor], list[tuple[int, float]]]:
    """One process's weights and reported mse, per data path (shared by the tests below)."""
    result, trial = fit(DDP_PARAMS, data=data)
    assert result.plan.as_dict() == {
        "effective": 32,
        "micro": 8,
        "accumulation": 4,
        "world_size": 1,
    }
    return weights(result.model), trial.reports


def test_a_dataset_and_the_same_rows_as_tensors_train_identical_weights() -> None:
    from_dataset, dataset_reports = single_process("dataset")
    from_tensors, tensor_reports = single_process("tensors")
    for a, b in zip(from_dataset, from_tensors, strict=True):
        assert torch.equal(a, b), "the DataLoader path and the tensor path trained apart"
    assert not torch.equal(from_dataset[0], initial_weights(DDP_PARAMS)[0])
    # Scored in batches of different sizes: the same mse up to the order of the sums.
    assert [s for s, _ in dataset_reports] == [s for s, _ in tensor_reports] == [0, 1]
    for (_, a), (_, b) in zip(dataset_reports, tensor_reports, strict=True):
        assert a == pytest.approx(b, rel=1e-6)


def test_dataloader_worker_processes_load_the_same_batches() -> None:
    """`loader_workers` only moves the loading to other processes: the same weights."""
    from_workers, _ = fit({**DDP_PARAMS, "loader_workers": 2})
    for a, b in zip(weights(from_workers.model), single_process("dataset")[0], strict=True):
        assert torch.equal(a, b)


class Stream(torch.utils.data.IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Rows as a stream (a file read line by line, a socket): no length, no random access."""

    def __init__(self, start: int, stop: int) -> None:
        self.rows = dataset(start, stop)

    def __iter__(self) -> Any:
        return (self.rows[i] for i in range(len(self.rows)))


def test_an_iterable_dataset_trains_on_one_device() -> None:
    trial = RecordingTrial()
    result = hpsearch.fit(
        trial,
        {**BASE, "epochs": 3, "micro_batch": 8},
        model=regression().build,
        train=Stream(*TRAIN),
        val=Stream(*VAL),
        loss=F.mse_loss,
        metrics={"mse": F.mse_loss},
        metric="mse",
    )
    reported = [value for _, value in trial.reports]
    assert len(reported) == 3 and reported[-1] < reported[0]  # one pass per epoch, learning
    assert result.plan.accumulation == 4 and result["mse"] == reported[-1]
    with pytest.raises(ValueError, match="needs the steps per epoch"):
        hpsearch.fit(
            RecordingTrial(),
            {**BASE, "schedule": "cosine"},
            model=regression().build,
            train=Stream(*TRAIN),
            val=Stream(*VAL),
            loss=F.mse_loss,
        )


def _ddp_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=dt.timedelta(seconds=120),
    )
    torch.set_num_threads(1)
    try:
        for data in ("dataset", "tensors"):
            recording = RecordingTrial() if rank == 0 else None
            result, _ = fit(DDP_PARAMS, trial=DistributedTrial(recording), data=data)
            torch.save(
                {
                    "weights": weights(result.model),
                    "plan": result.plan.as_dict(),
                    "reports": recording.reports if recording is not None else None,
                },
                os.path.join(out_dir, f"{data}-rank-{rank}.pt"),
            )
    finally:
        dist.barrier()  # tear down together
        end_process_group()


def _spawn(fn: Callable[..., None], args: tuple[Any, ...], nprocs: int, timeout: float) -> None:
    context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the {nprocs} ranks did not finish in {timeout}s")


@pytest.mark.slow
def test_ddp_two_ranks_equal_one_process_on_both_data_paths(tmp_path: Path) -> None:
    _spawn(_ddp_rank, (2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, timeout=300)
    for data in ("dataset", "tensors"):
        rank0 = torch.load(tmp_path / f"{data}-rank-0.pt")
        rank1 = torch.load(tmp_path / f"{data}-rank-1.pt")
        # 32 a step: 16 on each rank, in 2 micro-batches of 8 (the first under no_sync).
        assert rank0["plan"] == {"effective": 32, "micro": 8, "accumulation": 2, "world_size": 2}
        assert_same_weights(rank0["weights"], rank1["weights"], atol=0)  # replicas agree
        single_weights, single_reports = single_process(data)
        assert_same_weights(rank0["weights"], single_weights, atol=1e-5)
        assert [s for s, _ in rank0["reports"]] == [0, 1]
        for (_, a), (_, b) in zip(rank0["reports"], single_reports, strict=True):
            assert a == pytest.approx(b, rel=1e-5)


# --- checkpoints every N steps: a crash mid-epoch resumes mid-epoch --------------------------


class Crash(BaseException):
    """What a kill looks like to the engine: it never returns, and nothing catches it."""


def crash_on_training_call(n: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The example's loss, raising on its ``n``-th training call (evaluation calls not counted)."""
    calls = [0]

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.requires_grad:
            calls[0] += 1
            if calls[0] == n:
                raise interrupt.TrialInterrupted("killed mid-epoch")
        return F.mse_loss(outputs, targets)

    return loss


def crash_on_evaluation(n: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The example's metric, raising in the ``n``-th evaluation (its first batch)."""
    calls = [0]

    def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == n:
            raise Crash("killed while evaluating")
        return F.mse_loss(outputs, targets)

    return mse


CHECKPOINTED = {"epochs": 3, "optimizer": "adam", "lr": 0.01, "checkpoint_every": 3}


def test_checkpoint_every_n_steps_resumes_mid_epoch_to_the_same_weights(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reference, reference_trial = fit(CHECKPOINTED)
    checkpoint = tmp_path / "slot" / "checkpoint.pt"
    with trial_context(TrialContext(checkpoint=str(checkpoint))):
        # 8 steps an epoch: the 12th training step (step 3 of epoch 1) crashes. The last
        # checkpoint (every 3 steps) holds the state after 9 steps: epoch 1, step 1.
        with pytest.raises(interrupt.TrialInterrupted):
            fit(CHECKPOINTED, loss=crash_on_training_call(12))
        saved = torch.load(checkpoint, weights_only=False)
        assert (saved["epoch"], saved["step"]) == (1, 1), (saved["epoch"], saved["step"])
        with caplog.at_level("INFO", logger="hpsearch.objectives.trainer"):
            resumed, trial = fit(CHECKPOINTED)
    assert f"resuming from {checkpoint} at epoch 1 step 1" in caplog.text  # mid-epoch
    assert trial.user_attrs[RESUMED_FROM_EPOCH] == 1
    assert RESUMED_FROM_EPOCH not in reference_trial.user_attrs
    # The resumed run reports the epochs it ran, as the uninterrupted run did.
    assert trial.reports == reference_trial.reports[1:]
    assert_same_weights(weights(resumed.model), weights(reference.model), atol=1e-6)
    assert resumed["mse"] == reference["mse"]


def test_a_crash_while_evaluating_after_a_step_checkpoint_resumes(tmp_path: Path) -> None:
    """checkpoint_every = 4 divides the 8 steps of an epoch: the epoch's last step writes a
    checkpoint at (epoch, 8) before the evaluation. A kill during that evaluation must still
    resume (evaluate that epoch, or train on), not fail the retried trial."""
    params = {**CHECKPOINTED, "checkpoint_every": 4}
    reference, reference_trial = fit(params)
    checkpoint = tmp_path / "slot" / "checkpoint.pt"
    with trial_context(TrialContext(checkpoint=str(checkpoint))):
        with pytest.raises(Crash):
            # 200 validation rows are one batch: the 2nd evaluation is epoch 1's.
            fit(params, mse=crash_on_evaluation(2))
        saved = torch.load(checkpoint, weights_only=False)
        assert (saved["epoch"], saved["step"]) == (1, 8)
        try:
            resumed, trial = fit(params)
        except ValueError as err:
            pytest.fail(
                "a retry resuming from a checkpoint written at the end of an epoch's last step "
                f"(epoch 1, step 8 of 8) fails instead of evaluating that epoch: {err} "
                "(objectives/_loop.py Loop._train_epoch: first == steps_per_epoch leaves "
                "step = first - 1 < first)"
            )
    assert trial.user_attrs[RESUMED_FROM_EPOCH] == 1
    assert trial.reports == reference_trial.reports[1:]
    assert_same_weights(weights(resumed.model), weights(reference.model), atol=1e-6)


# --- the pruner: the study's metric, in the study's direction; refused when not evaluated ----

MINIMIZE_MSE = TrialContext(metrics=("mse",), directions=("minimize",), prunes=True)


def test_a_minimized_mse_prunes_the_worse_trial_and_keeps_the_better(tmp_path: Path) -> None:
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'prune.db'}",
        direction="minimize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
    )
    configs = {
        "medium": {"optimizer": "sgd", "lr": 0.001, "momentum": 0.0, "epochs": 3},
        "terrible": {"optimizer": "sgd", "lr": 1e-6, "momentum": 0.0, "epochs": 3},
        "good": {"optimizer": "adam", "lr": 0.01, "epochs": 3},
    }
    curves: dict[str, list[float]] = {}
    for name, params in configs.items():
        _, recorded = fit(params)  # the same training without a study: its mse per epoch
        curves[name] = [value for _, value in recorded.reports]
        trial = study.ask()
        try:
            with trial_context(MINIMIZE_MSE):
                # No metric= here: the engine reports the study's metric from the context.
                result = hpsearch.fit(
                    trial,
                    {**BASE, **params},
                    model=regression().build,
                    train=dataset(*TRAIN),
                    val=dataset(*VAL),
                    loss=F.mse_loss,
                    metrics={"mse": F.mse_loss},
                )
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, result["mse"])
    medium, terrible, good = study.get_trials()
    assert curves["terrible"][0] > curves["medium"][0], curves
    assert all(g < m for g, m in zip(curves["good"], curves["medium"], strict=True)), curves
    assert medium.state == TrialState.COMPLETE
    # The reported values are the mse of each evaluation, step by step.
    assert medium.intermediate_values == dict(enumerate(curves["medium"]))
    assert medium.value == curves["medium"][-1]
    assert terrible.state == TrialState.PRUNED, "a higher mse than the median's must be pruned"
    assert terrible.intermediate_values == {0: curves["terrible"][0]}
    assert good.state == TrialState.COMPLETE, "a lower mse than the median's must not be pruned"
    assert good.intermediate_values == dict(enumerate(curves["good"]))


def test_a_pruned_study_on_a_metric_fit_never_evaluates_is_refused() -> None:
    trial = RecordingTrial()
    with (
        trial_context(TrialContext(metrics=("size",), directions=("minimize",), prunes=True)),
        pytest.raises(
            ValueError, match=r"metric 'size' is not one fit evaluates \(val_loss, mse\)"
        ),
    ):
        hpsearch.fit(
            trial,
            {**BASE, "epochs": 1},
            model=regression().build,
            train=tensors(*TRAIN),
            val=tensors(*VAL),
            loss=F.mse_loss,
            metrics={"mse": F.mse_loss},
        )
    assert trial.reports == []
    # Without a pruner, a measurement made after training is the study's own business.
    with trial_context(TrialContext(metrics=("size",), directions=("minimize",), prunes=False)):
        result = hpsearch.fit(
            trial,
            {**BASE, "epochs": 1},
            model=regression().build,
            train=tensors(*TRAIN),
            val=tensors(*VAL),
            loss=F.mse_loss,
            metrics={"mse": F.mse_loss},
        )
    assert trial.reports == [] and set(result) == {"val_loss", "mse"}


# --- real workers on the example study ------------------------------------------------------

EPOCHS = 8
STUDY = {
    "n_trials": 1,
    "metric": "mse",
    "training": {
        "epochs": EPOCHS,
        "batch_size": 128,
        "micro_batch": 64,
        "width": 32,
        "depth": 2,
        "optimizer": "adam",
        "l2": 0.0001,
        "device": "cpu",
    },
    "space": {"lr": {"type": "categorical", "choices": [0.003]}},
}


def write_study(folder: Path, name: str, objective: str | None = None) -> Path:
    """The example's study; by default with the example's objective held after epoch 1
    (PAUSING_OBJECTIVE) while the folder holds a file named ``pause``."""
    folder.mkdir(parents=True, exist_ok=True)
    if objective is None:
        (folder / "pausing.py").write_text(PAUSING_OBJECTIVE)
        objective = f"{folder / 'pausing.py'}:objective"
    resources = {"heartbeat_interval": 1, "grace_period": 3, "artifacts": str(folder / "artifacts")}
    path = folder / f"{name}.toml"
    return write_study_file(path, name=name, objective=objective, resources=resources, **STUDY)


def worker(name: str, url: str, cwd: Path) -> subprocess.Popen[str]:
    command = [*hpsearch_command(), "worker", "--study", name, "--storage", url, "--workers", "1"]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=cwd)


def run_worker(name: str, url: str, cwd: Path) -> str:
    """A worker to the end of the budget; its log."""
    process = worker(name, url, cwd)
    _, log = process.communicate(timeout=600)
    assert process.returncode == 0, log[-3000:]
    return log


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """The learning curve of the example study's one trial, never interrupted: the example's
    objective called as a worker calls it (the study's [training] under the trial's params, as
    many torch threads as a lone worker on this machine takes)."""
    spec = load_spec_file(str(write_study(tmp_path_factory.mktemp("reference"), "reference")))
    threads = torch.get_num_threads()
    torch.set_num_threads(available_cores())
    try:
        trial = RecordingTrial()
        result = regression().objective(trial, {**spec.training, "lr": 0.003})
    finally:
        torch.set_num_threads(threads)
    curve = dict(trial.reports)
    assert sorted(curve) == list(range(EPOCHS)) and curve[EPOCHS - 1] == result["mse"]
    return curve


PAUSING_OBJECTIVE = (
    PAUSING_TRIAL
    + f"""
import runpy

example = runpy.run_path({str(EXAMPLE)!r})


def objective(trial, params):
    return example["objective"](Pausing(trial), params)
"""
)


def start_and_wait(name: str, url: str, cwd: Path) -> tuple[subprocess.Popen[str], FrozenTrial]:
    """A worker command and its trial, held after two reported epochs (the checkpoint written
    after epoch 1 is on disk); removing ``cwd / "pause"`` lets it go on."""
    (cwd / "pause").touch()
    parent = worker(name, url, cwd)
    deadline = time.monotonic() + 300
    while not (cwd / "paused").exists():
        assert parent.poll() is None, parent.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the worker's trial never reached epoch 2"
        time.sleep(0.1)
    (running,) = [t for t in _trials(url, name) if t.state == TrialState.RUNNING]
    assert len(running.intermediate_values) == 2
    return parent, running


def assert_resumed_like_uninterrupted(
    url: str, name: str, victim: FrozenTrial, reference: dict[int, float]
) -> FrozenTrial:
    trials = {t.number: t for t in _trials(url, name)}
    state = budget_state(trials.values(), 1)
    assert (state.used, state.complete, state.lost, state.running, state.waiting) == (
        1,
        1,
        1,
        0,
        0,
    ), state
    assert trials[victim.number].state == TrialState.FAIL
    assert "error" not in trials[victim.number].user_attrs
    (retry,) = [t for t in trials.values() if t.system_attrs.get(RETRY_OF) == victim.number]
    assert retry.state == TrialState.COMPLETE, retry.user_attrs
    assert retry.system_attrs[SLOT] == victim.system_attrs[SLOT]
    assert retry.params == victim.params == {"lr": 0.003}
    assert retry.user_attrs[RESUMED_FROM_EPOCH] >= 1
    # The same learning curve, epoch by epoch, as a run that was never interrupted.
    assert sorted(retry.intermediate_values) == list(range(EPOCHS))
    for epoch, value in reference.items():
        assert retry.intermediate_values[epoch] == pytest.approx(value, rel=1e-6, abs=1e-6), epoch
    assert retry.value == pytest.approx(reference[EPOCHS - 1], rel=1e-6, abs=1e-6)
    return retry


@pytest.mark.slow
def test_kill_9_mid_trial_resumes_at_the_checkpointed_epoch_with_the_same_curve(
    postgres_url: str, tmp_path: Path, study_name: str, uninterrupted: dict[int, float]
) -> None:
    url = postgres_url
    create_study(load_spec_file(str(write_study(tmp_path, study_name))), url)
    parent, victim = start_and_wait(study_name, url, tmp_path)
    os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
    parent.communicate(timeout=120)  # the command ends with its worker
    (tmp_path / "pause").unlink()
    run_worker(study_name, url, tmp_path)  # reaps the dead trial after its grace period, resumes
    assert_resumed_like_uninterrupted(url, study_name, victim, uninterrupted)


@pytest.mark.slow
def test_sigterm_hands_the_trial_back_uncounted(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'sigterm.db'}"
    create_study(load_spec_file(str(write_study(tmp_path, study_name))), url)
    parent, victim = start_and_wait(study_name, url, tmp_path)
    parent.send_signal(signal.SIGTERM)
    _, log = parent.communicate(timeout=120)
    assert parent.returncode == 0, log[-3000:]
    assert "SIGTERM: handing the running trial back" in log
    trials = _trials(url, study_name)
    state = budget_state(trials, 1)
    assert (state.used, state.lost, state.waiting, state.running) == (0, 1, 1, 0), state
    handed_back = next(t for t in trials if t.number == victim.number)
    assert handed_back.state == TrialState.FAIL and "error" not in handed_back.user_attrs
    (retry,) = [t for t in trials if t.system_attrs.get(RETRY_OF) == victim.number]
    assert retry.state == TrialState.WAITING
    assert retry.system_attrs[SLOT] == victim.system_attrs[SLOT]
    assert retry.params == victim.params
    # Its checkpoint stays for the retry (the kill -9 test above runs one to the end).
    assert Path(victim.user_attrs["checkpoint"]).is_file()


NAN_OBJECTIVE = f"""
import importlib.util

import torch.nn.functional as F

import hpsearch

_spec = importlib.util.spec_from_file_location("regression_example", {str(EXAMPLE)!r})
regression = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regression)


def objective(trial, params):
    calls = [0]

    def loss(outputs, targets):
        value = F.mse_loss(outputs, targets)
        if outputs.requires_grad:
            calls[0] += 1
            if calls[0] == 5:  # step 4 of epoch 0 goes NaN, and so does every later one
                return value * float("nan")
        return value

    return hpsearch.fit(
        trial,
        params,
        model=regression.build,
        train=regression.CsvRows(regression.DATA, 0, 640),
        val=regression.CsvRows(regression.DATA, 1600, 1800),
        loss=loss,
        metrics={{"mse": F.mse_loss}},
    )
"""


@pytest.mark.slow
def test_a_nan_loss_prunes_the_trial_with_the_reason(
    postgres_url: str, tmp_path: Path, study_name: str
) -> None:
    url = postgres_url
    (tmp_path / "nan_loss.py").write_text(NAN_OBJECTIVE)
    path = write_study(tmp_path, study_name, objective="nan_loss.py:objective")
    create_study(load_spec_file(str(path)), url)
    log = run_worker(study_name, url, tmp_path)
    (trial,) = _trials(url, study_name)
    assert trial.state == TrialState.PRUNED, (trial.user_attrs, log[-3000:])
    reason = trial.user_attrs[NONFINITE_LOSS]
    # 640 rows are 5 steps of 128 (2 micro-batches each): the NaN of the 5th forward (in step 2)
    # is found when epoch 0 ends (its step 4), before any evaluation is reported.
    assert reason.startswith("loss became NaN or infinite by step 4 of epoch 0"), reason
    assert trial.intermediate_values == {}
    assert "error" not in trial.user_attrs
    assert budget_state([trial], 1).used == 1
