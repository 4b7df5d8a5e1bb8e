"""The service for a training loop of your own: report, save, resume, stop.

``hpsearch.fit`` checkpoints, resumes, reports and stops for you. A loop you wrote yourself gets
the same through four names::

    @hpsearch.resumable
    def objective(trial, params):
        model, optimizer = build(params)
        saved = hpsearch.get_checkpoint(trial)          # None, or what the last report saved
        start = 0
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            start = saved["epoch"] + 1
        for epoch in range(start, params["epochs"]):
            loss = train_one_epoch(model, optimizer)
            hpsearch.report(trial, {"loss": loss}, epoch, checkpoint={
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch})
        return loss

``report`` writes the checkpoint first (atomically, to the file the worker names for the
trial's slot), then reports the study's metric, then asks the pruner: a prune raises
``optuna.TrialPruned``, and a stop the worker was asked for (SIGTERM) raises
``TrialInterrupted``, which hands the trial back to resume from that checkpoint. Under DDP or
FSDP (``devices_per_trial``), every rank calls the same functions in the same order: rank 0
writes a plain checkpoint and reports, every rank gets the same decisions. A sharded state
(``hpsearch.Sharded``) is written and read by every rank, on any group size.

Why the checkpoint travels with its report: a worker killed between the two would otherwise
resume past an evaluation no one decided on. The file keeps the report; a resumed trial reports
it again and asks the pruner (or the scheduler that may pause it there) before going on.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hpsearch import attrs
from hpsearch.files import replacing
from hpsearch.objectives import interrupt
from hpsearch.objectives.context import current_context

log = logging.getLogger("hpsearch.report")

F = TypeVar("F", bound=Callable[..., Any])

# What a checkpoint written by `report` holds beside the loop's own state.
_FORMAT = "hpsearch.report/1"
# The attribute `resumable` puts on an objective: `create` reads it (a pausing schedule needs it).
RESUMABLE_ATTRIBUTE = "hpsearch_resumable"


@dataclass(frozen=True)
class Sharded:
    """A sharded state (torch.distributed.checkpoint): every rank writes its shards of
    ``model`` and ``optimizer`` (FSDP2 or whole), and ``state`` (small, picklable: the epoch,
    a scheduler's state) beside them. To read it back, pass the model and optimizer to fill:
    ``get_checkpoint(trial, into=Sharded(model, optimizer))``."""

    model: Any
    optimizer: Any
    state: Mapping[str, Any] = field(default_factory=dict)


def resumable(objective: F) -> F:
    """Declare that an objective resumes from ``get_checkpoint``: a pausing schedule (ASHA, PBT)
    may then pause it at a rung and resume it later, as it does a ``hpsearch.fit`` objective."""
    setattr(objective, RESUMABLE_ATTRIBUTE, True)
    return objective


def is_resumable(objective: Any) -> bool:
    return getattr(objective, RESUMABLE_ATTRIBUTE, False) is True


def report(
    trial: Any,
    metrics: float | Mapping[str, float],
    step: int,
    *,
    checkpoint: Mapping[str, Any] | Sharded | None = None,
) -> None:
    """Report ``metrics`` for ``step`` (an epoch, or any increasing count), after saving
    ``checkpoint`` as the state a retried or promoted trial resumes from.

    ``metrics``: one value, or a dict that holds the study's metric (the others are ignored).
    Raises ``optuna.TrialPruned`` when the pruner (or a compute budget, or a pausing schedule)
    ends the trial here, and ``TrialInterrupted`` when the worker was asked to stop.
    """
    context = current_context()
    name, value = _metric(metrics, context.metrics)
    if checkpoint is not None:
        _save(trial, context.checkpoint, checkpoint, step, value)
    _report_and_decide(trial, name, value, step)


def report_fixed(trial: Any, metrics: Mapping[str, float]) -> None:
    """Record metrics that the trial's configuration fixes before training (a model's size, its
    latency): the Pareto pruner of a multi-objective study compares them with completed trials
    and stops a trial whose best case is dominated. Call it before the first ``report``; the
    objective still returns every metric at the end."""
    if _rank(trial) != 0:
        return
    fixed = {name: float(value) for name, value in metrics.items()}
    trial.set_user_attr(attrs.FIXED_METRICS, fixed)


def get_checkpoint(trial: Any, *, into: Sharded | None = None) -> dict[str, Any] | None:
    """The state the last ``report`` of this trial's slot saved, or None (a fresh trial, or
    outside a worker). A sharded checkpoint is loaded into ``into``'s model and optimizer, and
    its ``state`` returned.

    A resumed trial's last report is made again, and the pruner asked about it: this raises
    ``optuna.TrialPruned`` where the trial is to stop (or pause) at the step it resumes after.
    """
    context = current_context()
    path = context.checkpoint
    if not path or not os.path.exists(path):
        return None
    try:
        saved = _load(path, into)
    except _NotOurs as err:
        log.warning("checkpoint %s is not one hpsearch.report wrote (%s); starting over", path, err)
        return None
    step = int(saved["step"])
    log.info("resuming from %s after step %d", path, step)
    report_again(trial, step, saved["report"])
    state: dict[str, Any] = dict(saved["state"])
    return state


def report_again(trial: Any, step: int, value: float | None) -> None:
    """What a resumed trial does first: record where it resumed, report its checkpoint's last
    evaluation again and ask the pruner about it. A kill may have come between the checkpoint
    and its report, or between the report and the decision on it (a prune, a pause at a rung).
    """
    context = current_context()
    trial.set_user_attr(attrs.RESUMED_FROM_EPOCH, step + 1)
    if context.report_on_resume and value is not None:
        name = context.metrics[0] if context.metrics else "value"
        _report_and_decide(trial, name, float(value), step)


def safe_point(trial: Any) -> None:
    """Raise ``TrialInterrupted`` on every rank if the worker was asked to stop (SIGTERM).

    ``report`` is one; call this where a loop may stop between reports (every N steps of a long
    epoch): the trial goes back to the queue and resumes from its last checkpoint.
    """
    stop = interrupt.STOP.is_set()
    share = getattr(trial, "share", None)
    if share is not None:  # only rank 0's worker sees the signal: the group stops as one
        stop = bool(share(stop))
    if stop:
        raise interrupt.TrialInterrupted("stop requested")


def _report_and_decide(trial: Any, name: str, value: float | None, step: int) -> None:
    import optuna

    context = current_context()
    # A study of several metrics is pruned only by the Pareto pruner, on the first metric.
    if value is not None and (len(context.directions) <= 1 or context.prunes):
        with warnings.catch_warnings():
            # A retry usually inherited the report it makes again; Optuna keeps it and warns.
            warnings.simplefilter("ignore")
            trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} with {name} {value:.4g}")
    safe_point(trial)


def _metric(
    metrics: float | Mapping[str, float], study_metrics: tuple[str, ...]
) -> tuple[str, float | None]:
    """The study's metric and its value in ``metrics``."""
    if not isinstance(metrics, Mapping):
        return (study_metrics[0] if study_metrics else "value"), float(metrics)
    if not study_metrics:  # outside a worker: one value is the metric, several are not reported
        if len(metrics) == 1:
            [(name, value)] = metrics.items()
            return name, float(value)
        return "value", None
    name = study_metrics[0]
    if name not in metrics:
        raise ValueError(
            f"hpsearch.report: the study's metric {name!r} is not among the reported metrics "
            f"{sorted(metrics)}; report it, or set [study] metric to one of them"
        )
    return name, float(metrics[name])


