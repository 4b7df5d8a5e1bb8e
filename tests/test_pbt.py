"""Population-based training: ``[scheduler] name = "pbt"``.

The ranking and the exploration (fast); the study file's checks (fast); real workers on every
backend train a population of the learning-curve simulator in intervals: every member ends with
one COMPLETE trial trained to max_epochs, the bottom of each interval takes a top member's
checkpoint with explored options, the lineage is on the trials, and ``export`` -> ``train``
replays the best member's schedule to the same value. Workers killed (kill -9) as a member
pauses and after an exploit lose and duplicate nothing; a sharded (folder) checkpoint is copied
whole by an exploit.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import (
    EXPLOIT_FROM,
    EXPLOIT_STEP,
    EXPLOITED,
    PARAM_SCHEDULE,
    PAUSED,
    PROMOTED_FROM,
    RESUMED_FROM_EPOCH,
    RETRY_OF,
    SLOT,
)
from hpsearch.errors import SpecError
from hpsearch.search import budget_state, create_study, load_spec_file
from hpsearch.search._study import UID_ATTR, load_study
from hpsearch.search.runtime import _pbt
from hpsearch.search.runtime._checkpoints import (
    CheckpointSync,
    checkpoint_path,
    copy_checkpoint,
    exploit_copy,
    take_copy,
)
from hpsearch.search.runtime._pbt import (
    continue_members,
    explore,
    quantiles,
    take_exploited_weights,
)
from hpsearch.search.spec._scheduler import PbtSchedule

from ._support import study_toml
from .conftest import ROOT, hpsearch_command

CURVES = "hpsearch.objectives.curves:learning_curve"
SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "width": {"type": "int", "low": 8, "high": 1024, "log": True},
    "l2": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
}
POPULATION, INTERVAL, MAX_EPOCHS = 6, 3, 12
PBT = {
    "name": "pbt",
    "population": POPULATION,
    "interval_epochs": INTERVAL,
    "max_epochs": MAX_EPOCHS,
}


def _schedule(**overrides: Any) -> PbtSchedule:
    data = {
        **PBT,
        "quantile": 0.25,
        "explore": ["lr", "l2"],
        "perturb_factors": [0.8, 1.2],
        "resample_probability": 0.25,
        **overrides,
    }
    return PbtSchedule.from_data(data)


# --- ranking and exploring ---------------------------------------------------------------------


def test_the_bottom_and_top_are_ceil_n_times_quantile_at_most_half() -> None:
    values = {slot: float(slot) for slot in range(8)}  # slot 0 is the best when minimizing
    assert quantiles(values, 0.25, maximize=False) == ([7, 6], [1, 0])
    assert quantiles(values, 0.25, maximize=True) == ([0, 1], [6, 7])
    assert quantiles({0: 1.0, 1: 2.0, 2: 3.0}, 0.5, maximize=False) == ([2], [0])
    assert quantiles({0: 1.0}, 0.5, maximize=False) == ([], [])
    # A diverged member ranks last whatever the direction.
    assert quantiles({0: 1.0, 1: float("nan"), 2: 3.0}, 0.3, maximize=False)[0] == [1]
    assert quantiles({0: 1.0, 1: float("nan"), 2: 3.0}, 0.3, maximize=True)[0] == [1]


def test_explore_multiplies_or_resamples_within_bounds() -> None:
    distributions = {
        "lr": FloatDistribution(1e-4, 1.0, log=True),
        "l2": FloatDistribution(0.0, 0.1),
        "width": IntDistribution(8, 1024, log=True),
    }
    params = {"lr": 0.01, "l2": 0.1, "width": 64}
    never = _schedule(resample_probability=0.0, perturb_factors=[2.0])
    out, changed = explore(params, distributions, never, random.Random(0))
    assert out["lr"] == pytest.approx(0.02)
    assert out["l2"] == 0.1  # 0.2 clipped to its high bound: unchanged, not listed
    assert out["width"] == 64  # not explored
    assert changed == {"lr": (0.01, pytest.approx(0.02))}
    always = _schedule(resample_probability=1.0)
    for seed in range(20):
        out, _ = explore(params, distributions, always, random.Random(seed))
        assert 1e-4 <= out["lr"] <= 1.0 and 0.0 <= out["l2"] <= 0.1
    # Reproducible: the same random stream, the same exploration.
    assert explore(params, distributions, always, random.Random(3)) == explore(
        params, distributions, always, random.Random(3)
    )


# --- the study file ----------------------------------------------------------------------------


def _spec_text(scheduler: dict[str, Any], n_trials: int | None = None) -> str:
    """A PBT study file; without ``n_trials``, its [budget] leaves it to the population."""
    text = study_toml(
        name="pbt",
        objective=CURVES,
        n_trials=n_trials or 1,
        metric="val_loss",
        pruner=None,
        space=SPACE,
        scheduler=scheduler,
    )
    return text if n_trials else text.replace("n_trials = 1\n", "")


def _load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return load_spec_file(str(path))


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        ({**PBT, "explore": ["width"]}, "explore names 'width', which a live trial cannot change"),
        ({**PBT, "explore": ["momentum"]}, "explore names 'momentum', which is not searched"),
        (
            {**PBT, "explore": ["lrr"]},
            "explore names 'lrr', which is neither searched nor an option pbt can change; "
            "it explores only options it can change in a live trial: lr, momentum, l1, l2. "
            "Did you mean 'lr'?",
        ),
        ({**PBT, "explore": "lr"}, "explore must be a non-empty list"),
        ({**PBT, "population": 1}, "population must be >= 2"),
        ({**PBT, "interval_epochs": 12}, "interval_epochs (12) must be smaller than max_epochs"),
        ({**PBT, "quantile": 0.7}, "quantile must be a number from above 0 to 0.5"),
        ({**PBT, "quantile": "x"}, "quantile must be a number"),
        ({**PBT, "perturb_factors": [0.8, -1]}, "perturb_factors must be a non-empty list"),
        ({**PBT, "resample_probability": 2}, "resample_probability must be a number from 0 to 1"),
        ({**PBT, "populaton": 4}, "unknown key 'populaton'. Did you mean 'population'?"),
        ({"name": "pbt", "population": 4}, "interval_epochs is required for 'pbt'"),
        ({**PBT, "min_epochs": 1}, "Allowed for 'pbt': name, population, interval_epochs"),
    ],
)
def test_a_bad_pbt_schedule_is_refused_in_one_line(
    tmp_path: Path, scheduler: dict[str, Any], expected: str
) -> None:
    with pytest.raises(SpecError) as raised:
        _load(tmp_path, _spec_text(scheduler))
    message = str(raised.value)
    assert "\n" not in message and "[scheduler]" in message
    assert expected in message


def test_the_population_is_the_budget(tmp_path: Path) -> None:
    spec = _load(tmp_path, _spec_text(PBT))
    assert spec.n_trials == POPULATION
    assert spec.scheduler.explore == ("lr", "l2")  # every live option searched, by default
    assert spec.training["epochs"] == MAX_EPOCHS
    with pytest.raises(SpecError, match="n_trials = 9 differs from \\[scheduler\\] population"):
        _load(tmp_path, _spec_text(PBT, n_trials=9))


def test_a_space_without_a_live_option_is_refused_with_what_pbt_explores(tmp_path: Path) -> None:
    text = study_toml(
        name="pbt",
        objective=CURVES,
        n_trials=POPULATION,
        metric="val_loss",
        pruner=None,
        space={"width": SPACE["width"]},
        scheduler=PBT,
    )
    with pytest.raises(SpecError, match="search at least one of them in \\[space\\]") as raised:
        _load(tmp_path, text)
    assert "lr, momentum, l1, l2" in str(raised.value)


def test_create_refuses_exploring_a_width_in_one_line_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text(_spec_text({**PBT, "explore": ["lr", "width"]}))
    url = f"sqlite:///{tmp_path / 'refused.db'}"
    result = subprocess.run(
        [*hpsearch_command(), "create", str(path), "--storage", url],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "'width'" in line and "pbt explores only options it can change" in line
    assert not (tmp_path / "refused.db").exists()


# --- real workers --------------------------------------------------------------------------------

# The simulator, watched: files in the worker's directory arm one kill each.
WATCHED = f"""
import os
import signal

