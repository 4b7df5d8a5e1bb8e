"""[tracking] mlflow: the study as a parent run, each configuration as a child run with its
parameters, per-step metrics and final values, in a real MLflow store (a SQLite database); a
trial handed back and retried continues its configuration's run."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.errors import SpecError
from hpsearch.search import create_study, load_spec_file
from hpsearch.search.cli import main

from .test_engine import run_worker, start_and_wait
from .test_engine import write_study as write_engine_study
from .test_fault_tolerance import _trials

mlflow = pytest.importorskip("mlflow")


def _runs(uri: str, experiment: str) -> dict[str, Any]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    return {r.info.run_name: r for r in client.search_runs([found.experiment_id])}


def _history(uri: str, run: Any, metric: str) -> dict[int, float]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, metric)}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('mlfow = "sqlite:///m.db"', "unknown key 'mlfow'. Did you mean 'mlflow'?"),
        ('mlflow = ""', "mlflow must be an MLflow tracking URI"),
        ('mlflow = "sqlite:///m.db"\nexperiment = 3', "experiment must be a name, got 3."),
    ],
)
def test_a_bad_tracking_table_is_refused(write_study: Any, table: str, message: str) -> None:
    path = write_study(f"\n[tracking]\n{table}\n")
    with pytest.raises(SpecError, match="tracking") as err:
        load_spec_file(str(path))
    assert message in str(err.value)


def test_each_configuration_is_a_run_under_the_studys_run(
    write_study: Any, tmp_path: Path, study_name: str
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_study(
        f'\n[tracking]\nmlflow = "{uri}"\nexperiment = "tuning"\n',
        n_trials=3,
        pruner='name = "median"\noptions = { n_startup_trials = 1, n_warmup_steps = 0 }',
    )
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["run", "-q", str(path), "--storage", url, "--workers", "1"]) == 0
    study = optuna.load_study(study_name=study_name, storage=url)
    runs = _runs(uri, "tuning")
    parent = runs.pop(study_name)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["hpsearch.best_trial"] == str(study.best_trial.number)
    assert parent.data.metrics["best_loss"] == pytest.approx(study.best_value)
    assert len(runs) == 3  # one per budget slot
    for trial in study.trials:
        run = runs[f"{study_name}-slot-{trial.system_attrs['hpsearch:slot']}"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["x"] == str(trial.params["x"])
        assert _history(uri, run, "loss") == trial.intermediate_values
        assert run.data.tags["hpsearch.state"] == trial.state.name
        if trial.state == TrialState.COMPLETE:
            assert run.data.metrics["final_loss"] == pytest.approx(trial.value)
        assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_a_trial_handed_back_and_retried_continues_its_run(tmp_path: Path, study_name: str) -> None:
    """SIGTERM mid-trial (after 2 of 8 epochs), then a new worker: one run for the
    configuration, every epoch logged once, finished when the retry completes."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_engine_study(tmp_path, study_name)
    path.write_text(path.read_text() + f'\n[tracking]\nmlflow = "{uri}"\n')
    url = f"sqlite:///{tmp_path / 'study.db'}"
    create_study(load_spec_file(str(path)), url)
    parent, victim = start_and_wait(study_name, url, tmp_path)
    parent.send_signal(signal.SIGTERM)
    parent.communicate(timeout=120)
    (tmp_path / "pause").unlink()
    run_worker(study_name, url, tmp_path)
    (retry,) = [t for t in _trials(url, study_name) if t.number != victim.number]
    assert retry.state == TrialState.COMPLETE
    runs = _runs(uri, study_name)
    runs.pop(study_name)
    (run,) = runs.values()
    assert run.data.tags["hpsearch.trial"] == str(retry.number)  # the retry took it over
    history = mlflow.MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "mse")
    assert sorted(m.step for m in history) == list(range(8))  # each epoch once
    assert {m.step: m.value for m in history} == retry.intermediate_values
    assert run.info.status == "FINISHED"
