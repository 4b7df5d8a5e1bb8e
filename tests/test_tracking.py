"""[tracking]: in MLflow, the study as a parent run and each configuration as a child run with
its parameters, per-step metrics and final values, in a real MLflow store (a SQLite database);
in Weights & Biases, each configuration as a run of the study's group, written by the real
wandb package in offline mode and read back from its run files. A trial handed back and retried
continues its configuration's run in both."""

from __future__ import annotations

import json
import signal
import struct
from collections import defaultdict
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import RETRY_OF
from hpsearch.errors import SpecError
from hpsearch.objectives import interrupt
from hpsearch.search import create_study, load_spec_file
from hpsearch.search._study import UID_ATTR, load_study
from hpsearch.search.cli import main
from hpsearch.search.runtime._budget import claim_slot
from hpsearch.search.runtime._tracking import Tracking
from hpsearch.search.runtime._worker import run_trial
from hpsearch.storage._optuna_internals import study_id_of

from .test_engine import run_worker, start_and_wait
from .test_engine import write_study as write_engine_study
from .test_fault_tolerance import _trials

mlflow = pytest.importorskip("mlflow")
wandb_proto = pytest.importorskip("wandb.proto.wandb_internal_pb2")


def _runs(uri: str, experiment: str) -> dict[str, Any]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    return {r.info.run_name: r for r in client.search_runs([found.experiment_id])}


def _history(uri: str, run: Any, metric: str) -> dict[int, float]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, metric)}


class WandbRun:
    """What W&B wrote for one run id, its offline parts (one per trial that ran it) joined in
    the order they started, as `wandb sync` joins them."""

    def __init__(self) -> None:
        self.parts: list[tuple[int, Any]] = []  # (start time, run record)
        self.history: list[tuple[int, dict[str, Any]]] = []  # (step, values), as logged
        self.summary: dict[str, Any] = {}  # the last value of each key
        self.exit_codes: list[int] = []


def _records(path: Path) -> list[Any]:
    """The protobuf records of a W&B run file: a 7-byte header (":W&B", magic, version), then
    LevelDB-log records (crc32, length, type) in 32 KiB blocks, a record split across blocks
    as FIRST, MIDDLE..., LAST."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the block's trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zeroed rest of the block
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_proto.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _wandb_runs(folder: Path) -> dict[str, WandbRun]:
    """Every run id under a W&B dir, its offline parts in the order they started."""
    parts: dict[str, list[tuple[int, list[Any]]]] = defaultdict(list)
    for path in folder.glob("wandb/offline-run-*/run-*.wandb"):
        records = _records(path)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        parts[run.run_id].append((run.start_time.ToNanoseconds(), records))
    runs: dict[str, WandbRun] = {}
    for run_id, found in parts.items():
        joined = runs[run_id] = WandbRun()
        for started, records in sorted(found, key=lambda part: part[0]):
            for record in records:
                kind = record.WhichOneof("record_type")
                if kind == "run":
                    joined.parts.append((started, record.run))
                elif kind == "history":
                    items = _items(record.history.item)
                    joined.history.append((int(items.pop("_step")), items))
                elif kind == "summary":
                    joined.summary.update(_items(record.summary.update))
                elif kind == "exit":
                    joined.exit_codes.append(record.exit.exit_code)
    return runs


def _items(items: Any) -> dict[str, Any]:
    """Recorded items by key (W&B writes a key flat, or as the parts of a nested one)."""
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def _config(run: Any) -> dict[str, Any]:
    return _items(run.config.update)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('mlfow = "sqlite:///m.db"', "unknown key 'mlfow'. Did you mean 'mlflow'?"),
        ('mlflow = ""', "mlflow must be an MLflow tracking URI"),
        ('mlflow = "sqlite:///m.db"\nexperiment = 3', "experiment must be a name, got 3."),
        ('experiment = "x"', "name where runs go"),
        ('wandb = "p"\nexperiment = "x"', "experiment names an MLflow experiment: give mlflow"),
        ("wandb = 3", "wandb must be a Weights & Biases project name"),
        ('wandb = "p"\nwandb_mode = "cloud"', "wandb_mode must be one of 'online', 'offline'"),
        ('wandb_mode = "offline"\nmlflow = "sqlite:///m.db"', "give wandb too"),
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


def _handed_back_then_retried(tmp_path: Path, study_name: str, tracking: str) -> FrozenTrial:
    """An 8-epoch engine study with ``tracking`` as its [tracking] table: its worker stopped
    with SIGTERM after 2 epochs, then a new worker completes the retry, which is returned."""
    path = write_engine_study(tmp_path, study_name)
    path.write_text(path.read_text() + f"\n[tracking]\n{tracking}\n")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    create_study(load_spec_file(str(path)), url)
    parent, victim = start_and_wait(study_name, url, tmp_path)
    parent.send_signal(signal.SIGTERM)
    parent.communicate(timeout=120)
    (tmp_path / "pause").unlink()
    run_worker(study_name, url, tmp_path)
    (retry,) = [t for t in _trials(url, study_name) if t.number != victim.number]
    assert retry.state == TrialState.COMPLETE
    return retry


@pytest.mark.slow
def test_a_trial_handed_back_and_retried_continues_its_run(tmp_path: Path, study_name: str) -> None:
    """SIGTERM mid-trial (after 2 of 8 epochs), then a new worker: one run for the
    configuration, every epoch logged once, finished when the retry completes."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    retry = _handed_back_then_retried(tmp_path, study_name, f'mlflow = "{uri}"')
    runs = _runs(uri, study_name)
    runs.pop(study_name)
    (run,) = runs.values()
    assert run.data.tags["hpsearch.trial"] == str(retry.number)  # the retry took it over
    history = mlflow.MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "mse")
    assert sorted(m.step for m in history) == list(range(8))  # each epoch once
    assert {m.step: m.value for m in history} == retry.intermediate_values
    assert run.info.status == "FINISHED"


