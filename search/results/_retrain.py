"""``hpsearch train``: retrain the configuration in an exported file, without any study.

The objective gets the same ``params`` a worker gave it (the file's ``training`` merged under
its ``params``) and a local stand-in for the Optuna trial that prints each reported value. The
trained model is saved as ``model.pt`` (a state_dict) beside ``config.json`` (everything that
produced it): a built-in's always, a user objective's when it trains through ``hpsearch.fit``
(the engine saves it where the context says); otherwise only the metric is reported. With the
same seed on the same hardware (and thread count) the
metric equals the trial's: the training is deterministic on CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import yaml

from hpsearch import attrs
from hpsearch.errors import HpsearchError, NonFiniteLoss
from hpsearch.files import replacing
from hpsearch.objectives.context import TrialContext, trial_context
from hpsearch.search.results._export import package_versions, write_atomically


@dataclass
class LocalTrial:
    """What an objective may use of ``optuna.Trial``, with no study behind it.

    ``report`` prints progress; nothing is ever pruned. The trainer's ``checkpoint`` attribute
    is deliberately absent, so a retrain always starts from scratch.
    """

    number: int
    params: dict[str, Any]
    metric: str
    epochs: int | None
    stream: TextIO
    reports: list[tuple[int, float]] = field(default_factory=list)
    user_attrs: dict[str, Any] = field(default_factory=dict)

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, float(value)))
        if self.epochs is None:
            where = f"epoch {step + 1}"
        elif step < self.epochs:
            where = f"epoch {step + 1}/{self.epochs}"
        else:  # e.g. fine-tuning after compression reports past the training epochs
            where = f"epoch {step + 1} (after training)"
        print(f"{where} {self.metric} {value:.4f}", file=self.stream, flush=True)

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


def read_export(path: str) -> dict[str, Any]:
    """An exported file (yaml, json or toml, by extension), checked for what training needs."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as err:
        raise HpsearchError(
            f"Cannot read exported file {path!r}: {err.strerror}; write one with "
            "`hpsearch export --study NAME --output best.yaml`."
        ) from None
    extension = os.path.splitext(path)[1].lower()
    try:
        text = raw.decode("utf-8")
        if extension == ".toml":
            document: Any = tomllib.loads(text)
        elif extension == ".json":
            document = json.loads(text)
        else:  # YAML also reads JSON
            document = yaml.safe_load(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HpsearchError(
            f"Cannot parse exported file {path!r}: {first}; expected the yaml, json or toml "
            "that `hpsearch export` writes."
        ) from None
    _check_document(path, document)
    return dict(document)


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "objective": str,
    "params": dict,
    "training": dict,
    "metric": (str, list),
}


def _check_document(path: str, document: Any) -> None:
    if not isinstance(document, dict):
        raise HpsearchError(
            f"Exported file {path!r} holds a {type(document).__name__}, not a table of keys; "
            "expected the output of `hpsearch export`."
        )
    for key, kind in _REQUIRED.items():
        if key not in document:
            raise HpsearchError(
                f"Exported file {path!r} has no {key!r} key; expected the keys "
                f"{', '.join(_REQUIRED)} that `hpsearch export` writes."
            )
        if not isinstance(document[key], kind):
            raise HpsearchError(
                f"Exported file {path!r}: {key!r} is a {type(document[key]).__name__}, which "
                "`hpsearch export` never writes; export the study again."
            )


@dataclass(frozen=True)
class TrainOutcome:
    metrics: list[str]
    values: list[float]  # what this run measured, one per metric
    exported: list[float] | None  # what the trial measured, from the file
    trial: int | None  # the trial's number, from the file
    model_path: str | None  # None when the objective saved no model


