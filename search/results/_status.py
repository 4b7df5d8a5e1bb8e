"""The study at a glance: budget, states, best so far, throughput, running trials."""

from __future__ import annotations

import datetime as dt
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.objectives.command import describe_objective
from hpsearch.search.results._export import best_trials
from hpsearch.search.runtime._budget import budget_state, worker_of
from hpsearch.search.runtime._compute import compute_document
from hpsearch.search.runtime._scheduler import paused_trials
from hpsearch.search.spec._scheduler import PbtSchedule
from hpsearch.search.spec._study_file import StudySpec

STATUS_SCHEMA_VERSION = 1


def _eta(
    trials: list[FrozenTrial],
    remaining: int,
    per_hour: float,
    compute: dict[str, dict[str, float]],
) -> float:
    """Seconds until the first budget is reached, each at the rate it was spent so far: trials
    as they finished, a compute budget since the first trial started (running ones count)."""
    seconds = [remaining / per_hour * 3600]
    started = [t.datetime_start for t in trials if t.datetime_start is not None]
    elapsed = (dt.datetime.now() - min(started)).total_seconds() if started else 0.0
    for budget in compute.values():
        if budget["spent"] > 0 and elapsed > 0:
            seconds.append(budget["remaining"] / budget["spent"] * elapsed)
    return round(min(seconds), 1)


def status_document(study: optuna.Study, spec: StudySpec) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    state = budget_state(trials, spec.n_trials)
    finished = [
        t for t in trials if t.state.is_finished() and t.datetime_complete and t.datetime_start
    ]
    per_hour = None
    if len(finished) >= 2:
        first = min(t.datetime_start for t in finished if t.datetime_start)
        last = max(t.datetime_complete for t in finished if t.datetime_complete)
        hours = (last - first).total_seconds() / 3600
        per_hour = round(len(finished) / hours, 2) if hours > 0 else None
    remaining = max(0, spec.n_trials - state.used)
    compute = compute_document(trials, spec)
    # A spent compute budget ends the study whatever trials are left: no time is left either.
    over = remaining == 0 or any(b["remaining"] <= 0 for b in compute.values())
    eta = None if per_hour in (None, 0) or over else _eta(trials, remaining, per_hour, compute)
    best = [
        {"trial": t.number, "values": list(t.values), "params": dict(t.params)}
        for t in best_trials(study)
    ]
    now = dt.datetime.now()
    running = [
        {
            "trial": t.number,
            **worker_of(t),  # host, pid, devices: the worker's GPUs ("0,1") or "cpu"
            "epoch": max(t.intermediate_values) if t.intermediate_values else None,
            "seconds": round((now - t.datetime_start).total_seconds(), 1)
            if t.datetime_start
            else None,
        }
        for t in trials
        if t.state == TrialState.RUNNING
    ]
    return {
        "schema": STATUS_SCHEMA_VERSION,
        "study": spec.name,
        "objective": spec.objective,
        "directions": spec.directions,
        "metrics": spec.metrics,
        # Beside the trials, each compute budget the study has: {limit, spent, remaining}.
        "budget": {
            "n_trials": spec.n_trials,
            "used": state.used,
            "remaining": remaining,
            **compute,
        },
        "states": {
            "complete": state.complete,
            "pruned": state.pruned,
            "failed": state.failed,
            "running": state.running,
            "waiting": state.waiting,
            "retried": state.lost,
            "paused": state.paused,
        },
        "best": best,
        "trials_per_hour": per_hour,
        "eta_seconds": eta,
        "running": running,
        # Configurations the scheduler paused at a rung (their trial is PRUNED there, never
        # failed), not promoted yet: a promotion resumes them from their checkpoint.
        "paused": [
            {
                "trial": t.number,
                # PBT pauses every member at each interval's end: no rung, only the epoch.
                "rung": None if isinstance(spec.scheduler, PbtSchedule) else rung,
                "epoch": (t.last_step or 0) + 1,
                "value": None if t.last_step is None else t.intermediate_values[t.last_step],
            }
            for t, rung in paused_trials(trials)
        ],
    }


def format_status(doc: dict[str, Any]) -> str:
    budget, states = doc["budget"], doc["states"]
    lines = [
        f"study      {doc['study']}  (objective {describe_objective(doc['objective'])}, "
        f"{' / '.join(f'{d} {m}' for d, m in zip(doc['directions'], doc['metrics'], strict=True))})",
        f"budget     {budget['used']}/{budget['n_trials']} trials used, {budget['remaining']} remaining",
        *(f"           {line}" for line in compute_lines(budget)),
        "states     " + ", ".join(f"{v} {k}" for k, v in states.items()),
    ]
    if doc["trials_per_hour"] is not None:
        eta = doc["eta_seconds"]
        lines.append(
            f"throughput {doc['trials_per_hour']:.1f} trials/hour"
            + (f", about {eta / 60:.1f} min left" if eta is not None else "")
        )
    for i, best in enumerate(doc["best"][:5]):
        values = ", ".join(
            f"{m}={v:.6g}" for m, v in zip(doc["metrics"], best["values"], strict=True)
        )
        label = "best" if len(doc["best"]) == 1 else ("pareto" if i == 0 else "")
        lines.append(f"{label:<10} trial {best['trial']}: {values}  {best['params']}")
    for run in doc["running"]:
        lines.append(
            f"running    trial {run['trial']} on {run['host']} (pid {run['pid']}"
            + (f", {run['devices']}" if run["devices"] else "")
            + f"), epoch {run['epoch']}, {run['seconds']}s"
        )
    paused = doc.get("paused", [])
    for entry in paused[:5]:
        lines.append(
            f"paused     trial {entry['trial']} "
            + ("at the end of an interval" if entry["rung"] is None else f"at rung {entry['rung']}")
            + f" (epoch {entry['epoch']}"
            + (f", {entry['value']:.6g}" if entry["value"] is not None else "")
            + ")"
        )
    if len(paused) > 5:
        lines.append(f"paused     ... and {len(paused) - 5} more")
    return "\n".join(lines)


COMPUTE_UNITS = {"epochs": ("epochs", "{:g}"), "device_hours": ("device-hours", "{:.4g}")}


def compute_lines(budget: dict[str, Any]) -> list[str]:
    """One line per compute budget of a status document's budget: spent of limit, remaining."""
    lines = []
    for key, (unit, fmt) in COMPUTE_UNITS.items():
        if key in budget:
            b = budget[key]
            lines.append(
                f"{fmt.format(b['spent'])}/{fmt.format(b['limit'])} {unit} spent, "
                f"{fmt.format(b['remaining'])} remaining"
                # Trials may be left (and queued slots wait): this budget ended the study.
                + (": the study is over, no further trial starts" if b["remaining"] <= 0 else "")
            )
    return lines
