"""What the worker tells the training engine about the trial it runs.

The worker sets the context around each call of the objective; ``hpsearch.fit`` reads it. So a
user objective never handles paths or study settings: the checkpoint file of the trial's slot
(a retried trial finds its predecessor's), the study's metrics and directions (which evaluated
metric goes to the pruner, and whether it is minimized), whether the study prunes, and, under
``hpsearch train``, where the trained model is saved. Outside a worker (a notebook, a test) the
context is empty: no checkpoint, and ``fit``'s own ``metric`` argument decides.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


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


_current = TrialContext()


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