def _schedule(path: str, schedule: Any) -> list[tuple[int, dict[str, Any]]]:
    """The exported ``schedule`` (``[[first epoch, {option: value}], ...]``), checked."""
    if schedule is None:
        return []
    entries: list[tuple[int, dict[str, Any]]] = []
    for entry in schedule if isinstance(schedule, list) else [schedule]:
        if (
            not isinstance(entry, list | tuple)
            or len(entry) != 2
            or not isinstance(entry[0], int)
            or not isinstance(entry[1], dict)
        ):
            raise HpsearchError(
                f"Exported file {path!r}: schedule entry {entry!r} is not [first epoch, "
                "{option: value}] as `hpsearch export` writes it; export the study again."
            )
        entries.append((entry[0], dict(entry[1])))
    return entries


def _metrics(document: dict[str, Any]) -> list[str]:
    metric = document["metric"]
    return [str(m) for m in metric] if isinstance(metric, list) else [str(metric)]


def _exported_values(document: dict[str, Any]) -> list[float] | None:
    value: Any = document.get("value")
    values: list[Any] = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None  # absent or hand-edited: nothing to compare with
    return [float(v) for v in values]


@contextlib.contextmanager
def _one_line_failures(path: str) -> Iterator[None]:
    """A refused configuration or a pruned run ends in one line; a bug keeps its traceback."""
    import optuna

    try:
        yield
    except optuna.TrialPruned as err:  # e.g. the loss became NaN with on_nonfinite = "prune"
        raise HpsearchError(
            f"Training from {path!r} stopped: {err}; the trial itself ended the same way, or "
            "this hardware differs from the trial's."
        ) from None
    except ValueError as err:  # the trainer's checks of a configuration
        raise HpsearchError(f"Training from {path!r} refused its configuration: {err}.") from None
    except NonFiniteLoss as err:  # on_nonfinite = "fail"
        raise HpsearchError(
            f"Training from {path!r} stopped: {err}; the trial itself ended the same way, or "
            "this hardware differs from the trial's."
        ) from None


def train_from_export(path: str, output: str, *, stream: TextIO = sys.stderr) -> TrainOutcome:
    """Retrain what ``path`` describes; save a built-in's model under ``output``."""
    from hpsearch.objectives import (
        BUILTIN_OBJECTIVES,
        check_combinations,
        check_options,
        load_objective,
        resolve_objective,
    )
    from hpsearch.search.runtime._worker import _as_values

    document = read_export(path)
    # Exports name objective files by absolute path; a hand-edited relative one is the file's.
    objective = resolve_objective(
        document["objective"], base_dir=os.path.dirname(os.path.abspath(path))
    )
    # Refused before anything is created or trained, as `create` refuses them.
    for key in ("training", "params"):
        check_options(objective, document[key], where=f"{path} {key}")
    check_combinations(objective, {**document["training"], **document["params"]}, {}, where=path)
    metrics = _metrics(document)
    schedule = _schedule(path, document.get("schedule"))
    # A population-based study's best starts with its schedule's first options, and switches
    # at the epochs of the others, as the member (and its donors) trained.
    params = {**document["training"], **document["params"], **(schedule[0][1] if schedule else {})}
    builtin = BUILTIN_OBJECTIVES.get(objective)
    options = {**(builtin.options if builtin else {}), **params}
    epochs = options.get("epochs")
    trial = LocalTrial(
        number=document["trial"] if isinstance(document.get("trial"), int) else 0,
        params=dict(document["params"]),
        # Built-ins report the validation accuracy every epoch, whatever the study optimizes.
        metric=builtin.metric if builtin else metrics[0],
        epochs=int(epochs) if isinstance(epochs, int) else None,
        stream=stream,
    )
    batch = document.get("batch")
    if (
        isinstance(batch, dict)
        and isinstance(batch.get("world_size"), int)
        and batch["world_size"] > 1
    ):
        print(
            f"note: trial {trial.number} ran on {batch['world_size']} ranks and this runs on one: "
            "the batch is the same, the floating-point sums may differ slightly",
            file=stream,
        )
    # Everything is checked before anything is written: a refused run leaves no --output.
    _check_device(path, options.get("device"))
    _check_output(output)
    model_path = os.path.join(output, "model.pt")
    context = TrialContext(
        metrics=tuple(metrics),
        directions=tuple(_directions(document, len(metrics))),
        # A user objective that trains through hpsearch.fit saves its model here.
        model_path=None if builtin else model_path,
        replay=tuple(schedule[1:]),
    )
    if builtin is None:
        function = load_objective(objective)
        with _one_line_failures(path), trial_context(context):
            result = function(trial, params)
            values = _as_values(result, metrics)
        measurements = dict(result) if isinstance(result, Mapping) else {}
        saved = os.path.exists(model_path)
    else:
        from hpsearch.objectives.builtin import train_builtin
        from hpsearch.objectives.compression import serialize

        with _one_line_failures(path), trial_context(context):
            measurements, model = train_builtin(trial, params, objective=objective)
            values = _as_values(measurements, metrics)
        _make_folder(output)  # only now: the engine refuses a bad option when training starts
        # The bytes `size_bytes` measured: sparse weights stay compact, int8 layers stay packed
        # (`objectives.compression.load_serialized` reads them back into the compressed model).
        with replacing(model_path) as partial, open(partial, "wb") as handle:
            handle.write(serialize(model.to("cpu")))
        saved = True
    if not saved:
        return TrainOutcome(metrics, values, _exported_values(document), trial.number, None)
    config = {
        "objective": objective,
        "options": options,  # every option the model was trained with, defaults included
        "metrics": dict(zip(metrics, values, strict=True)),
        "measurements": dict(measurements),
        "batch": trial.user_attrs.get(attrs.BATCH),
        "exported_from": os.path.abspath(path),
        "study": document.get("study"),
        "trial": document.get("trial"),
        "versions": package_versions(),
    }
    write_atomically(
        os.path.join(output, "config.json"), json.dumps(config, indent=2, default=str) + "\n"
    )
    return TrainOutcome(metrics, values, _exported_values(document), trial.number, model_path)


