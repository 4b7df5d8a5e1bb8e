"""What the worker tells the training engine about the trial it runs.

The worker sets the context around each call of the objective; ``hpsearch.fit`` reads it. So a
user objective never handles paths or study settings: the checkpoint file of the trial's slot
(a retried trial finds its predecessor's), the study's metrics and directions (which evaluated
metric goes to the pruner, and whether it is minimized), whether the study prunes, and, under
``hpsearch train``, where the trained model is saved. Outside a worker (a notebook, a test) the
context is empty: no checkpoint, and ``fit``'s own ``metric`` argument decides. A command
objective's process (``[study] command``) reads it from its environment.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# A command objective's process finds its trial's context here (objectives/command.py).
CONTEXT_VARIABLE = "HPSEARCH_CONTEXT"


@dataclass(frozen=True)
class TrialContext:
    checkpoint: str | None = None  # the trial's checkpoint file, written every epoch
    metrics: tuple[str, ...] = ()  # the study's metrics, in order
    directions: tuple[str, ...] = ()  # "minimize" or "maximize", one per metric
    prunes: bool = False  # the study has a pruner: each evaluation must report its metric
    model_path: str | None = None  # `hpsearch train`: save the trained model's weights here
    # A worker's trial keeps its first report of a step: a resumed run reports its checkpoint's
    # last evaluation again (a kill may have come between the two) and asks the pruner about it.
    report_on_resume: bool = False
    # Options whose values may differ from the checkpoint's when the trial resumes (population-
    # based training explores them between intervals): the run resumes with the new values.
    live: tuple[str, ...] = ()
    # `hpsearch train` of a population-based study's best: the live options to switch to, by
    # the epoch they take effect from (the exported param_schedule after its first entry).
    replay: tuple[tuple[int, Mapping[str, Any]], ...] = ()
    devices: int = 1  # the devices the trial holds (a command's {devices})


def context_document(context: TrialContext) -> str:
    """What a command objective's process needs of the context, as JSON."""
    return json.dumps(
        {
            "checkpoint": context.checkpoint,
            "metrics": list(context.metrics),
            "directions": list(context.directions),
            "prunes": context.prunes,
            "report_on_resume": context.report_on_resume,
            "devices": context.devices,
        }
    )


def _from_environment() -> TrialContext:
    """The context a worker gave the command this process runs in (empty outside one)."""
    document = os.environ.get(CONTEXT_VARIABLE)
    if not document:
        return TrialContext()
    data = json.loads(document)
    return TrialContext(
        checkpoint=data.get("checkpoint"),
        metrics=tuple(data.get("metrics", ())),
        directions=tuple(data.get("directions", ())),
        prunes=bool(data.get("prunes")),
        report_on_resume=bool(data.get("report_on_resume")),
        devices=int(data.get("devices", 1)),
    )


_current = _from_environment()


def current_context() -> TrialContext:
    return _current


@contextlib.contextmanager
def trial_context(context: TrialContext) -> Iterator[TrialContext]:
    """Run the objective under ``context``; one trial at a time per process."""
    global _current
    previous, _current = _current, context
    try:
        yield context
    finally:
        _current = previous