def _rank(trial: Any) -> int:
    return int(getattr(trial, "rank", 0))


def _save(
    trial: Any,
    path: str | None,
    checkpoint: Mapping[str, Any] | Sharded,
    step: int,
    value: float | None,
) -> None:
    if path is None:
        return  # outside a worker: nowhere to resume from
    import torch

    meta = {"format": _FORMAT, "step": step, "report": value}
    if isinstance(checkpoint, Sharded):
        from hpsearch.objectives import sharding

        if _rank(trial) == 0:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        meta["state"] = dict(checkpoint.state)
        sharding.save(path, checkpoint.model, checkpoint.optimizer, meta)
        return
    if _rank(trial) != 0:
        return  # DDP ranks hold the same state: rank 0 writes it
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.isdir(path):
        shutil.rmtree(path)  # a sharded state of an earlier run of the slot
    with replacing(path) as partial:
        torch.save({**meta, "state": dict(checkpoint)}, partial)


class _NotOurs(Exception):
    pass


def _load(path: str, into: Sharded | None) -> dict[str, Any]:
    import torch

    if os.path.isdir(path):
        from hpsearch.objectives import sharding

        meta = sharding.load_meta(path)
        if meta is None or meta.get("format") != _FORMAT:
            raise _NotOurs("a folder without report's metadata")
        if into is None:
            raise ValueError(
                f"the checkpoint {path} is sharded: pass the model and optimizer to load it "
                "into, get_checkpoint(trial, into=hpsearch.Sharded(model, optimizer))"
            )
        sharding.load(path, into.model, into.optimizer)
        return meta
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a torn or foreign file: training from scratch is still right
        raise _NotOurs(str(err)) from err
    if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
        raise _NotOurs("another format")
    if into is not None:
        raise ValueError(
            f"the checkpoint {path} is a plain state, not a sharded one: call "
            "get_checkpoint(trial) and load its entries yourself"
        )
    return saved
