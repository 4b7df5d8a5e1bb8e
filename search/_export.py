"""Export the best configuration (or the Pareto front) in a form that alone says how to train."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import optuna
import tomli_w
import yaml
from optuna.trial import FrozenTrial, TrialState

from search._errors import HpsearchError
from search._spec import StudySpec

FORMATS = ("yaml", "json", "toml")


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (one direction) or the Pareto front (several), best first."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    front = study.best_trials
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1
    return sorted(front, key=lambda t: (sign * t.values[0], t.number))


def export_document(study: optuna.Study, spec: StudySpec) -> dict[str, Any]:
    trials = best_trials(study)
    if not trials:
        raise HpsearchError(
            f"Study {spec.name!r} has no completed trial yet; run `hpsearch worker --study "
            f"{spec.name}` (or wait for the running ones) and export again."
        )
    best = trials[0]
    single = len(spec.directions) == 1
    document: dict[str, Any] = {
        "study": spec.name,
        "objective": spec.objective,
        "metric": spec.metrics[0] if single else spec.metrics,
        "value": best.value if single else best.values,
        "trial": best.number,
        "params": dict(best.params),
        "training": spec.training,
        "direction": spec.directions[0] if single else spec.directions,
    }
    if not single:
        document["pareto_front"] = [
            {"trial": t.number, "values": list(t.values), "params": dict(t.params)} for t in trials
        ]
    return document


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
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".hpsearch-export-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