from hpsearch.objectives.curves import learning_curve, OWN_OPTIONS
from hpsearch.objectives._options import uses_engine


def armed(name):
    if os.path.exists(name):
        os.remove(name)  # one kill per file
        return True
    return False


class Watched:
    def __init__(self, trial):
        self.trial = trial

    def __getattr__(self, name):
        return getattr(self.trial, name)

    def report(self, value, step):
        # A member that took another's weights, trained one more epoch, checkpoint written.
        if {EXPLOITED!r} in self.trial.user_attrs and step % {INTERVAL} == 1 and armed(
            "kill-exploited"
        ):
            os.kill(os.getpid(), signal.SIGKILL)
        self.trial.report(value, step)

    def should_prune(self):
        decided = self.trial.should_prune()
        if decided and armed("kill-pausing"):  # paused at the interval's end, not yet ended
            os.kill(os.getpid(), signal.SIGKILL)
        return decided


@uses_engine(options=OWN_OPTIONS)
def objective(trial, params):
    return learning_curve(Watched(trial), params)
"""


def _write(folder: Path, name: str, *, objective: str = CURVES, **sections: Any) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(
        study_toml(
            name=name,
            objective=objective,
            n_trials=POPULATION,
            metric="val_loss",
            sampler={"name": "random", "seed": 3},
            pruner=None,
            space=SPACE,
            scheduler=sections.pop("scheduler", PBT),
            training=sections.pop("training", {"seed": 0}),
            resources={
                "heartbeat_interval": 1,
                "grace_period": 3,
                "artifacts": str(folder / "artifacts"),
                **sections.pop("resources", {}),
            },
        )
    )
    return path


def _run(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*hpsearch_command(), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )
    if ok:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _trials(url: str, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def assert_population_done(trials: list[FrozenTrial]) -> None:
    """Every member ends once, trained to max_epochs; each interval's end paused every member
    once (a retry's copy of a pause is not a pause); nothing is left to run or failed."""
    state = budget_state(trials, POPULATION)
    assert (state.used, state.running, state.waiting, state.failed) == (POPULATION, 0, 0, 0)
    complete: dict[int, list[FrozenTrial]] = {}
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            complete.setdefault(int(trial.system_attrs[SLOT]), []).append(trial)
    assert sorted(complete) == list(range(POPULATION)), sorted(complete)
    for slot, finals in complete.items():
        assert len(finals) == 1, (slot, [t.number for t in finals])
        assert sorted(finals[0].intermediate_values) == list(range(MAX_EPOCHS)), slot
    pauses = sorted(
        (int(t.system_attrs[SLOT]), t.system_attrs[PAUSED][1])
        for t in trials
        if t.state == TrialState.PRUNED and t.system_attrs.get(PAUSED, [None])[0] == t.number
    )
    ends = [step for step in range(MAX_EPOCHS - 1) if (step + 1) % INTERVAL == 0]
    assert pauses == sorted((slot, step) for slot in range(POPULATION) for step in ends)
    first = [
        t.system_attrs[PROMOTED_FROM]
        for t in trials
        if PROMOTED_FROM in t.system_attrs and RETRY_OF not in t.system_attrs
    ]
    assert len(first) == len(set(first)), "a member was continued twice after one pause"


def assert_exploits_copy_the_donor(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The continuations that took another member's weights: each resumed at the interval's
    end from the donor's curve, with the donor's schedule and its own explored options after."""
    by_number = {t.number: t for t in trials}
    exploits = [
        t
        for t in trials
        if EXPLOIT_FROM in t.system_attrs
        and RETRY_OF not in t.system_attrs
        and t.state != TrialState.WAITING
    ]
    assert exploits, "no member took another's weights"
    for trial in exploits:
        record = trial.user_attrs[EXPLOITED]
        epoch, donor = record["at_epoch"], record["from_slot"]
        assert donor == trial.system_attrs[EXPLOIT_FROM] != trial.system_attrs[SLOT]
        assert trial.user_attrs[RESUMED_FROM_EPOCH] == epoch
        # The donor's pause at that epoch: its reports are the start of this curve.
        (donor_pause,) = [
            t
            for t in by_number.values()
            if t.system_attrs.get(SLOT) == donor
            and t.state == TrialState.PRUNED
            and t.system_attrs.get(PAUSED, [None, None]) == [t.number, epoch - 1]
        ]
        for step in range(epoch):
            assert trial.intermediate_values[step] == donor_pause.intermediate_values[step]
        schedule = trial.user_attrs[PARAM_SCHEDULE]
        # The checkpoint it resumed is the donor's: the schedule behind its weights too.
        assert schedule[:-1] == donor_pause.user_attrs[PARAM_SCHEDULE]
        assert schedule[-1][0] == epoch
        explored = {name: trial.params[name] for name in ("lr", "l2")}
        assert schedule[-1][1] == explored
        assert trial.params["width"] == donor_pause.params["width"]  # not explored: the donor's
    return exploits


@pytest.mark.slow
def test_a_population_trains_in_intervals_and_exploits_on_every_backend(
    storage_url: str, tmp_path: Path, study_name: str
) -> None:
    path = _write(tmp_path, study_name)
    _run("run", str(path), "--storage", storage_url, "--workers", "2", cwd=tmp_path)
    trials = _trials(storage_url, study_name)
    assert_population_done(trials)
    assert_exploits_copy_the_donor(trials)
    if not storage_url.startswith("sqlite"):
        return
    # The best member's schedule replayed from scratch by `hpsearch train`: the same value.
    best = optuna.load_study(study_name=study_name, storage=storage_url).best_trial
    assert len(best.user_attrs[PARAM_SCHEDULE]) >= 1
    _run("export", "--study", study_name, "--storage", storage_url, "-o", "best.yaml", cwd=tmp_path)
    assert "schedule:" in (tmp_path / "best.yaml").read_text()
    result = _run("train", "best.yaml", "--output", "model", cwd=tmp_path)
    assert f"(trial {best.number}: {best.value!r}, equal)" in result.stdout + result.stderr


def test_a_worker_deciding_late_never_copies_weights_the_donor_trained_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers decide an interval at once. The one that read the queue before the other
    enqueued copies last, when a donor's continuation may have trained on: that copy must not
    land, or a member resumes from weights its curve never reported (the lost epochs)."""
    # Every member paused at the first interval's end; slot 0 is the best (minimize).
    loaded = _population_at_interval_end(tmp_path, "late")
    study, spec, uid = loaded.study, loaded.spec, str(loaded.study.user_attrs[UID_ATTR])

    def train(slots: Iterable[int], epochs: int) -> None:
        for slot in slots:
            path = Path(checkpoint_path(spec, slot, uid))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"slot {slot} after {epochs} epochs")

    def exploiting() -> set[int]:
        return {t.system_attrs[SLOT] for t in study.get_trials() if EXPLOIT_FROM in t.system_attrs}

    train(range(POPULATION), INTERVAL)
    checked_late: list[int] = []
    enqueued = _pbt._enqueued

    def read_before_the_other_worker_enqueued(study: optuna.Study, member: int, at: int) -> bool:
        if checked_late:
            return enqueued(study, member, at)
        checked_late.append(member)
        # Meanwhile the other worker decides and enqueues, and the members that kept their
        # own weights (the donors among them) train on.
        assert continue_members(study, loaded.storage, spec, uid, last=False)
        train(set(range(POPULATION)) - exploiting(), INTERVAL + 1)
        return False

    monkeypatch.setattr(_pbt, "_enqueued", read_before_the_other_worker_enqueued)
    assert not continue_members(study, loaded.storage, spec, uid, last=False)
    exploits = [t for t in study.get_trials() if EXPLOIT_FROM in t.system_attrs]
    assert checked_late and checked_late[0] in exploiting()
    for trial in exploits:
        donor = trial.system_attrs[EXPLOIT_FROM]
        # Not the late worker's copy of the donor trained on: the decided version.
        assert _taken(loaded, trial) == f"slot {donor} after {INTERVAL} epochs", trial.number


def _taken(loaded: Any, continuation: FrozenTrial) -> str:
    """The member's checkpoint once its continuation, claimed, took what was copied for it."""
    uid = str(loaded.study.user_attrs[UID_ATTR])
    sync = CheckpointSync(None, "", "")  # artifacts in a folder
    take_exploited_weights(loaded.study, loaded.spec, uid, continuation, sync)
    return Path(checkpoint_path(loaded.spec, continuation.system_attrs[SLOT], uid)).read_text()


def _population_at_interval_end(tmp_path: Path, name: str, *, running: int | None = None) -> Any:
    """A study whose members reported the first interval's end (slot ``s`` scoring ``s``: slot 0
    is the best, minimized), each with its own ``lr`` and checkpoint; all paused but
    ``running``, which has reported and not paused yet."""
    url = f"sqlite:///{tmp_path / 'hpsearch.db'}"
    create_study(load_spec_file(str(_write(tmp_path, name))), url)
    loaded = load_study(name, url)
    storage, step = loaded.study._storage, INTERVAL - 1
    lr = FloatDistribution(1e-4, 1.0, log=True)
    for trial in loaded.study.get_trials(states=(TrialState.WAITING,)):
        slot = int(trial.system_attrs[SLOT])
        storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING)
        storage.set_trial_param(trial._trial_id, "lr", 0.001 * (slot + 1), lr)
        storage.set_trial_intermediate_value(trial._trial_id, step, float(slot))
        path = Path(checkpoint_path(loaded.spec, slot, str(loaded.study.user_attrs[UID_ATTR])))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"slot {slot}")
        if slot != running:
            storage.set_trial_system_attr(trial._trial_id, PAUSED, [trial.number, step])
            storage.set_trial_state_values(trial._trial_id, TrialState.PRUNED)
    return loaded