def _check_device(path: str, device: Any) -> None:
    """A CUDA ``device`` names one this machine has (torch would fail deep inside). The name
    itself was checked with the other engine options (``check_options``)."""
    if not isinstance(device, str) or not device.startswith("cuda"):
        return
    import torch

    index = torch.device(device).index
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0 or (index is not None and index >= count):
        seen = f"cuda:0 to cuda:{count - 1}" if count else "no GPU"
        raise HpsearchError(
            f"Exported file {path!r}: device {device!r} is not on this machine (it sees "
            f"{seen}); set `device` under training in the file to auto, cpu or one it sees."
        )


def _check_output(output: str) -> None:
    """--output can be created here (it is made only once training has succeeded)."""
    existing = os.path.abspath(output)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing == os.path.abspath(output) and not os.path.isdir(existing):
        why = "a file is in the way"
    elif not os.path.isdir(existing):
        why = f"{existing!r} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing!r} is not writable"
    else:
        return
    raise HpsearchError(
        f"Cannot use --output {output!r}: {why}; name a folder that can be created."
    )


def _make_folder(output: str) -> None:
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as err:
        raise HpsearchError(
            f"Cannot use --output {output!r}: {err.strerror}; name a folder that can be created."
        ) from None


def _directions(document: dict[str, Any], count: int) -> list[str]:
    direction = document.get("direction")
    directions = direction if isinstance(direction, list) else [direction] * count
    return [str(d) if d in ("minimize", "maximize") else "minimize" for d in directions]


def describe(outcome: TrainOutcome) -> list[str]:
    """The lines ``hpsearch train`` ends with: the metric, and how it compares to the trial's."""
    lines = []
    for i, (metric, value) in enumerate(zip(outcome.metrics, outcome.values, strict=True)):
        line = f"{metric} {value!r}"
        if outcome.exported is not None and i < len(outcome.exported):
            before = outcome.exported[i]
            same = "equal" if value == before else f"differs by {value - before:+.3g}"
            line += f" (trial {outcome.trial}: {before!r}, {same})"
        lines.append(line)
    if outcome.model_path is None:
        lines.append(
            "the objective saved no model: train it with hpsearch.fit, which saves model.pt "
            "under --output, or save it in the objective yourself"
        )
    else:
        lines.append(f"saved {outcome.model_path} and config.json")
    return lines