def test_each_configuration_is_a_wandb_run_in_the_studys_group(
    write_study: Any, tmp_path: Path, study_name: str
) -> None:
    folder = tmp_path / "wandb-runs"
    path = write_study(
        f'\n[tracking]\nwandb = "tuning"\nwandb_mode = "offline"\nwandb_dir = "{folder}"\n',
        n_trials=3,
        pruner='name = "median"\noptions = { n_startup_trials = 1, n_warmup_steps = 0 }',
    )
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["run", "-q", str(path), "--storage", url, "--workers", "1"]) == 0
    study = optuna.load_study(study_name=study_name, storage=url)
    uid = study.user_attrs["hpsearch:uid"]
    runs = _wandb_runs(folder)
    assert len(runs) == 3  # one per budget slot
    for trial in study.trials:
        slot = trial.system_attrs["hpsearch:slot"]
        run = runs[f"{uid}-slot-{slot}"]
        (_, record), *_ = run.parts
        assert record.project == "tuning"
        assert record.run_group == study_name
        assert record.display_name == f"{study_name}-slot-{slot}"
        assert _config(record)["x"] == trial.params["x"]
        assert dict((step, v["loss"]) for step, v in run.history) == trial.intermediate_values
        assert run.summary["hpsearch.state"] == trial.state.name
        assert run.summary["hpsearch.trial"] == trial.number
        if trial.state == TrialState.COMPLETE:
            assert run.summary["final_loss"] == pytest.approx(trial.value)
        assert run.exit_codes == [0]


@pytest.mark.slow
def test_a_trial_handed_back_and_retried_continues_its_wandb_run(
    tmp_path: Path, study_name: str
) -> None:
    """SIGTERM mid-trial (after 2 of 8 epochs), then a new worker: the configuration's run is
    resumed by id, and the parts hold every epoch once."""
    folder = tmp_path / "wandb-runs"
    tracking = f'wandb = "tuning"\nwandb_mode = "offline"\nwandb_dir = "{folder}"'
    retry = _handed_back_then_retried(tmp_path, study_name, tracking)
    (run,) = _wandb_runs(folder).values()
    assert len(run.parts) == 2  # the handed-back trial's part (epochs 0 and 1), the retry's
    assert [step for step, _ in run.history] == list(range(8))  # each epoch once, in order
    assert dict((step, v["mse"]) for step, v in run.history) == retry.intermediate_values
    assert run.summary["hpsearch.trial"] == retry.number  # the retry took it over
    assert run.summary["hpsearch.state"] == "COMPLETE"


def test_a_handed_back_trial_is_requeued_before_the_trackers_are_told(
    write_study: Any, tmp_path: Path, study_name: str
) -> None:
    """A stopped worker's trial goes back to the queue before any tracker is called: a tracker
    that blocks (W&B finishing its run over a slow network) must not hold the retry until the
    supervisor's kill -9 after its grace period. ``run_trial`` runs in this process, its
    objective interrupted as a stop signal interrupts it; the trackers' seam records what the
    study held when it was told."""
    path = write_study(n_trials=1)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    create_study(load_spec_file(str(path)), url)
    loaded = load_study(study_name, url)
    claimed = claim_slot(loaded.study, loaded.storage)
    assert claimed is not None
    retries_when_told: list[list[int]] = []

    class Observed(Tracking):
        def __init__(self) -> None:
            self.trackers = []

        def handed_back(self, frozen: FrozenTrial) -> None:
            trials = loaded.storage.get_all_trials(study_id_of(loaded.study))
            retries_when_told.append(
                [t.number for t in trials if t.system_attrs.get(RETRY_OF) == frozen.number]
            )

    def stopped(trial: optuna.Trial, params: dict[str, Any]) -> float:
        trial.report(1.0, 0)
        raise interrupt.TrialInterrupted("stop requested")

    with pytest.raises(interrupt.TrialInterrupted):
        run_trial(
            loaded,
            claimed,
            stopped,
            log_trials=False,
            study_uid=str(loaded.study.user_attrs[UID_ATTR]),
            tracking=Observed(),
        )
    (retry,) = [t for t in _trials(url, study_name) if t.number != claimed.number]
    assert retry.state == TrialState.WAITING
    assert retries_when_told == [[retry.number]]