def _continuations(study: optuna.Study) -> dict[int, FrozenTrial]:
    return {
        int(t.system_attrs[SLOT]): t for t in study.get_trials() if PROMOTED_FROM in t.system_attrs
    }


def test_no_member_is_decided_while_one_that_reported_the_interval_has_not_paused(
    tmp_path: Path,
) -> None:
    """A member between its report and its pause (a loaded machine, a slow end) holds the
    decision back: decided without it, its donor would be queued on, and the member, paused
    later, could no longer take the weights it was ranked against (CI saw it start over)."""
    worst = POPULATION - 1
    loaded = _population_at_interval_end(tmp_path, "waits", running=worst)
    study, spec, uid = loaded.study, loaded.spec, str(loaded.study.user_attrs[UID_ATTR])
    assert not continue_members(study, loaded.storage, spec, uid, last=False)
    assert not _continuations(study)
    assert Path(checkpoint_path(spec, worst, uid)).read_text() == f"slot {worst}"
    (running,) = study.get_trials(states=(TrialState.RUNNING,))
    storage = study._storage
    storage.set_trial_system_attr(running._trial_id, PAUSED, [running.number, INTERVAL - 1])
    storage.set_trial_state_values(running._trial_id, TrialState.PRUNED)
    assert continue_members(study, loaded.storage, spec, uid, last=False)
    continuations = _continuations(study)
    assert sorted(continuations) == list(range(POPULATION))
    donor = continuations[worst].system_attrs[EXPLOIT_FROM]
    assert _taken(loaded, continuations[worst]) == f"slot {donor}"


