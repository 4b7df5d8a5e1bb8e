"""The study file: parse TOML, validate all of it, and give one normalised, storable spec.

The normalised spec is a plain JSON-able dict (stored in the study's user attributes), wrapped
by :class:`StudySpec` for typed access. Nothing is written anywhere until it validates.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hpsearch.errors import SpecError, StorageError, did_you_mean
from hpsearch.objectives import (
    BUILTIN_OBJECTIVES,
    BuiltinObjective,
    ObjectiveError,
    check_combinations,
    check_options,
    load_objective,
    resolve_objective,
)
from hpsearch.objectives._options import LIVE_OPTIONS, engine_use
from hpsearch.objectives.command import (
    BUILTIN_PLACEHOLDERS,
    CommandObjective,
    command_ref,
    is_command,
    placeholders,
)
from hpsearch.objectives.reporting import is_resumable
from hpsearch.search.spec._constraints import parse_constraints
from hpsearch.search.spec._scheduler import PbtSchedule, Schedule, parse_scheduler, schedule_of
from hpsearch.storage import is_object_store_url, parse_object_url
from hpsearch.storage._url import url_secrets

SPEC_VERSION = 1
SAMPLERS = ("auto", "cmaes", "gp", "grid", "qmc", "random", "tpe")
PRUNERS = (
    "hyperband",
    "median",
    "none",
    "pareto",
    "percentile",
    "successive-halving",
    "wilcoxon",
)
DIRECTIONS = ("maximize", "minimize")
PARAM_TYPES = ("categorical", "float", "int")

_SECTIONS = (
    "study",
    "space",
    "sampler",
    "pruner",
    "budget",
    "training",
    "resources",
    "constraints",
    "scheduler",
    "tracking",
    "warm_start",
)
_TRACKING_KEYS = ("mlflow", "experiment", "wandb", "wandb_mode", "wandb_dir")
_WANDB_MODES = ("online", "offline")
_WARM_START_KEYS = ("studies", "storage")
_STUDY_KEYS = (
    "name",
    "objective",
    "command",
    "command_timeout",
    "command_resumes",
    "direction",
    "directions",
    "metric",
    "metrics",
)
_PARAM_KEYS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
}
# Every key some parameter type allows, in file order: a typo is named before the type is known.
_ANY_PARAM_KEYS = ("type", "low", "high", "log", "step", "choices", "when")
_SAMPLER_KEYS = ("name", "seed", "options")
_PRUNER_KEYS = ("name", "options")
_BUDGET_KEYS = ("n_trials", "timeout", "epochs", "device_hours")
_RESOURCES_KEYS = (
    "workers",
    "devices_per_trial",
    "nodes_per_trial",
    "heartbeat_interval",
    "grace_period",
    "max_retry",
    "max_consecutive_failures",
    "dist_timeout",
    "db_timeout",
    "artifacts",
    "keep_checkpoints",
)
KEEP_CHECKPOINTS = ("best", "all", "none")
_WEEK = 7 * 24 * 3600
# The largest value of each integer setting, and what it counts: a million workers or a grace
# period beyond what a timedelta holds is a typo, refused before any trial fails on it.
RESOURCE_LIMITS: dict[str, tuple[int, str]] = {
    "workers": (256, "worker processes on one machine"),
    "devices_per_trial": (64, "devices (ranks) of one trial on one node"),
    "nodes_per_trial": (1024, "nodes of one trial"),
    "heartbeat_interval": (_WEEK, "seconds, one week"),
    "grace_period": (_WEEK, "seconds, one week"),
    "max_retry": (1000, "retries of one trial"),
    "max_consecutive_failures": (10_000, "failures in a row"),
    "dist_timeout": (_WEEK, "seconds, one week"),
    "db_timeout": (_WEEK, "seconds, one week"),
}
RESOURCE_DEFAULTS: dict[str, Any] = {
    "workers": 1,
    "devices_per_trial": 1,
    "nodes_per_trial": 1,
    "heartbeat_interval": 10,
    "grace_period": 60,
    "max_retry": 3,
    "max_consecutive_failures": 5,
    "dist_timeout": 600,
    "db_timeout": 300,
    "artifacts": "hpsearch-artifacts",
    "keep_checkpoints": "best",
}
# The settings one machine chooses for itself (`run --workers`, `--devices-per-trial`); every
# other [resources] setting is the study's: stored once, read by every worker on every node.
NODE_RESOURCES = ("workers", "devices_per_trial")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_URL_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class _Checker:
    """Builds messages of one shape: where, what is wrong, what is allowed."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> SpecError:
        location = f"{self.source} [{where}]" if where else self.source
        return SpecError(f"{location}: {message}")

    def table(self, data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(where, f"{key} must be a table, got {type(value).__name__}.")
        return value

    def keys(self, table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(
                    where,
                    f"unknown key {key!r}.{did_you_mean(key, allowed)} Allowed: {', '.join(allowed)}.",
                )

    def number(self, value: Any, where: str, key: str, *, integer: bool = False) -> float:
        kind = "an integer" if integer else "a number"
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if (
            not ok
            or isinstance(value, bool)
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            raise self.fail(where, f"{key} must be {kind}, got {value!r}.")
        return value  # type: ignore[no-any-return]

    def positive_int(self, table: Mapping[str, Any], key: str, where: str, default: int) -> int:
        value = table.get(key, default)
        self.number(value, where, key, integer=True)
        if value < 1:
            raise self.fail(where, f"{key} must be >= 1, got {value}.")
        return int(value)

    def boolean(self, value: Any, where: str, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"{key} must be true or false, got {value!r}.")
        return value


def _parse_param(c: _Checker, name: str, entry: Any) -> dict[str, Any]:
    where = f"space.{name}"
    if not isinstance(entry, dict):
        raise c.fail(where, f"a search-space entry must be a table, got {entry!r}.")
    c.keys(entry, _ANY_PARAM_KEYS, where)
    if "type" not in entry:
        raise c.fail(where, f"type is required: one of {', '.join(PARAM_TYPES)}.")
    kind = entry["type"]
    if kind not in PARAM_TYPES:
        hint = did_you_mean(str(kind), PARAM_TYPES) if isinstance(kind, str) else ""
        raise c.fail(where, f"type must be one of {', '.join(PARAM_TYPES)}, got {kind!r}.{hint}")
    c.keys(entry, _PARAM_KEYS[kind], where)
    param: dict[str, Any] = {"type": kind}
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise c.fail(
                where, 'choices must be a non-empty list, e.g. choices = ["relu", "tanh"].'
            )
        for choice in choices:
            if not isinstance(choice, str | int | float | bool):
                raise c.fail(
                    where, f"choices may hold strings, numbers or booleans, got {choice!r}."
                )
        if len({repr(x) for x in choices}) != len(choices):
            raise c.fail(where, f"choices must be distinct, got {choices!r}.")
        param["choices"] = list(choices)
    else:
        integer = kind == "int"
        for key in ("low", "high"):
            if key not in entry:
                raise c.fail(where, f"{kind} parameter needs {key}.")
        low = c.number(entry["low"], where, "low", integer=integer)
        high = c.number(entry["high"], where, "high", integer=integer)
        if low >= high:
            raise c.fail(
                where, f"empty range: low must be less than high (got low={low}, high={high})."
            )
        log = c.boolean(entry.get("log", False), where, "log")
        step = entry.get("step")
        if step is not None:
            c.number(step, where, "step", integer=integer)
            if step <= 0:
                raise c.fail(where, f"step must be > 0, got {step}.")
            if log and not (integer and step == 1):
                raise c.fail(where, "log and step cannot be combined; drop one of them.")
        if log and low <= 0:
            raise c.fail(where, f"log scale needs low > 0, got low={low}.")
        param.update(low=low, high=high, log=log)
        if step is not None:
            param["step"] = step
    return param


def _parse_conditions(
    c: _Checker, space: dict[str, dict[str, Any]], raw: Mapping[str, Any]
) -> None:
    """``when = {optimizer = "sgd"}``: suggest only when a categorical parent takes those values."""
    for name, entry in raw.items():
        if "when" not in entry:
            continue
        where = f"space.{name}"
        when = entry["when"]
        if not isinstance(when, dict) or not when:
            raise c.fail(where, 'when must be a table like when = {optimizer = "sgd"}.')
        conditions: dict[str, list[Any]] = {}
        for parent, values in when.items():
            if parent == name or parent not in space:
                raise c.fail(
                    where,
                    f"when names {parent!r}, which is not another search-space entry."
                    f"{did_you_mean(parent, [n for n in space if n != name])}",
                )
            if space[parent]["type"] != "categorical":
                raise c.fail(where, f"when may only name categorical entries; {parent!r} is not.")
            values = values if isinstance(values, list) else [values]
            for value in values:
                if value not in space[parent]["choices"]:
                    raise c.fail(
                        where,
                        f"when {parent} = {value!r}: not one of its choices {space[parent]['choices']!r}.",
                    )
            conditions[parent] = list(values)
        space[name]["when"] = conditions
    _check_acyclic(c, space)


def _check_acyclic(c: _Checker, space: Mapping[str, Mapping[str, Any]]) -> None:
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            raise c.fail(
                f"space.{name}", "conditions form a cycle; a parent cannot depend on its child."
            )
        visiting.add(name)
        for parent in space[name].get("when", {}):
            visit(parent)
        visiting.discard(name)
        done.add(name)

    for name in space:
        visit(name)


def _parse_study(c: _Checker, raw: Mapping[str, Any], base_dir: str) -> dict[str, Any]:
    table = c.table(raw, "study", "")
    c.keys(table, _STUDY_KEYS, "study")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise c.fail(
            "study",
            f"name must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or digit), got {name!r}.",
        )
    objective = table.get("objective")
    if "command" in table:
        objective = _command(c, table, base_dir)
    elif not isinstance(objective, str) or not objective:
        raise c.fail(
            "study",
            "objective is required: a built-in "
            f"({', '.join(sorted(BUILTIN_OBJECTIVES))}), 'module:function' or 'file.py:function'"
            ' (or a command to run per trial: command = "python train.py --lr {lr}").',
        )
    else:
        for key in ("command_timeout", "command_resumes"):
            if key in table:
                raise c.fail("study", f"{key} applies to a command; remove it, or set command.")
        try:
            objective = resolve_objective(objective, base_dir=base_dir)
        except ObjectiveError as err:
            raise c.fail("study", str(err)) from None
    builtin = BUILTIN_OBJECTIVES.get(objective)

    def plural(single: str, many: str, default: list[str] | None) -> list[str]:
        if single in table and many in table:
            raise c.fail("study", f"give {single} or {many}, not both.")
        if single in table:
            values = [table[single]]
        elif many in table:
            values = table[many]
            if not isinstance(values, list) or not values:
                raise c.fail("study", f"{many} must be a non-empty list of strings.")
        elif default is not None:
            values = default
        else:
            raise c.fail(
                "study", f'{single} is required for a user objective (e.g. {single} = "maximize").'
            )
        for value in values:
            if not isinstance(value, str) or not value:
                raise c.fail("study", f"{many} must be strings, got {value!r}.")
        return list(values)

    default_directions = [builtin.direction] if builtin else None
    named = table.get("metrics", [table["metric"]] if "metric" in table else None)
    if builtin and isinstance(named, list) and all(_measures(builtin, m) for m in named):
        # A built-in knows which way each of its measurements is better.
        default_directions = [_measurements(builtin)[m] for m in named]
    directions = plural("direction", "directions", default_directions)
    for direction in directions:
        if direction not in DIRECTIONS:
            raise c.fail(
                "study",
                f"direction {direction!r} must be one of {', '.join(DIRECTIONS)}.{did_you_mean(direction, DIRECTIONS)}",
            )
    default_metrics = (
        [builtin.metric]
        if builtin
        else ["value" if len(directions) == 1 else f"value_{i}" for i in range(len(directions))]
    )
    metrics = plural(
        "metric", "metrics", default_metrics if len(default_metrics) == len(directions) else None
    )
    if len(metrics) != len(directions):
        raise c.fail(
            "study",
            f"{len(directions)} direction(s) but {len(metrics)} metric name(s); give one metric per direction.",
        )
    if len(set(metrics)) != len(metrics):
        raise c.fail("study", f"metric names must be distinct, got {metrics!r}.")
    for metric in metrics:
        if builtin is not None and not _measures(builtin, metric):
            allowed = list(_measurements(builtin))
            raise c.fail(
                "study",
                f"metric {metric!r} is not measured by {objective!r}.{did_you_mean(metric, allowed)} "
                f"Allowed: {', '.join(allowed)}.",
            )
    return {"name": name, "objective": objective, "directions": directions, "metrics": metrics}


def _check_pareto(
    c: _Checker,
    pruner: Mapping[str, Any],
    metrics: list[str],
    builtin: BuiltinObjective | None,
) -> None:
    """The Pareto pruner is for several metrics; Optuna's pruners are for one."""
    name = pruner["name"]
    if len(metrics) == 1 and name == "pareto":
        raise c.fail(
            "pruner",
            '"pareto" prunes studies of several metrics; with one metric use "median", '
            '"hyperband", "successive-halving", "percentile", "wilcoxon" or "none".',
        )
    if len(metrics) > 1 and name not in ("pareto", "none"):
        raise c.fail(
            "pruner",
            f"{name!r} is single-objective (Optuna's pruners compare one value), and this "
            f'study has {len(metrics)} metrics; use name = "pareto" (stops a trial that can no '
            'longer reach the Pareto front) or "none".',
        )
    if name != "pareto" or builtin is None:
        return
    # The built-in reports its first metric each epoch and measures the others before training.
    trained, fixed = metrics[0], metrics[1:]
    moving = [m for m in fixed if m in builtin.evaluated]
    if trained not in builtin.evaluated or moving:
        raise c.fail(
            "pruner",
            f'"pareto" needs the trained metric first in metrics ({" or ".join(builtin.evaluated)})'
            " and, after it, only measurements fixed before training (size_bytes, params, "
            f"latency_ms); got {metrics}.",
        )


def _measurements(builtin: BuiltinObjective) -> Mapping[str, str]:
    """A built-in's measurements by name, with each one's natural direction."""
    return builtin.measurements or {builtin.metric: builtin.direction}


def _measures(builtin: BuiltinObjective | None, metric: Any) -> bool:
    return builtin is not None and isinstance(metric, str) and metric in _measurements(builtin)


def _parse_component(
    c: _Checker,
    raw: Mapping[str, Any],
    section: str,
    allowed_keys: Sequence[str],
    names: Sequence[str],
    default: str,
) -> dict[str, Any]:
    table = c.table(raw, section, "")
    c.keys(table, allowed_keys, section)
    name = table.get("name", default)
    if name not in names:
        hint = did_you_mean(name, names) if isinstance(name, str) else ""
        raise c.fail(
            section, f"unknown {section} {name!r}.{hint} Expected one of: {', '.join(names)}."
        )
    options = c.table(table, "options", section)
    result: dict[str, Any] = {"name": name, "options": dict(options)}
    if "seed" in allowed_keys:
        seed = table.get("seed")
        if seed is not None:
            c.number(seed, section, "seed", integer=True)
        result["seed"] = seed
    return result


def _check_storable(c: _Checker, value: Any, path: str) -> None:
    """Refuse TOML dates and times anywhere: the spec is stored as JSON, which has neither."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_storable(c, item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for item in value:
            _check_storable(c, item, path)
    elif isinstance(value, datetime.date | datetime.time):
        section, _, key = path.rpartition(".")
        raise c.fail(
            section,
            f"{key} = {value}: a TOML date or time, which a study cannot hold; give a string "
            "or a number.",
        )


def parse_spec(raw: Mapping[str, Any], *, source: str, base_dir: str) -> StudySpec:
    """Validate a parsed study file and return its normalised spec."""
    c = _Checker(source)
    c.keys(raw, _SECTIONS, "")
    _check_storable(c, raw, "")
    study = _parse_study(c, raw, base_dir)
    builtin = BUILTIN_OBJECTIVES.get(study["objective"])
    constraints = parse_constraints(
        c.table(raw, "constraints", ""),
        allowed=list(_measurements(builtin)) if builtin else None,
        fail=c.fail,
    )
    tracking = _parse_tracking(c, raw)
    warm_start = _parse_warm_start(c, raw)

    # An empty space is a study of fixed settings: n_trials runs of one configuration (the
    # spread of the results is the run-to-run noise, e.g. of seeds).
    space_raw = c.table(raw, "space", "")
    space = {name: _parse_param(c, name, entry) for name, entry in space_raw.items()}
    _parse_conditions(c, space, space_raw)

    sampler = _parse_component(c, raw, "sampler", _SAMPLER_KEYS, SAMPLERS, "auto")
    several = len(study["metrics"]) > 1
    pruner = _parse_component(
        c, raw, "pruner", _PRUNER_KEYS, PRUNERS, "none" if several else "median"
    )
    _check_pareto(c, pruner, study["metrics"], builtin)
    metric = study["metrics"][0] if len(study["metrics"]) == 1 else None
    if builtin is not None and metric is not None and metric not in builtin.evaluated:
        # The built-in reports each epoch's evaluation; a pruner fed another quantity than the
        # study's metric (validation accuracy for a study minimizing size_bytes) would prune
        # the best trials.
        if "pruner" in raw and pruner["name"] != "none":
            raise c.fail(
                "pruner",
                f"{pruner['name']!r} prunes on each epoch's value of the metric, and "
                f'{metric!r} is measured only once, after training; set name = "none", or '
                f"optimize one of {', '.join(builtin.evaluated)}.",
            )
        pruner = {"name": "none", "options": {}}

    budget_raw = c.table(raw, "budget", "")
    c.keys(budget_raw, _BUDGET_KEYS, "budget")
    scheduler_raw = c.table(raw, "scheduler", "")
    pbt = scheduler_raw.get("name") == "pbt"
    if "n_trials" not in budget_raw and not pbt:
        beside = [key for key in ("epochs", "device_hours") if key in budget_raw]
        raise c.fail(
            "budget",
            "n_trials is required: the number of trials across all workers"
            + (
                f" (beside {' and '.join(beside)}, it bounds the configurations tried)"
                if beside
                else ""
            )
            + "; add e.g. n_trials = 100.",
        )
    # A population's members are its configurations: [scheduler] population is the budget.
    n_trials = scheduler_raw.get("population") if pbt else None
    budget: dict[str, Any] = {
        "n_trials": c.positive_int(budget_raw, "n_trials", "budget", 1)
        if "n_trials" in budget_raw or not isinstance(n_trials, int)
        else n_trials
    }
    if pbt and "n_trials" in budget_raw and budget["n_trials"] != n_trials:
        raise c.fail(
            "budget",
            f"n_trials = {budget['n_trials']} differs from [scheduler] population = "
            f"{n_trials!r}: a population-based study trains its population; remove n_trials.",
        )
    timeout = budget_raw.get("timeout")
    if timeout is not None:
        c.number(timeout, "budget", "timeout")
        if timeout <= 0:
            raise c.fail("budget", f"timeout must be > 0 seconds, got {timeout}.")
    budget["timeout"] = timeout
    # Compute budgets, beside n_trials: the first one reached ends the study. Stored only when
    # given, so that the specs of studies made without them stay the same.
    if "epochs" in budget_raw:
        budget["epochs"] = c.positive_int(budget_raw, "epochs", "budget", 1)
    device_hours = budget_raw.get("device_hours")
    if device_hours is not None:
        c.number(device_hours, "budget", "device_hours")
        if device_hours <= 0:
            raise c.fail(
                "budget",
                f"device_hours must be > 0 (each trial's wall time x its devices, summed), "
                f"got {device_hours}.",
            )
        budget["device_hours"] = float(device_hours)

    training = c.table(raw, "training", "")
    overlap = sorted(set(training) & set(space))
    if overlap:
        raise c.fail(
            "training",
            f"{overlap[0]!r} is both searched in [space] and fixed in [training]; keep one.",
        )
    # A searched option takes its choices, or any value between its bounds.
    searched = {
        name: entry["choices"] if "choices" in entry else [entry["low"], entry["high"]]
        for name, entry in space.items()
    }
    try:
        check_options(study["objective"], training, where=f"{source} [training]")
        for name, values in searched.items():
            check_options(study["objective"], {name: values}, where=f"{source} [space.{name}]")
        check_combinations(study["objective"], training, searched, where=source)
    except ObjectiveError as err:
        raise SpecError(str(err)) from None

    scheduler = None
    if "scheduler" in raw:
        scheduler = parse_scheduler(
            scheduler_raw,
            fail=c.fail,
            positive_int=c.positive_int,
            conflicts=_scheduler_conflicts(raw, study, builtin, space, training, pruner),
            space=space,
            live=LIVE_OPTIONS,
        )
        if pbt:
            budget["n_trials"] = scheduler["population"]
        pruner = {"name": "none", "options": {}}  # the scheduler decides which trials stop
        # Every trial of a configuration trains towards max_epochs: the learning-rate schedule
        # and the checkpoint a promoted configuration resumes from are those of one long run.
        training = {**training, "epochs": scheduler["max_epochs"]}
    # After [scheduler]: its max_epochs is the {epochs} a command is given.
    _check_placeholders(c, study["objective"], space, training)
    _check_epochs_budget(c, budget, builtin, space, training, scheduler)

    resources_raw = c.table(raw, "resources", "")
    c.keys(resources_raw, _RESOURCES_KEYS, "resources")
    resources: dict[str, Any] = {}
    for key, (limit, unit) in RESOURCE_LIMITS.items():
        value = c.positive_int(resources_raw, key, "resources", RESOURCE_DEFAULTS[key])
        if value > limit:
            raise c.fail(
                "resources", f"{key} must be at most {limit} ({unit}), got {value}; lower it."
            )
        resources[key] = value
    # Where checkpoints go: a folder every node sees (relative to each worker's directory), or
    # an S3-compatible bucket every node reaches.
    artifacts = resources_raw.get("artifacts", RESOURCE_DEFAULTS["artifacts"])
    if not isinstance(artifacts, str) or not artifacts.strip():
        raise c.fail(
            "resources",
            f"artifacts must be a folder path or an s3://BUCKET/PREFIX URL, got {artifacts!r}.",
        )
    if is_object_store_url(artifacts):
        try:
            artifacts = parse_object_url(artifacts).url()  # normalised: s3://BUCKET[/PREFIX]
        except StorageError as err:
            raise c.fail("resources", f"artifacts: {err}") from None
    elif _URL_SCHEME_RE.match(artifacts.strip()):
        raise c.fail(
            "resources",
            f"artifacts {artifacts!r}: only s3:// URLs (S3-compatible object stores) are "
            "supported; give s3://BUCKET/PREFIX or a folder path.",
        )
    keep = resources_raw.get("keep_checkpoints", RESOURCE_DEFAULTS["keep_checkpoints"])
    if keep not in KEEP_CHECKPOINTS:
        raise c.fail(
            "resources",
            f"keep_checkpoints must be one of {', '.join(KEEP_CHECKPOINTS)}, got {keep!r}."
            f"{did_you_mean(str(keep), KEEP_CHECKPOINTS)}",
        )
    resources.update(artifacts=artifacts, keep_checkpoints=keep)
    if resources["grace_period"] <= resources["heartbeat_interval"]:
        raise c.fail("resources", "grace_period must be longer than heartbeat_interval.")
    if is_command(study["objective"]) and resources["nodes_per_trial"] > 1:
        raise c.fail(
            "resources",
            "nodes_per_trial > 1 with a command: the worker runs a command on its own node; "
            "use torchrun's multi-node rendezvous inside the command, or a Python objective.",
        )

    spec = StudySpec(
        {
            "version": SPEC_VERSION,
            "study": study,
            "space": space,
            "sampler": sampler,
            "pruner": pruner,
            "budget": budget,
            "training": dict(training),
            "resources": resources,
            # Only when given: a spec without constraints stays identical to earlier versions'.
            **({"constraints": constraints} if constraints else {}),
            **({"tracking": tracking} if tracking else {}),
            **({"scheduler": scheduler} if scheduler else {}),
            **({"warm_start": warm_start} if warm_start else {}),
        }
    )
    # Construct the sampler and pruner once so that bad options are refused now, not in a worker.
    from hpsearch.search.spec._samplers import build_pruner, build_sampler

    build_sampler(spec, seed=sampler["seed"], source=source)
    build_pruner(spec, source=source)
    return spec


def _scheduler_conflicts(
    raw: Mapping[str, Any],
    study: Mapping[str, Any],
    builtin: BuiltinObjective | None,
    space: Mapping[str, Any],
    training: Mapping[str, Any],
    pruner: Mapping[str, Any],
) -> dict[str, str]:
    """What a ``[scheduler]`` cannot run with, by section: the first one is refused."""
    conflicts: dict[str, str] = {}
    if "pruner" in raw and pruner["name"] != "none":
        conflicts["pruner"] = (
            f"name = {pruner['name']!r}: [scheduler] decides which trials stop (asha at its "
            'rungs, pbt at its intervals); set name = "none" or remove [pruner].'
        )
    for where, table in (("training", training), ("space", space)):
        if "epochs" in table:
            conflicts[where] = (
                "epochs: [scheduler] max_epochs sets how long a configuration trains; remove "
                f"epochs from [{where}]."
            )
    if len(study["metrics"]) > 1:
        conflicts["study"] = (
            f"metrics = {study['metrics']}: [scheduler] ranks configurations by one metric "
            "(asha at its rungs, pbt at its intervals); optimize one metric, or remove "
            "[scheduler]."
        )
    elif builtin is not None and study["metrics"][0] not in builtin.evaluated:
        conflicts["study"] = (
            f"metric {study['metrics'][0]!r} is measured only once, after training, and "
            "[scheduler] ranks configurations on each epoch's value; optimize one of "
            f"{', '.join(builtin.evaluated)}, or remove [scheduler]."
        )
    elif is_command(study["objective"]):
        if not CommandObjective.load(study["objective"]).resumes:
            # A paused configuration's command is started again: it must pick up its state.
            conflicts["scheduler"] = (
                "a command is paused and resumed only if its script resumes from its checkpoint "
                "(hpsearch.get_checkpoint, or the {checkpoint} path): set command_resumes = "
                "true under [study] if it does, or remove [scheduler]."
            )
    elif builtin is None and not _resumes(load_objective(study["objective"])):
        # A paused configuration resumes from the checkpoint that hpsearch.fit (or
        # hpsearch.report) writes; a function of its own would restart from epoch 0 and waste
        # what its rungs trained.
        conflicts["scheduler"] = (
            f"objective {study['objective']!r} does not train through hpsearch.fit, so a "
            "paused trial could not resume from its checkpoint; declare it with "
            "@hpsearch.uses_engine (and train with hpsearch.fit), or with @hpsearch.resumable "
            "(and resume from hpsearch.get_checkpoint), or remove [scheduler]."
        )
    return conflicts


def _parse_warm_start(c: _Checker, raw: Mapping[str, Any]) -> dict[str, Any]:
    """[warm_start]: earlier studies whose finished trials inform the sampler
    (search/runtime/_warm_start.py). Their storage is named here by URL or, where it needs a
    password, by an environment variable ($NAME): a study file (and the study's copy of it in
    the database) never holds a secret."""
    table = c.table(raw, "warm_start", "")
    c.keys(table, _WARM_START_KEYS, "warm_start")
    if not table:
        return {}
    studies = table.get("studies")
    if (
        not isinstance(studies, list)
        or not studies
        or not all(isinstance(n, str) and n.strip() for n in studies)
    ):
        raise c.fail(
            "warm_start",
            f'studies must be a list of earlier study names, e.g. ["digits-v1"], got {studies!r}.',
        )
    storage = table.get("storage")
    if storage is not None:
        if not isinstance(storage, str) or not storage.strip():
            raise c.fail(
                "warm_start", f"storage must be a storage URL or $VARIABLE, got {storage!r}."
            )
        if not storage.startswith("$") and url_secrets(storage):
            raise c.fail(
                "warm_start",
                "storage holds a password, which the study file must not: put the URL in an "
                'environment variable every worker has and write storage = "$EARLIER_STORAGE".',
            )
    return {"studies": list(studies), **({"storage": storage} if storage else {})}


def _parse_tracking(c: _Checker, raw: Mapping[str, Any]) -> dict[str, str]:
    """[tracking]: where each configuration is logged as a run (search/runtime/_tracking.py):
    MLflow, Weights & Biases, or both."""
    table = c.table(raw, "tracking", "")
    c.keys(table, _TRACKING_KEYS, "tracking")
    if not table:
        return {}
    if "mlflow" not in table and "wandb" not in table:
        raise c.fail(
            "tracking",
            'name where runs go: mlflow = "sqlite:///mlflow.db" (an MLflow tracking URI), '
            'wandb = "my-project" (a Weights & Biases project), or both.',
        )
    uri = table.get("mlflow")
    if "mlflow" in table and (not isinstance(uri, str) or not uri.strip()):
        raise c.fail(
            "tracking",
            'mlflow must be an MLflow tracking URI, e.g. "sqlite:///mlflow.db" or '
            f'"http://mlflow:5000", got {uri!r}.',
        )
    experiment = table.get("experiment")
    if experiment is not None and (not isinstance(experiment, str) or not experiment.strip()):
        raise c.fail("tracking", f"experiment must be a name, got {experiment!r}.")
    if experiment is not None and uri is None:
        raise c.fail("tracking", "experiment names an MLflow experiment: give mlflow too.")
    project = table.get("wandb")
    if "wandb" in table and (not isinstance(project, str) or not project.strip()):
        raise c.fail(
            "tracking",
            f'wandb must be a Weights & Biases project name, e.g. "tuning", got {project!r}.',
        )
    mode, folder = table.get("wandb_mode"), table.get("wandb_dir")
    if (mode is not None or folder is not None) and project is None:
        raise c.fail(
            "tracking", "wandb_mode and wandb_dir go with wandb = PROJECT: give wandb too."
        )
    if mode is not None and mode not in _WANDB_MODES:
        raise c.fail(
            "tracking",
            f"wandb_mode must be one of {', '.join(map(repr, _WANDB_MODES))}, got {mode!r} "
            "(offline writes runs to wandb_dir for `wandb sync` later).",
        )
    if folder is not None and (not isinstance(folder, str) or not folder.strip()):
        raise c.fail("tracking", f"wandb_dir must be a folder path, got {folder!r}.")
    chosen = {
        "mlflow": uri,
        "experiment": experiment,
        "wandb": project,
        "wandb_mode": mode,
        "wandb_dir": folder,
    }
    return {key: value for key, value in chosen.items() if value is not None}


def _command(c: _Checker, table: Mapping[str, Any], base_dir: str) -> str:
    """A command study's objective reference (objectives/command.py)."""
    if "objective" in table:
        raise c.fail("study", "give objective or command, not both.")
    command, timeout = table["command"], table.get("command_timeout")
    if not isinstance(command, str) or not command.strip():
        raise c.fail(
            "study",
            "command must be the command line to run per trial, e.g. "
            f'"torchrun --nproc-per-node {{devices}} train.py --lr {{lr}}", got {command!r}.',
        )
    if timeout is not None:
        c.number(timeout, "study", "command_timeout")
        if timeout <= 0:
            raise c.fail("study", f"command_timeout must be > 0 seconds, got {timeout}.")
    resumes = table.get("command_resumes", False)
    if not isinstance(resumes, bool):
        raise c.fail(
            "study",
            f"command_resumes must be true or false, got {resumes!r} (true: the script resumes "
            "from its checkpoint, so pausing schedules may pause it).",
        )
    try:
        return command_ref(command, cwd=base_dir, timeout=timeout, resumes=resumes)
    except ObjectiveError as err:
        raise c.fail("study", str(err)) from None


def _check_epochs_budget(
    c: _Checker,
    budget: Mapping[str, Any],
    builtin: BuiltinObjective | None,
    space: Mapping[str, Any],
    training: Mapping[str, Any],
    scheduler: Mapping[str, Any] | None,
) -> None:
    """Refuse an epochs budget too small for any configuration to train to its end: such a
    study is over before it has a result to export. Only where the epochs a configuration
    trains are known (the training engine's objectives, the built-ins, a schedule)."""
    if "epochs" not in budget or "epochs" in space:
        return
    epochs = training.get("epochs", builtin.options.get("epochs") if builtin else None)
    if not isinstance(epochs, int):
        return
    where = "[scheduler] max_epochs" if scheduler else "[training] epochs"
    if scheduler is not None and scheduler["name"] == "pbt":
        # The members train together, interval by interval: the result is the population's
        # at the end, and a budget below it ends them all part-way.
        needed = scheduler["population"] * epochs
        what = (
            f"its population has trained to the end (each of its {scheduler['population']} "
            f"members trains to {where} = {epochs}, {needed} epochs in all)"
        )
    else:
        needed = epochs
        what = f"any configuration has trained to the end ({where} = {epochs})"
    if budget["epochs"] < needed:
        raise c.fail(
            "budget",
            f"epochs = {budget['epochs']} ends the study before {what}, with no result to "
            f"export; set epochs >= {needed}, or remove it.",
        )


def _check_placeholders(
    c: _Checker, objective: str, space: Mapping[str, Any], training: Mapping[str, Any]
) -> None:
    """Every {name} in a command names a parameter (searched or fixed) or a built-in one."""
    if not is_command(objective):
        return
    known = [*space, *training, *BUILTIN_PLACEHOLDERS]
    for name in placeholders(CommandObjective.load(objective).argv):
        if name not in known:
            raise c.fail(
                "study",
                f"command: the placeholder {{{name}}} names no parameter.{did_you_mean(name, known)}"
                f" Use a name from [space] or [training], or one of "
                f"{', '.join(BUILTIN_PLACEHOLDERS)} (write {{{{ and }}}} for a literal brace).",
            )


def _resumes(objective: Any) -> bool:
    """The objective resumes a paused trial from its checkpoint: it trains through
    hpsearch.fit, or it declares that it resumes from hpsearch.get_checkpoint."""
    return engine_use(objective) is not None or is_resumable(objective)


def load_spec_file(path: str) -> StudySpec:
    try:
        with open(path, "rb") as handle:
            text = handle.read()
    except OSError as err:
        raise SpecError(
            f"Cannot read study file {path!r}: {err.strerror}; check the path."
        ) from None
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text; save the study file as UTF-8.") from None
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: malformed TOML: {err}; fix the syntax there.") from None
    return parse_spec(raw, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


@dataclass(frozen=True)
class Resources:
    """``[resources]``: how workers run a study's trials (defaults in RESOURCE_DEFAULTS)."""

    workers: int  # worker processes per `hpsearch run`
    devices_per_trial: int  # DDP ranks per trial
    nodes_per_trial: int  # nodes whose workers form one trial group
    heartbeat_interval: int  # seconds between a running trial's heartbeats
    grace_period: int  # seconds without a heartbeat before a trial counts as dead
    max_retry: int  # retries of a trial whose worker died
    max_consecutive_failures: int  # a worker stops after this many failures with one error
    dist_timeout: int  # seconds a collective waits for a missing rank
    db_timeout: int  # seconds a worker rides out a database outage
    artifacts: str  # folder (or s3://BUCKET/PREFIX) of checkpoints and the artifact store
    keep_checkpoints: str  # "best", "all" or "none"


@dataclass(frozen=True)
class Section:
    """``[sampler]`` or ``[pruner]``: a name and the options passed to Optuna's class."""

    name: str
    options: dict[str, Any]
    seed: int | None = None  # samplers only


@dataclass(frozen=True)
class StudySpec:
    """Typed access to a normalised spec dict (the form stored in the study)."""

    data: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.data["study"]["name"])

    @property
    def objective(self) -> str:
        return str(self.data["study"]["objective"])

    @property
    def directions(self) -> list[str]:
        return list(self.data["study"]["directions"])

    @property
    def metrics(self) -> list[str]:
        return list(self.data["study"]["metrics"])

    @property
    def space(self) -> dict[str, dict[str, Any]]:
        return dict(self.data["space"])

    @property
    def n_trials(self) -> int:
        return int(self.data["budget"]["n_trials"])

    @property
    def timeout(self) -> float | None:
        timeout = self.data["budget"]["timeout"]
        return None if timeout is None else float(timeout)

    @property
    def budget_epochs(self) -> int | None:
        """Epochs (evaluations reported) all trials together may train; None: no such limit."""
        epochs = self.data["budget"].get("epochs")
        return None if epochs is None else int(epochs)

    @property
    def budget_device_hours(self) -> float | None:
        """Device-hours all trials together may spend; None: no such limit."""
        hours = self.data["budget"].get("device_hours")
        return None if hours is None else float(hours)

    @property
    def training(self) -> dict[str, Any]:
        return dict(self.data["training"])

    @property
    def resources(self) -> Resources:
        # Defaults first: a spec stored by an older version lacks the newer settings.
        return Resources(**{**RESOURCE_DEFAULTS, **self.data["resources"]})

    @property
    def sampler(self) -> Section:
        sampler = self.data["sampler"]
        return Section(sampler["name"], dict(sampler["options"]), sampler.get("seed"))

    @property
    def pruner(self) -> Section:
        return Section(self.data["pruner"]["name"], dict(self.data["pruner"]["options"]))

    @property
    def scheduler(self) -> Schedule | PbtSchedule | None:
        """``[scheduler]``: how long each configuration trains, and its rungs or intervals;
        None: every trial trains to the end."""
        return schedule_of(self.data.get("scheduler"))

    @property
    def warm_start(self) -> dict[str, Any] | None:
        """``[warm_start]``: ``{"studies": [...], "storage": URL or $VARIABLE}``, or None."""
        warm = self.data.get("warm_start")
        return dict(warm) if warm else None

    @property
    def tracking(self) -> dict[str, str] | None:
        """``[tracking]``: some of ``mlflow`` (a URI), ``experiment``, ``wandb`` (a project),
        ``wandb_mode``, ``wandb_dir``; or None."""
        tracking = self.data.get("tracking")
        return dict(tracking) if tracking else None

    @property
    def constraints(self) -> dict[str, dict[str, float]]:
        """``{measurement: {"max": x, "min": y}}`` from ``[constraints]`` (may be empty)."""
        return dict(self.data.get("constraints", {}))

    @property
    def is_conditional(self) -> bool:
        return any("when" in entry for entry in self.data["space"].values())

    def identity(self) -> dict[str, Any]:
        """What must match for two specs to be the same study (worker count is per node)."""
        return {k: v for k, v in self.data.items() if k != "resources"}


def study_resource_differences(stored: StudySpec, given: StudySpec) -> list[str]:
    """The study's own [resources] settings (not NODE_RESOURCES) that ``given`` changes."""
    old, new = asdict(stored.resources), asdict(given.resources)
    return [
        f"{key} = {old[key]!r} (the file gives {new[key]!r})"
        for key in old
        if key not in NODE_RESOURCES and old[key] != new[key]
    ]


@dataclass(frozen=True)
class BudgetChange:
    """How a study file's [budget] differs from a stored study's, where nothing else does."""

    raised: list[str]  # "n_trials 100 -> 200": more work allowed (a wider limit, or none)
    lowered: list[str]  # "epochs 500 -> 300": less allowed (a tighter limit, or a new one)


def budget_change(stored: StudySpec, given: StudySpec) -> BudgetChange | None:
    """The budget change from ``stored`` to ``given``, or None when they differ elsewhere too
    (or not at all). ``timeout`` is the wall-clock limit of each run, so any change of it counts
    as raised."""
    old, new = stored.identity(), given.identity()
    if old == new or {**old, "budget": None} != {**new, "budget": None}:
        return None
    change = BudgetChange(raised=[], lowered=[])
    before, after = old["budget"], new["budget"]
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a == b:
            continue
        # No limit (None) allows the most, except that n_trials is always set.
        wider = key == "timeout" or b is None or (a is not None and b > a)
        text = f"{key} {'none' if a is None else a} -> {'none' if b is None else b}"
        (change.raised if wider else change.lowered).append(text)
    return change


def spec_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths where two spec dicts differ, with both values."""
    diffs: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        path = f"{prefix}{key}"
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += spec_differences(a, b, path + ".")
        elif a != b:
            diffs.append(f"{path}: {a!r} -> {b!r}")
    return diffs
