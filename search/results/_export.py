"""Export the best configuration (or the Pareto front) in a form that alone says how to train.

Besides the configuration, the bundle records what reproducing the trial needs: the seed, the
batch decomposition the trial ran with, package versions, the code revision, where the trial's
checkpoint is and the command that retrains it. ``--format csv`` writes every trial instead.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import os
import platform
import shlex
import subprocess
from typing import Any

import optuna
import tomli_w
import yaml
from optuna.trial import FrozenTrial, TrialState

from hpsearch import attrs
from hpsearch.attrs import CHECKPOINT
from hpsearch.errors import HpsearchError
from hpsearch.files import replacing
from hpsearch.objectives import BUILTIN_OBJECTIVES
from hpsearch.search.runtime._budget import budget_state, worker_of
from hpsearch.search.runtime._compute import budget_reached, compute_document
from hpsearch.search.spec._constraints import is_feasible
from hpsearch.search.spec._study_file import StudySpec

FORMATS = ("yaml", "json", "toml")  # documents: the best trial and how to retrain it
EXPORT_FORMATS = (*FORMATS, "csv")  # csv: every trial, one row each, for pandas


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (one direction) or the Pareto front (several), best first."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    if len(study.directions) == 1:
        try:
            # Optuna 5 picks the best among trials that meet their constraints (set_constraint).
            return [study.best_trial]
        except ValueError:  # completed trials exist, but none is feasible
            return []
    front = study.best_trials  # feasible trials only, as above
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1
    return sorted(front, key=lambda t: (sign * t.values[0], t.number))


def _nothing_completed(study: optuna.Study, spec: StudySpec) -> str:
    """Why a study has no completed trial to export, and what goes on from there."""
    everything = study.get_trials(deepcopy=False)
    state = budget_state(everything, spec.n_trials)
    ended = f"({state.paused} paused, {state.pruned} pruned, {state.failed} failed)"
    spent = budget_reached(everything, spec)
    if spent is not None and state.running == 0:
        return (
            f"Study {spec.name!r} has no completed trial: its {spent} budget was spent before a "
            f"configuration trained to its end {ended}; raise [budget] {spent} in the study "
            "file and run it again (docs/budget.md: Raising a budget)."
        )
    if state.used >= spec.n_trials and state.finished:
        return (
            f"Study {spec.name!r} has no completed trial: none of its {spec.n_trials} trials "
            f"completed {ended}; raise [budget] n_trials in the study file and run it again, or "
            "change what stops them."
        )
    return (
        f"Study {spec.name!r} has no completed trial yet; run `hpsearch worker --study "
        f"{spec.name}` (or wait for the running ones) and export again."
    )


def export_document(
    study: optuna.Study, spec: StudySpec, *, top: int | None = None, output: str | None = None
) -> dict[str, Any]:
    """The best trial's configuration and what it takes to retrain it.

    ``top``: also list the ``top`` best trials (one direction only). ``output``: the file the
    document is written to, named in the ``retrain`` command.
    """
    trials = best_trials(study)
    if not trials and spec.constraints and study.get_trials(states=(TrialState.COMPLETE,)):
        raise HpsearchError(
            f"Study {spec.name!r} has no completed trial that meets its [constraints] "
            f"({_bounds_text(spec)}) yet; run more trials (`hpsearch worker --study {spec.name}`) "
            "or loosen the constraints in a new study."
        )
    if not trials:
        raise HpsearchError(_nothing_completed(study, spec))
    best = trials[0]
    single = len(spec.directions) == 1
    params = dict(best.params)
    document: dict[str, Any] = {
        "study": spec.name,
        "objective": spec.objective,
        "metric": spec.metrics[0] if single else spec.metrics,
        "value": best.value if single else best.values,
        "trial": best.number,
        "params": params,
        "training": spec.training,
        "direction": spec.directions[0] if single else spec.directions,
        "seed": training_seed(spec, params, best.user_attrs.get(attrs.SEED)),
        "batch": best.user_attrs.get(attrs.BATCH),
        "sampler": best.user_attrs.get(attrs.SAMPLER),  # the auto sampler's choice
        "checkpoint": existing_checkpoint(best),
        "versions": package_versions(),
        "revision": git_revision(),
        "retrain": retrain_command(output),
    }
    schedule = best.user_attrs.get(attrs.PARAM_SCHEDULE)
    if schedule:
        # Population-based training: the live options behind the best weights, by the epoch
        # each took effect (donors' intervals included); `hpsearch train` replays it.
        document["schedule"] = schedule
    measurement_names = _measurement_names(spec)
    if measurement_names:
        # What the exported model measured after compression, and the recipe that compressed it.
        document["measurements"] = _measurements(best, measurement_names)
        document["compression"] = best.user_attrs.get(attrs.COMPRESSION)
    if spec.constraints:
        document["constraints"] = spec.constraints
    compute = compute_document(study.get_trials(deepcopy=False), spec)
    if compute:
        # A study with a compute budget: what it spent, in each of its units.
        used = budget_state(study.get_trials(deepcopy=False), spec.n_trials).used
        document["budget"] = {
            "n_trials": spec.n_trials,
            "used": used,
            "remaining": max(0, spec.n_trials - used),
            **compute,
        }
    if not single:
        document["pareto_front"] = [
            {
                "trial": t.number,
                "values": list(t.values),
                "params": dict(t.params),
                "sampler": t.user_attrs.get(attrs.SAMPLER),
                **(
                    {"measurements": _measurements(t, measurement_names)}
                    if measurement_names
                    else {}
                ),
            }
            for t in trials
        ]
    if top is not None:
        document["top"] = [_trial_entry(t) for t in top_trials(study, spec, top)]
    return document


def _measurement_names(spec: StudySpec) -> list[str]:
    builtin = BUILTIN_OBJECTIVES.get(spec.objective)
    return list(builtin.measurements) if builtin else []


def _measurements(trial: FrozenTrial, names: list[str]) -> dict[str, Any]:
    return {name: trial.user_attrs[name] for name in names if name in trial.user_attrs}


def _bounds_text(spec: StudySpec) -> str:
    return ", ".join(
        f"{name} {'<=' if bound == 'max' else '>='} {value}"
        for name, bounds in spec.constraints.items()
        for bound, value in bounds.items()
    )


def training_seed(spec: StudySpec, params: dict[str, Any], recorded: Any = None) -> int | None:
    """The seed the objective trained with: the one the engine recorded on the trial (a user
    objective's through `fit`), searched, fixed, or the built-in's default."""
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        return recorded
    options = {**spec.training, **params}
    if "seed" in options:
        return int(options["seed"])
    builtin = BUILTIN_OBJECTIVES.get(spec.objective)
    return int(builtin.options["seed"]) if builtin else None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("hpsearch", "optuna", "torch"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def git_revision(folder: str | None = None) -> str | None:
    """The commit checked out in ``folder`` (default: the working directory), else None."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    revision = result.stdout.strip()
    return revision if result.returncode == 0 and revision else None


def retrain_command(output: str | None) -> str:
    exported = output or "best.yaml"  # printed to standard output: saved under this name
    return f"hpsearch train {shlex.quote(exported)} --output model"


def top_trials(study: optuna.Study, spec: StudySpec, k: int) -> list[FrozenTrial]:
    if len(spec.directions) > 1:
        raise HpsearchError(
            f"--top {k}: study {spec.name!r} has {len(spec.directions)} objectives, so no single "
            "ranking exists; export without --top (the document lists the whole Pareto front)."
        )
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    # Feasible trials first (as best_trial chooses), each group best first.
    ranked = sorted(
        complete, key=lambda t: (not is_feasible(t), sign * float(t.values[0]), t.number)
    )
    return ranked[:k]


def _trial_entry(trial: FrozenTrial) -> dict[str, Any]:
    return {
        "trial": trial.number,
        "value": trial.values[0],
        "params": dict(trial.params),
        "batch": trial.user_attrs.get(attrs.BATCH),
        "sampler": trial.user_attrs.get(attrs.SAMPLER),
        "checkpoint": existing_checkpoint(trial),
    }


def existing_checkpoint(trial: FrozenTrial) -> str | None:
    """The trial's checkpoint (file, sharded folder or object), or None once it is gone:
    ``keep_checkpoints`` deletes those of trials that are not (or no longer) the best, and
    Optuna cannot take the name back from a finished trial."""
    # Imported here: the checkpoints module ranks trials with best_trials from this one.
    from hpsearch.search.runtime._checkpoints import checkpoint_exists

    location = trial.user_attrs.get(CHECKPOINT)
    if not isinstance(location, str) or not location:
        return None
    return location if checkpoint_exists(location) else None


def trials_csv(study: optuna.Study, spec: StudySpec) -> str:
    """Every trial, one row each: number, state, one column per metric and per parameter.

    Unclaimed budget slots (WAITING trials with nothing in them yet) are left out.
    """
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    names = sorted({name for t in trials for name in t.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "number",
            "state",
            *spec.metrics,
            *(f"params_{n}" for n in names),
            "duration_seconds",
            "datetime_start",
            "datetime_complete",
            "host",
        ]
    )
    for t in trials:
        values = list(t.values) if t.values is not None else [None] * len(spec.metrics)
        duration = t.duration.total_seconds() if t.duration is not None else None
        writer.writerow(
            _csv_cells(
                [
                    t.number,
                    t.state.name.lower(),
                    *values,
                    *(t.params.get(n) for n in names),
                    duration,
                    t.datetime_start.isoformat() if t.datetime_start else None,
                    t.datetime_complete.isoformat() if t.datetime_complete else None,
                    worker_of(t)["host"],
                ]
            )
        )
    return buffer.getvalue()


def _csv_cells(cells: list[Any]) -> list[str]:
    # An empty cell is what pandas reads as missing; repr keeps floats exact.
    return ["" if c is None else repr(c) if isinstance(c, float) else str(c) for c in cells]


def render(document: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(document, indent=2) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(document, sort_keys=False)
    if fmt == "toml":
        return tomli_w.dumps(_drop_none(document))
    raise HpsearchError(f"Unknown export format {fmt!r}; expected one of: {', '.join(FORMATS)}.")


def _drop_none(value: Any) -> Any:
    """TOML has no null: leave such keys out."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def write_atomically(path: str, text: str) -> None:
    """Write all of ``text`` or nothing: a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise HpsearchError(
            f"Cannot write {path!r}: folder {folder!r} does not exist; create it first."
        )
    if os.path.isdir(path):
        raise HpsearchError(f"Cannot write {path!r}: it is a folder; name a file to write.")
    try:
        with replacing(path) as partial, open(partial, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as err:  # a read-only folder, /proc, a full disk
        raise HpsearchError(
            f"Cannot write {path!r}: {err.strerror or err}; choose another --output."
        ) from None