def test_a_member_paused_after_its_donor_went_on_keeps_its_own_weights_and_options(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The population was decided without a member (its worker died after the report; its
    retry pauses later): no copy of the donor as it was can be made any more, so the member
    goes on as it was, never with the donor's options over its own weights."""
    worst = POPULATION - 1
    loaded = _population_at_interval_end(tmp_path, "late", running=worst)
    study, spec, uid = loaded.study, loaded.spec, str(loaded.study.user_attrs[UID_ATTR])
    storage = study._storage
    (dead,) = study.get_trials(states=(TrialState.RUNNING,))
    storage.set_trial_state_values(dead._trial_id, TrialState.FAIL)
    assert continue_members(study, loaded.storage, spec, uid, last=False)
    assert sorted(_continuations(study)) == [s for s in range(POPULATION) if s != worst]
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=dead.params,
            distributions=dead.distributions,
            intermediate_values=dead.intermediate_values,
            system_attrs={SLOT: worst, RETRY_OF: dead.number},
        )
    )
    (retry,) = [t for t in study.get_trials() if RETRY_OF in t.system_attrs]
    storage.set_trial_state_values(retry._trial_id, TrialState.RUNNING)
    storage.set_trial_system_attr(retry._trial_id, PAUSED, [retry.number, INTERVAL - 1])
    storage.set_trial_state_values(retry._trial_id, TrialState.PRUNED)
    with caplog.at_level("WARNING", logger="hpsearch.worker"):
        assert continue_members(study, loaded.storage, spec, uid, last=False)
    continuation = _continuations(study)[worst]
    assert continuation.system_attrs[PROMOTED_FROM] == retry.number
    assert EXPLOIT_FROM not in continuation.system_attrs
    assert continuation.params == dead.params
    assert Path(checkpoint_path(spec, worst, uid)).read_text() == f"slot {worst}"
    assert "goes on from its own weights and options" in caplog.text


