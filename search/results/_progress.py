"""Watch a study while local workers run: a live line on a terminal, periodic lines otherwise."""

from __future__ import annotations

import time
from typing import TextIO

import optuna

from hpsearch.search.results._export import best_trials
from hpsearch.search.runtime._budget import budget_state
from hpsearch.search.runtime._compute import compute_document
from hpsearch.search.spec._study_file import StudySpec


def progress_line(study: optuna.Study, spec: StudySpec, started: float) -> str:
    trials = study.get_trials(deepcopy=False)
    state = budget_state(trials, spec.n_trials)
    compute = "".join(
        f", {b['spent']:.4g}/{b['limit']:g} {unit.replace('_', '-')}"
        for unit, b in compute_document(trials, spec).items()
    )
    best = best_trials(study)
    if not best:
        best_text = "no result yet"
    elif len(spec.directions) == 1:
        best_text = f"best {spec.metrics[0]} {best[0].values[0]:.6g} (trial {best[0].number})"
    else:
        best_text = f"{len(best)} on the Pareto front"
    elapsed = int(time.monotonic() - started)
    return (
        f"[{spec.name}] {state.used}/{spec.n_trials} trials{compute} "
        f"({state.pruned} pruned, {state.failed} failed"
        # Only under a [scheduler]: the line stays as it was for every other study.
        + (f", {state.paused} paused" if state.paused else "")
        + f"), {state.running} running, "
        f"{best_text}, {elapsed // 60:02d}:{elapsed % 60:02d}"
    )


class Progress:
    def __init__(self, stream: TextIO, *, live: bool, every: float) -> None:
        self.stream = stream
        self.live = live
        self.every = every
        self._last = 0.0
        self._width = 0

    def due(self) -> bool:
        """Whether the next show() would print: build the line (database reads) only then."""
        return time.monotonic() - self._last >= self.every

    def show(self, line: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        if self.live:
            padded = line.ljust(self._width)
            self._width = len(line)
            self.stream.write("\r" + padded)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.live and self._width:
            self.stream.write("\n")
            self.stream.flush()
