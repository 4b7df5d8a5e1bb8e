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
import tempfile
import warnings

import optuna
import optuna.artifacts
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import CHECKPOINT as ATTR
from hpsearch.attrs import ERROR
from hpsearch.search.results._export import best_trials
from hpsearch.search.spec._study_file import StudySpec

log = logging.getLogger("hpsearch.checkpoints")


def checkpoint_path(spec: StudySpec, slot: int, study_uid: str) -> str:
    """``ARTIFACTS/NAME-UID/slot-N/checkpoint.pt``: the uid keeps a re-created study of the same
    name from resuming an old study's checkpoints."""
    folder = os.path.abspath(spec.resources.artifacts)
    return os.path.join(folder, f"{spec.name}-{study_uid}", f"slot-{slot:06d}", "checkpoint.pt")


def _remove(trial: FrozenTrial) -> None:
    path = trial.user_attrs.get(ATTR)
    if path and os.path.exists(path):
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def tidy(study: optuna.Study, finished: FrozenTrial, keep: str) -> None:
    """After a trial ends: keep the checkpoints of the best trial(s), or all, or none.

    Never fatal: a failure here costs disk space or a dashboard entry, not the worker.
    """
    try:
        _tidy(study, finished, keep)
    except Exception as err:
        log.warning("could not tidy the checkpoints after trial %d: %s", finished.number, err)


def _tidy(study: optuna.Study, finished: FrozenTrial, keep: str) -> None:
    """See tidy.

    A trial that ended without a result of its own (interrupted, dead worker) keeps its
    checkpoint: its retry resumes from it.
    """
    if keep == "all" or not os.path.exists(str(finished.user_attrs.get(ATTR, ""))):
        return  # nothing to keep or remove (objectives that write no checkpoint end here)
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
    _publish(study, finished)


def artifact_store_folder(spec: StudySpec) -> str:
    """The Optuna artifact store beside the checkpoints: `hpsearch dashboard --artifacts` it."""
    return os.path.join(os.path.abspath(spec.resources.artifacts), "store")


def _store(study: optuna.Study) -> optuna.artifacts.FileSystemArtifactStore:
    from hpsearch.search._study import SPEC_ATTR

    folder = artifact_store_folder(StudySpec(study.user_attrs[SPEC_ATTR]))
    os.makedirs(folder, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(folder)


def _artifact_name(trial: FrozenTrial) -> str:
    return f"trial-{trial.number:06d}-checkpoint.pt"


def _publish(study: optuna.Study, best: FrozenTrial) -> None:
    """Copy a best trial's checkpoint into the artifact store, so the dashboard lists it.

    It is attached to the study (a finished trial can no longer take attributes), named after
    the trial. The copies stay: the store holds every trial that was the best when it finished
    (a handful: improvements get rarer), while the checkpoint folders keep only the current best.
    Optuna has no call to delete an artifact's record, and a record without its file breaks
    `optuna.artifacts.get_all_artifact_meta`.
    """
    path = best.user_attrs.get(ATTR)
    if not path or not os.path.exists(path):
        return
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        named = os.path.join(folder, _artifact_name(best))
        shutil.copyfile(path, named)
        optuna.artifacts.upload_artifact(
            artifact_store=_store(study), file_path=named, study_or_trial=study
        )