def test_a_copy_that_lands_after_its_member_trained_on_is_never_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker found its copy still current, then stalled before the copy landed (a long
    upload, a paused machine). Meanwhile another worker decided, each member took that one's
    copy and trained its next interval. The late copy must not replace what a member trained:
    its next interval would resume from the donor's old weights under a curve that went on."""
    loaded = _population_at_interval_end(tmp_path, "stalled")
    study, spec, uid = loaded.study, loaded.spec, str(loaded.study.user_attrs[UID_ATTR])
    stalled: list[bool] = []
    copy = _pbt.copy_checkpoint

    def train_on() -> None:
        for continuation in _continuations(study).values():
            _taken(loaded, continuation)
            slot = continuation.system_attrs[SLOT]
            Path(checkpoint_path(spec, slot, uid)).write_text(f"slot {slot} trained on")

    def stalling_copy(*args: Any, still_current: Any, **kwargs: Any) -> Any:
        def current_then_stall() -> bool:
            answer = bool(still_current())
            if answer and not stalled:
                stalled.append(True)
                assert continue_members(study, loaded.storage, spec, uid, last=False)
                train_on()
            return answer

        return copy(*args, still_current=current_then_stall, **kwargs)

    monkeypatch.setattr(_pbt, "copy_checkpoint", stalling_copy)
    assert not continue_members(study, loaded.storage, spec, uid, last=False)
    assert stalled
    for slot, continuation in _continuations(study).items():
        # What the member trained, also for a retry of its continuation (it takes nothing).
        assert _taken(loaded, continuation) == f"slot {slot} trained on"
    assert len(_continuations(study)) == POPULATION


