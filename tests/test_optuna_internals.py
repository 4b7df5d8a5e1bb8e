"""One test per private Optuna name hpsearch relies on (storage/_optuna_internals.py).

When a new Optuna release changes one of them, its test fails with a message naming the
internal, the Optuna version, and where hpsearch uses it."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest

from hpsearch.storage import _optuna_internals as internals
from tests.conftest import free_port

VERSION = optuna.__version__


def _explain(name: str, used_by: str) -> str:
    return (
        f"Optuna {VERSION} changed the internal {name}, used by {used_by}; adapt "
        "storage/_optuna_internals.py to the new Optuna."
    )


@pytest.fixture
def rdb_study(tmp_path: Path) -> optuna.Study:
    storage = optuna.storages.get_storage(f"sqlite:///{tmp_path / 'internals.db'}")
    return optuna.create_study(storage=storage, study_name="internals")


def test_study_and_trial_ids(rdb_study: optuna.Study) -> None:
    trial = rdb_study.ask()
    frozen_trial = rdb_study.trials[0]
    ids = (internals.study_id_of(rdb_study), internals.trial_id_of(frozen_trial))
    assert ids == (
        internals.storage_of(rdb_study).get_study_id_from_name("internals"),
        trial._trial_id,
    ), _explain("Study._study_id / FrozenTrial._trial_id", "the budget queue's claim")


def test_frozen_study_id(rdb_study: optuna.Study) -> None:
    storage = internals.storage_of(rdb_study)
    (frozen,) = storage.get_all_studies()
    assert internals.study_id_of(frozen) == internals.study_id_of(rdb_study), _explain(
        "FrozenStudy._study_id", "hpsearch studies"
    )


def test_storage_of_is_the_cached_rdb_storage(rdb_study: optuna.Study) -> None:
    storage = internals.storage_of(rdb_study)
    assert isinstance(storage, internals._CachedStorage), _explain(
        "Study._storage / _CachedStorage", "the worker's claim and error records"
    )


def test_a_claimed_trial_joins_the_cache(rdb_study: optuna.Study) -> None:
    rdb_study.enqueue_trial({})
    (waiting,) = internals.storage_of(rdb_study)._backend.get_all_trials(
        internals.study_id_of(rdb_study), deepcopy=False
    )
    rdb_study.get_trials(deepcopy=False)  # the cache knows the study
    assert internals.add_claimed_trial_to_cache(rdb_study, waiting), _explain(
        "_CachedStorage._studies / _add_trials_to_cache", "the budget queue's claim"
    )
    cached = internals.storage_of(rdb_study)._studies[internals.study_id_of(rdb_study)]
    assert waiting._trial_id in cached.unfinished_trial_ids


def test_optimize_loop_flags_let_a_sampler_stop_the_study(rdb_study: optuna.Study) -> None:
    internals.enter_optimize_loop(rdb_study)
    assert not internals.stop_requested(rdb_study)
    rdb_study.stop()  # Optuna refuses this outside an optimize loop
    assert internals.stop_requested(rdb_study), _explain(
        "Study._thread_local.in_optimize_loop / Study._stop_flag", "the worker loop"
    )


def test_models_name_the_columns_of_our_core_statements(rdb_study: optuna.Study) -> None:
    rdb_study.ask()
    models = internals.rdb_models()
    used = {
        models.TrialModel: {"trial_id", "number", "study_id", "state", "datetime_start"},
        models.TrialParamModel: {"trial_id", "param_id", "param_name", "param_value"},
        models.TrialValueModel: {"trial_id", "objective", "value", "value_type"},
        models.TrialIntermediateValueModel: {"trial_id", "step", "intermediate_value"},
        models.TrialUserAttributeModel: {"trial_id", "key", "value_json"},
        models.TrialSystemAttributeModel: {"trial_id", "key", "value_json"},
        models.TrialHeartbeatModel: {"trial_id", "heartbeat"},
        models.StudySystemAttributeModel: {"study_id", "key", "value_json"},
    }
    for model, columns in used.items():
        assert columns <= set(model.__table__.c.keys()), _explain(
            f"optuna.storages._rdb.models.{model.__name__}'s columns",
            "the per-trial statements in SQLAlchemy Core (storage/_hot_path.py)",
        )


def test_a_dashboard_note_is_saved_without_importing_the_dashboard(tmp_path: Path) -> None:
    script = f"""
