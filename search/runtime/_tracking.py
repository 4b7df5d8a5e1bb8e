"""Experiment tracking: each configuration as a run in MLflow (under the study's run) or in
Weights & Biases (in the study's group), or both.

With ``[tracking] mlflow = URI`` (a database such as ``sqlite:///mlflow.db``, or a tracking
server's ``http://host:5000``) ``hpsearch create`` starts one parent run for the study (its id
kept on the study), and each worker logs every budget slot (a configuration) as a child run:
its parameters when a trial of it starts, then, when the trial ends, the intermediate values it
reported (per step), its final values and its state. A retried, promoted or population-based
continuation of a slot continues the slot's run, logging only the steps it adds: one run per
configuration, whatever happened to its workers. Logging never fails a trial: a tracking server
that is away costs a warning.

With ``[tracking] wandb = PROJECT`` each slot is a W&B run in the project, grouped by the study
(W&B's parent), with a run id made from the study's uid and the slot: a retry or continuation
resumes that run (online, or offline for ``wandb sync`` later, where the parts are joined by
id). W&B offline cannot be asked what a run holds, so the last step logged for a slot is kept
on the study (a system attribute per slot), and a later trial logs only the steps after it.
"""

from __future__ import annotations

import logging
import os
from typing import Any, cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import SLOT, UID
from hpsearch.errors import HpsearchError
from hpsearch.search.spec._study_file import StudySpec
from hpsearch.storage._optuna_internals import storage_of, study_id_of

log = logging.getLogger("hpsearch.tracking")

PARENT_RUN = "hpsearch:mlflow_parent"  # study user attribute: the study's MLflow run id
_SLOT_TAG = "hpsearch.slot"
_STATES = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.PRUNED: "FINISHED",
    TrialState.FAIL: "FAILED",
}


def _client(uri: str) -> Any:
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise HpsearchError(
            "[tracking] mlflow needs the mlflow package: pip install 'hpsearch[mlflow]', or "
            "remove [tracking]."
        ) from None
    return MlflowClient(tracking_uri=uri)


def start_study_run(spec: StudySpec, study_uid: str) -> str:
    """``create``: the study's MLflow parent run (in the experiment named by [tracking]); its
    id."""
    tracking = spec.tracking
    assert tracking is not None and "mlflow" in tracking
    client = _client(tracking["mlflow"])
    name = tracking.get("experiment") or spec.name
    try:
        found = client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else client.create_experiment(name)
        run = client.create_run(
            experiment,
            run_name=spec.name,
            tags={"hpsearch.study": spec.name, "hpsearch.study_uid": study_uid},
        )
    except Exception as err:
        raise HpsearchError(
            f"[tracking] mlflow: could not start the study's run ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else ''}); check the tracking URI"
        ) from None
    run_id: str = run.info.run_id
    return run_id