def test_a_copy_that_landed_late_is_removed_when_its_member_next_resumes(tmp_path: Path) -> None:
    """Copies that land after their member took its own (a copier that stalled past its "still
    current" check; another decision's) are never read, and the member's next continuation
    removes them: before, they stayed in the slot's folder for the member's whole run. A copy
    of a later decision, and the member's checkpoint, stay."""
    loaded = _population_at_interval_end(tmp_path, "late-copies")
    study, spec, uid = loaded.study, loaded.spec, str(loaded.study.user_attrs[UID_ATTR])
    step = INTERVAL - 1
    assert continue_members(study, loaded.storage, spec, uid, last=False)
    exploiting = {
        slot: t for slot, t in _continuations(study).items() if EXPLOIT_FROM in t.system_attrs
    }
    assert exploiting
    member, continuation = next(iter(exploiting.items()))
    donor = continuation.system_attrs[EXPLOIT_FROM]
    assert _taken(loaded, continuation) == f"slot {donor}"
    folder = Path(checkpoint_path(spec, member, uid)).parent
    late = [exploit_copy(step, donor), exploit_copy(step, (donor + 1) % POPULATION)]
    for copy in late:  # landing now, after the take
        made = copy_checkpoint(spec, uid, donor, member, copy=copy, still_current=lambda: True)
        assert made == "copied"
    next_step = step + INTERVAL
    later = folder / exploit_copy(next_step + INTERVAL, donor)
    later.mkdir()
    assert {p.name for p in folder.iterdir()} >= set(late)
    Path(checkpoint_path(spec, member, uid)).write_text(f"slot {member} trained on")
    # The member's next interval: a continuation that keeps its own weights.
    own = optuna.trial.create_trial(
        state=TrialState.WAITING,
        system_attrs={SLOT: member, PROMOTED_FROM: continuation.number, EXPLOIT_STEP: next_step},
    )
    sync = CheckpointSync(None, "", "")
    assert not take_exploited_weights(study, spec, uid, own, sync)
    assert sorted(p.name for p in folder.iterdir()) == sorted(["checkpoint.pt", later.name])
    assert Path(checkpoint_path(spec, member, uid)).read_text() == f"slot {member} trained on"