import sys, optuna
from hpsearch.storage._optuna_internals import save_dashboard_note
study = optuna.create_study(storage="sqlite:///{tmp_path / "note.db"}", study_name="n")
save_dashboard_note(study, "## hello")
assert "optuna_dashboard" not in sys.modules and "sklearn" not in sys.modules, "imported"
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    from optuna_dashboard import get_note

    study = optuna.load_study(study_name="n", storage=f"sqlite:///{tmp_path / 'note.db'}")
    assert get_note(study) == "## hello", _explain(
        "optuna_dashboard/_note.py (save_note)", "the study file's note on the dashboard"
    )


def test_alembic_folder_holds_optunas_migrations() -> None:
    folder = internals.alembic_folder()
    assert os.path.isfile(os.path.join(folder, "env.py")), _explain(
        "optuna/storages/_rdb/alembic", "hpsearch db check / db upgrade"
    )


def test_grpc_server_serves_a_storage(rdb_study: optuna.Study) -> None:
    port = free_port()
    with ThreadPoolExecutor(max_workers=2) as executor:
        server = internals.make_grpc_server(
            internals.storage_of(rdb_study), "127.0.0.1", port, executor
        )
        server.start()
        try:
            proxy = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
            names = [s.study_name for s in proxy.get_all_studies()]
            proxy.close()
        finally:
            server.stop(0).wait()
    assert names == ["internals"], _explain(
        "optuna.storages._grpc.server.make_server", "hpsearch proxy"
    )


@pytest.mark.parametrize(
    "make",
    [
        optuna.samplers.RandomSampler,
        optuna.samplers.TPESampler,
        optuna.samplers.CmaEsSampler,
        optuna.samplers.GPSampler,
        optuna.samplers.QMCSampler,
        optuna.samplers.NSGAIISampler,
    ],
)
def test_reseeding_a_sampler_fixes_its_next_proposal(make: type) -> None:
    def first_proposal(seed: int) -> float:
        study = optuna.create_study(sampler=make())
        assert internals.reseed_sampler(study.sampler, seed) > 0, _explain(
            "LazyRandomState / the samplers' _rng, _random_sampler, _independent_sampler",
            "per-slot seeding (search/runtime/_worker.py)",
        )
        return study.ask().suggest_float("x", 0.0, 1.0)

    same = first_proposal(1)
    if make is optuna.samplers.QMCSampler:  # one shared scrambled sequence, by design
        return
    assert first_proposal(1) == same
    assert first_proposal(1) != first_proposal(2)


def test_every_database_call_of_optunas_cache_rides_out_an_outage() -> None:
    """Optuna's trial cache calls some of the backend's private methods (``_create_new_trial``,
    ``_set_trial_param``, ...): each must go through the outage retry, or a database restart
    during a trial's suggest fails the trial as if the objective had."""
    import inspect
    import re

    from optuna.storages import _cached_storage

    from hpsearch.storage._resilient import ResilientRDBStorage

    source = inspect.getsource(_cached_storage)
    called = set(re.findall(r"self\._backend\.(\w+)\(", source))
    assert called, _explain("_CachedStorage._backend", "the outage retry")
    # Made once by `hpsearch create` (a clear failure there beats a retry), or no database call.
    not_retried = {"create_new_study", "delete_study", "get_heartbeat_interval"}
    unretried = {
        name
        for name in called - not_retried
        if getattr(ResilientRDBStorage, name) is getattr(optuna.storages.RDBStorage, name)
    }
    assert not unretried, (
        f"Optuna {VERSION}'s trial cache calls {sorted(unretried)} on its backend: add them to "
        "_RETRIED in storage/_resilient.py."
    )