class Tracking:
    """A worker's logging of its trials to every tracker that [tracking] names."""

    def __init__(self, study: optuna.Study, spec: StudySpec) -> None:
        tracking = spec.tracking or {}
        self.trackers: list[MlflowTracking | WandbTracking] = []
        if "mlflow" in tracking:
            self.trackers.append(MlflowTracking(study, spec))
        if "wandb" in tracking:
            self.trackers.append(WandbTracking(study, spec))

    def started(self, trial: FrozenTrial, params: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.started(trial, params)

    def ended(self, frozen: FrozenTrial, *, paused: bool) -> None:
        for tracker in self.trackers:
            tracker.ended(frozen, paused=paused)

    def study_ended(self, study: optuna.Study) -> None:
        for tracker in self.trackers:
            tracker.study_ended(study)

    def handed_back(self, frozen: FrozenTrial) -> None:
        """A stop handed the trial back mid-way: its retry goes on with the configuration."""
        for tracker in self.trackers:
            tracker.handed_back(frozen)


def slot_of(trial: FrozenTrial) -> int:
    """The trial's budget slot: its configuration, which retries and continuations share."""
    return int(trial.system_attrs.get(SLOT, -1 - trial.number))


class MlflowTracking:
    """A worker's logging of its trials to MLflow."""

    def __init__(self, study: optuna.Study, spec: StudySpec) -> None:
        tracking = spec.tracking
        assert tracking is not None
        self.client = _client(tracking["mlflow"])
        self.spec = spec
        self.parent = str(study.user_attrs.get(PARENT_RUN, ""))
        self.experiment = self.client.get_run(self.parent).info.experiment_id
        self._runs: dict[int, str] = {}  # slot -> run id (this worker's cache)

    def started(self, trial: FrozenTrial, params: dict[str, Any]) -> None:
        try:
            run = self._run_of(trial)
            self.client.log_batch(
                run, params=[_param(k, v) for k, v in params.items()], synchronous=True
            )
            self.client.set_tag(run, "hpsearch.trial", str(trial.number))
        except Exception as err:  # logging never fails a trial
            log.warning("trial %d: could not log to MLflow: %s", trial.number, err)

    def ended(self, frozen: FrozenTrial, *, paused: bool) -> None:
        try:
            self._ended(frozen, paused=paused)
        except Exception as err:
            log.warning("trial %d: could not log to MLflow: %s", frozen.number, err)

    def _ended(self, frozen: FrozenTrial, *, paused: bool) -> None:
        from mlflow.entities import Metric

        run = self._run_of(frozen)
        metric = self.spec.metrics[0]
        logged = self.client.get_metric_history(run, metric)
        last = max((m.step for m in logged), default=-1)
        now = int((frozen.datetime_complete or frozen.datetime_start).timestamp() * 1000)  # type: ignore[union-attr]
        metrics = [
            Metric(metric, float(value), now, int(step))
            for step, value in sorted(frozen.intermediate_values.items())
            if step > last
        ]
        if frozen.values is not None:
            metrics += [
                Metric(f"final_{name}", float(value), now, 0)
                for name, value in zip(self.spec.metrics, frozen.values, strict=True)
            ]
        self.client.log_batch(run, metrics=metrics, synchronous=True)
        state = "PAUSED" if paused else frozen.state.name
        self.client.set_tag(run, "hpsearch.state", state)
        if not paused and frozen.state in _STATES:
            self.client.set_terminated(run, status=_STATES[frozen.state])

    def handed_back(self, frozen: FrozenTrial) -> None:
        """Nothing to do: the slot's run stays RUNNING, and the retry logs what it adds."""

    def study_ended(self, study: optuna.Study) -> None:
        """The budget is used: the study's run ends with its best values (every worker that
        sees the end says the same)."""
        try:
            if len(self.spec.metrics) == 1:
                best = study.best_trial
                self.client.log_metric(self.parent, f"best_{self.spec.metrics[0]}", best.value)
                self.client.set_tag(self.parent, "hpsearch.best_trial", str(best.number))
            self.client.set_terminated(self.parent, status="FINISHED")
        except ValueError:  # no trial completed: nothing is best
            self.client.set_terminated(self.parent, status="FINISHED")
        except Exception as err:
            log.warning("could not end the study's MLflow run: %s", err)

    def _run_of(self, trial: FrozenTrial) -> str:
        """The run of the trial's slot: found (a retry, a continuation) or started."""
        slot = slot_of(trial)
        run = self._runs.get(slot)
        if run is not None:
            return run
        found = self.client.search_runs(
            [self.experiment],
            filter_string=f"tags.`{_SLOT_TAG}` = '{slot}' and tags.`mlflow.parentRunId` = "
            f"'{self.parent}'",
            max_results=1,
        )
        if found:
            run = str(found[0].info.run_id)
            self.client.update_run(run, status="RUNNING")
        else:
            run = str(
                self.client.create_run(
                    self.experiment,
                    run_name=f"{self.spec.name}-slot-{slot}",
                    tags={_SLOT_TAG: str(slot), "mlflow.parentRunId": self.parent},
                ).info.run_id
            )
        self._runs[slot] = run
        return run


def _param(name: str, value: Any) -> Any:
    from mlflow.entities import Param

    return Param(name, str(value))


def require_wandb() -> Any:
    """The wandb module, or the one line that says how to get it."""
    try:
        import wandb
    except ImportError:
        raise HpsearchError(
            "[tracking] wandb needs the wandb package: pip install 'hpsearch[wandb]', or "
            "remove wandb from [tracking]."
        ) from None
    return wandb


WANDB_LAST_STEP = "hpsearch:wandb_last_step"  # + ":SLOT", a study system attribute


class WandbTracking:
    """A worker's logging of its trials to Weights & Biases: one run per slot, resumed by id."""

    def __init__(self, study: optuna.Study, spec: StudySpec) -> None:
        self.wandb = require_wandb()
        self.study = study
        self.spec = spec
        self.uid = str(study.user_attrs.get(UID, "study"))
        self._open: dict[int, Any] = {}  # trial number -> its open wandb run

    def _init(self, trial: FrozenTrial, params: dict[str, Any] | None) -> Any:
        tracking = self.spec.tracking or {}
        slot = slot_of(trial)
        return self.wandb.init(
            project=tracking["wandb"],
            group=self.spec.name,
            name=f"{self.spec.name}-slot-{slot}",
            id=f"{self.uid}-slot-{slot}",
            resume="allow",
            mode=cast(Any, tracking.get("wandb_mode")),  # None: W&B's (WANDB_MODE, or online)
            dir=tracking.get("wandb_dir"),
            config=params,
            reinit="create_new",
            settings=self.wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    def started(self, trial: FrozenTrial, params: dict[str, Any]) -> None:
        try:
            if self.spec.tracking and self.spec.tracking.get("wandb_dir"):
                os.makedirs(self.spec.tracking["wandb_dir"], exist_ok=True)
            run = self._init(trial, {**params, "hpsearch.study": self.spec.name})
            run.summary["hpsearch.trial"] = trial.number
            self._open[trial.number] = run
        except Exception as err:  # logging never fails a trial
            log.warning("trial %d: could not log to Weights & Biases: %s", trial.number, err)

    def ended(self, frozen: FrozenTrial, *, paused: bool) -> None:
        self._finish(frozen, "PAUSED" if paused else frozen.state.name)

    def handed_back(self, frozen: FrozenTrial) -> None:
        """The steps so far, and the part closed (a worker that exits with a run open leaves
        an empty part): the retry resumes the run with the steps after them."""
        self._finish(frozen, "HANDED_BACK")

    def _finish(self, frozen: FrozenTrial, state: str) -> None:
        run = self._open.pop(frozen.number, None)
        try:
            if run is None:  # its start was not logged: log what is known now
                run = self._init(frozen, None)
            last = self._last_logged(frozen)
            metric = self.spec.metrics[0]
            steps = sorted(step for step in frozen.intermediate_values if step > last)
            for step in steps:
                run.log({metric: frozen.intermediate_values[step]}, step=step)
            if frozen.values is not None:
                for name, value in zip(self.spec.metrics, frozen.values, strict=True):
                    run.summary[f"final_{name}"] = value
            run.summary["hpsearch.state"] = state
            run.finish(exit_code=1 if state == TrialState.FAIL.name else 0)
            if steps:
                storage_of(self.study).set_study_system_attr(
                    study_id_of(self.study), self._last_step_key(frozen), steps[-1]
                )
        except Exception as err:
            log.warning("trial %d: could not log to Weights & Biases: %s", frozen.number, err)

    def _last_step_key(self, trial: FrozenTrial) -> str:
        return f"{WANDB_LAST_STEP}:{slot_of(trial)}"

    def _last_logged(self, trial: FrozenTrial) -> int:
        """The last step some trial of this slot logged (W&B drops steps at or below it)."""
        attrs = storage_of(self.study).get_study_system_attrs(study_id_of(self.study))
        return int(attrs.get(self._last_step_key(trial), -1))

    def study_ended(self, study: optuna.Study) -> None:
        """Nothing to end: W&B's group of the study has no run of its own."""