@pytest.mark.parametrize("sharded", [False, True])
def test_an_exploit_copy_becomes_the_members_checkpoint_only_when_taken(
    tmp_path: Path, sharded: bool
) -> None:
    """The copy lies under its decision's name in the member's folder: one found stale is not
    written; one made, by one worker or two, replaces the member's checkpoint (a file, or a
    folder of shards, whole) once the member's continuation takes it, and only then."""
    spec = load_spec_file(str(_write(tmp_path, "copy")))
    donor, member = Path(checkpoint_path(spec, 0, "u")), Path(checkpoint_path(spec, 1, "u"))
    for path, text in ((donor, "donor"), (member, "member")):
        path.parent.mkdir(parents=True)
        if sharded:  # a folder of shards, as a sharded trial writes
            (path / "shards").mkdir(parents=True)
            (path / "shards" / "0.distcp").write_text(text)
        else:
            path.write_text(text)

    def content(path: Path) -> str:
        return (path / "shards" / "0.distcp" if sharded else path).read_text()

    asked: list[bool] = []

    def stale() -> bool:
        asked.append(True)
        return False

    copy, sync = exploit_copy(2, 0), CheckpointSync(None, "", "")
    assert copy_checkpoint(spec, "u", 0, 1, copy=copy, still_current=stale) == "stale"
    assert asked and content(member) == "member"
    assert not take_copy(spec, "u", 1, copy, sync)
    assert sorted(p.name for p in member.parent.iterdir()) == [member.name]  # no leftovers
    for _ in range(2):  # two workers that decided alike
        assert copy_checkpoint(spec, "u", 0, 1, copy=copy, still_current=lambda: True) == "copied"
    assert content(member) == "member"
    assert take_copy(spec, "u", 1, copy, sync)
    assert content(member) == "donor"
    assert sorted(p.name for p in member.parent.iterdir()) == [member.name]
    assert not take_copy(spec, "u", 1, copy, sync)  # taken again after a kill: the slot keeps it
    assert content(member) == "donor"
    missing = copy_checkpoint(spec, "u", 2, 1, copy=exploit_copy(2, 2), still_current=lambda: True)
    assert missing == "missing"


