"""Where a trial's checkpoint lives, and which checkpoints are kept once trials finish.

The file is named after the trial's budget slot, which a retried trial inherits from the trial
it replaces: the retry finds its predecessor's last checkpoint and resumes from it. The folder
(``[resources] artifacts``) must be one that every node sees (a shared filesystem) for a trial
to resume on another node.
"""

from __future__ import annotations

import logging
import os
import shutil

import optuna
from optuna.trial import FrozenTrial, TrialState

from search._budget import ERROR
from search._export import best_trials
from search._spec import StudySpec

log = logging.getLogger("hpsearch.checkpoints")
ATTR = "checkpoint"


def checkpoint_path(spec: StudySpec, slot: int, study_uid: str) -> str:
    """``ARTIFACTS/NAME-UID/slot-N/checkpoint.pt``: the uid keeps a re-created study of the same
    name from resuming an old study's checkpoints."""
    folder = os.path.abspath(spec.resources["artifacts"])
    return os.path.join(folder, f"{spec.name}-{study_uid}", f"slot-{slot:06d}", "checkpoint.pt")


def _remove(trial: FrozenTrial) -> None:
    path = trial.user_attrs.get(ATTR)
    if path and os.path.exists(path):
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def tidy(study: optuna.Study, finished: FrozenTrial, keep: str) -> None:
    """After a trial ends: keep the checkpoints of the best trial(s), or all, or none.

    A trial that ended without a result of its own (interrupted, dead worker) keeps its
    checkpoint: its retry resumes from it.
    """
    if keep == "all" or ATTR not in finished.user_attrs:
        return
    if finished.state == TrialState.FAIL and ERROR not in finished.user_attrs:
        return
    best = {t.number for t in best_trials(study)} if keep == "best" else set()
    if finished.number not in best:
        _remove(finished)
        return
    # This trial is (one of) the best now: checkpoints of earlier bests no longer are.
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.number not in best and ATTR in trial.user_attrs:
            _remove(trial)