@pytest.mark.slow
def test_kill_9_as_a_member_pauses_and_after_an_exploit_loses_and_duplicates_nothing(
    tmp_path: Path, study_name: str
) -> None:
    (tmp_path / "watched.py").write_text(WATCHED)
    path = _write(tmp_path, study_name, objective=f"{tmp_path / 'watched.py'}:objective")
    url = f"sqlite:///{tmp_path / 'pbt.db'}"
    _run("create", str(path), "--storage", url, cwd=tmp_path)
    (tmp_path / "kill-pausing").touch()
    (tmp_path / "kill-exploited").touch()
    for _ in range(6):  # each run ends in a kill, or in the end of the study
        worker = _run(
            "worker",
            "--study",
            study_name,
            "--storage",
            url,
            "--workers",
            "1",
            cwd=tmp_path,
            ok=False,
        )
        if worker.returncode == 0 and not list(tmp_path.glob("kill-*")):
            break
    assert not list(tmp_path.glob("kill-*")), "a kill was never armed"
    trials = _trials(url, study_name)
    assert_population_done(trials)
    exploits = assert_exploits_copy_the_donor(trials)
    retried = [t for t in trials if RETRY_OF in t.system_attrs]
    assert len(retried) == 2, [t.number for t in retried]
    # The retry of the killed continuation resumed its own training, not another copy.
    killed = [t for t in retried if EXPLOIT_FROM in t.system_attrs]
    assert killed and killed[0].user_attrs[RESUMED_FROM_EPOCH] % INTERVAL == 2
    assert exploits


@pytest.mark.slow
def test_an_exploit_copies_a_sharded_checkpoint_folder_whole(
    tmp_path: Path, study_name: str
) -> None:
    """The engine's sharded checkpoint (a folder: strategy fsdp, written on one device too)."""
    example = ROOT / "examples" / "regression" / "regression.py"
    path = tmp_path / "study.toml"
    path.write_text(
        study_toml(
            name=study_name,
            objective=f"{example}:objective",
            n_trials=4,
            metric="mse",
            sampler={"name": "random", "seed": 1},
            pruner=None,
            space={"lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}},
            scheduler={"name": "pbt", "population": 4, "interval_epochs": 1, "max_epochs": 3},
            training={
                "batch_size": 128,
                "width": 16,
                "depth": 2,
                "device": "cpu",
                "strategy": "fsdp",
                "schedule": "cosine",
            },
            resources={"artifacts": str(tmp_path / "artifacts"), "keep_checkpoints": "all"},
        )
    )
    url = f"sqlite:///{tmp_path / 'pbt.db'}"
    _run("run", str(path), "--storage", url, "--workers", "1", cwd=tmp_path)
    trials = _trials(url, study_name)
    exploits = [t for t in trials if EXPLOIT_FROM in t.system_attrs]
    assert exploits
    for trial in exploits:
        assert trial.user_attrs[RESUMED_FROM_EPOCH] == trial.user_attrs[EXPLOITED]["at_epoch"]
        assert os.path.isdir(trial.user_attrs["checkpoint"])  # a folder of shards, resumed
        assert trial.user_attrs[PARAM_SCHEDULE][-1][1]["lr"] == pytest.approx(trial.params["lr"])
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    assert all(sorted(t.intermediate_values) == [0, 1, 2] for t in complete)
    # The best member's schedule replayed by the engine from scratch: the member's value (its
    # intervals ran in other processes, with their own thread counts: equal to rounding).
    best = optuna.load_study(study_name=study_name, storage=url).best_trial
    assert len(best.user_attrs[PARAM_SCHEDULE]) >= 2 or EXPLOITED not in best.user_attrs
    _run("export", "--study", study_name, "--storage", url, "-o", "best.yaml", cwd=tmp_path)
    result = _run("train", "best.yaml", "--output", "model", cwd=tmp_path)
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("mse ")]
    assert float(line.split()[1]) == pytest.approx(best.value, rel=1e-4)
