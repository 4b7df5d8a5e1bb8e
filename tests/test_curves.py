"""The learning-curve simulator (hpsearch/objectives/curves.py) and its bench section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpsearch import attrs
from hpsearch.objectives.context import TrialContext, trial_context
from hpsearch.objectives.curves import DEFAULTS, clean_loss, curve_options, learning_curve
from tests._support import RecordingTrial, study_toml
from tests.conftest import ROOT, hpsearch_command

OBJECTIVE = "hpsearch.objectives.curves:learning_curve"
FAST = {"lr": 0.2, "width": 16}  # a narrow model, a high lr: fast start, high plateau
SLOW = {"lr": 0.01, "width": 512, "l2": 0.01}  # wide, a lower lr, some l2: slow start, ends lower


def _run(params: dict[str, object], trial: RecordingTrial, checkpoint: Path | None) -> object:
    context = TrialContext(checkpoint=None if checkpoint is None else str(checkpoint))
    with trial_context(context):
        return learning_curve(trial, dict(params))


def test_curves_cross_fast_starters_plateau_above_slow_ones() -> None:
    fast, slow = curve_options({**FAST, "epochs": 27}), curve_options({**SLOW, "epochs": 27})
    assert clean_loss(fast, 2) < clean_loss(slow, 2) - 0.1  # better early
    assert clean_loss(fast, 26) > clean_loss(slow, 26) + 0.1  # worse late
    # The reported (noisy) curves cross too, as a pruner sees them.
    early, late = RecordingTrial(), RecordingTrial()
    _run({**FAST, "epochs": 27}, early, None)
    _run({**SLOW, "epochs": 27}, late, None)
    assert early.values[2] < late.values[2] and early.values[-1] > late.values[-1]


def test_each_option_changes_the_curve() -> None:
    base = curve_options({"epochs": 27})
    for name, value in {"lr": 0.3, "width": 512, "warmup_epochs": 5.0, "l2": 0.05}.items():
        changed = curve_options({name: value})
        assert any(clean_loss(changed, e) != clean_loss(base, e) for e in range(27)), name


def test_a_resumed_run_continues_the_identical_curve(tmp_path: Path) -> None:
    params = {**SLOW, "epochs": 12, "seed": 3}
    whole = RecordingTrial()
    assert _run(params, whole, tmp_path / "whole.json") == whole.values[-1]
    assert attrs.RESUMED_FROM_EPOCH not in whole.user_attrs

    checkpoint = tmp_path / "slot-0.json"
    stopped = RecordingTrial(stop_after=5)  # stopped after epoch 5's checkpoint and report
    with pytest.raises(KeyboardInterrupt):
        _run(params, stopped, checkpoint)
    assert json.loads(checkpoint.read_text())["epoch"] == 5  # saved before the report
    resumed = RecordingTrial()
    value = _run(params, resumed, checkpoint)
    assert resumed.user_attrs[attrs.RESUMED_FROM_EPOCH] == 5
    assert [step for step, _ in resumed.reports] == list(range(5, 12))
    assert stopped.values + resumed.values == whole.values  # the same noise, epoch by epoch
    assert value == whole.values[-1]

    # Trained longer (a promoted configuration), the checkpoint still resumes: the curve is the
    # configuration's, not the trial length's.
    longer = RecordingTrial()
    _run({**params, "epochs": 15}, longer, checkpoint)
    assert longer.user_attrs[attrs.RESUMED_FROM_EPOCH] == 12
    assert [step for step, _ in longer.reports] == [12, 13, 14]


def test_a_checkpoint_of_another_configuration_starts_over(tmp_path: Path) -> None:
    checkpoint = tmp_path / "slot-0.json"
    _run({**FAST, "epochs": 4}, RecordingTrial(), checkpoint)
    other = RecordingTrial()
    _run({**SLOW, "epochs": 4}, other, checkpoint)
    assert attrs.RESUMED_FROM_EPOCH not in other.user_attrs
    assert [step for step, _ in other.reports] == [0, 1, 2, 3]


def test_pruned_when_the_pruner_says_so(tmp_path: Path) -> None:
    trial = RecordingTrial(prune_at=3)
    with pytest.raises(optuna.TrialPruned):
        _run({**FAST, "epochs": 10}, trial, tmp_path / "c.json")
    assert len(trial.values) == 4


def test_options_it_does_not_read_or_out_of_range_are_refused_in_a_trial() -> None:
    with pytest.raises(ValueError, match="does not read 'batch_size'"):
        curve_options({"batch_size": 32})
    with pytest.raises(ValueError, match="width = 0 must be > 0"):
        curve_options({"width": 0})
    assert set(curve_options({})) == set(DEFAULTS)


def _create(tmp_path: Path, training: dict[str, object]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "curves.toml"
    path.write_text(
        study_toml(
            name="curves-typo",
            objective=OBJECTIVE,
            n_trials=2,
            metric="val_loss",
            training=training,
            space={"lr": {"type": "float", "low": 1e-3, "high": 0.3, "log": True}},
        )
    )
    url = f"sqlite:///{tmp_path}/typo.db"
    return subprocess.run(
        [*hpsearch_command(), "create", str(path), "--storage", url],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("training", "named", "meant"),
    [({"widht": 64}, "widht", "width"), ({"epoch": 10}, "epoch", "epochs")],
)
def test_option_typos_are_refused_at_create(
    tmp_path: Path, training: dict[str, object], named: str, meant: str
) -> None:
    result = _create(tmp_path, training)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert repr(named) in lines[0] and repr(meant) in lines[0]
    assert not (tmp_path / "typo.db").exists()  # nothing created


def test_the_simulator_imports_no_torch() -> None:
    code = (
        "import sys; import hpsearch.objectives.curves; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.slow
def test_trials_through_the_worker_report_the_simulated_curve(tmp_path: Path) -> None:
    """The real path: a study file, `hpsearch run`, a worker, per-epoch checkpoints."""
    path = tmp_path / "curves.toml"
    path.write_text(
        study_toml(
            name="curves-e2e",
            objective=OBJECTIVE,
            n_trials=3,
            metric="val_loss",
            sampler={"name": "random", "seed": 1},
            training={"epochs": 5, "seed": 2},
            space={"lr": {"type": "float", "low": 1e-3, "high": 0.3, "log": True}},
        )
    )
    url = f"sqlite:///{tmp_path}/e2e.db"
    subprocess.run(
        [*hpsearch_command(), "-q", "run", str(path), "--storage", url],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    trials = optuna.load_study(study_name="curves-e2e", storage=url).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial in trials:
        expected = RecordingTrial()
        _run({"epochs": 5, "seed": 2, **trial.params}, expected, None)
        assert [trial.intermediate_values[e] for e in range(5)] == expected.values
        assert trial.value == expected.values[-1]
        assert trial.user_attrs[attrs.CHECKPOINT]


@pytest.mark.slow
def test_the_schedules_bench_section_runs_in_quick_mode(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--sections",
            "schedules",
            "--output-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads((tmp_path / "quick.json").read_text())["schedules"]
    [curves] = figures["tasks"]
    assert curves["task"] == "curves"
    methods = [row["method"] for row in curves["table"]]
    assert methods == [
        "random, no pruning",
        "tpe + median (default)",
        "tpe + hyperband",
        "tpe + asha (pausing)",
        "pbt",
    ]
    default = curves["table"][1]
    assert default["vs_default"] == 1.0
    # Every method had the same epochs: PBT its population's, the others the budget's.
    budget = curves["budget_epochs"]
    for row in curves["table"]:
        assert row["median_epochs_spent"] <= budget
    assert curves["table"][4]["median_epochs_spent"] == curves["pbt_population"] * 27
    assert "Schedules at equal compute" in result.stdout


def test_a_run_of_some_sections_replaces_theirs_in_the_last_full_runs_figures(
    tmp_path: Path,
) -> None:
    from bench.suite import SECTIONS, markdown, merge_sections

    last = {name: {"old": name} for name in SECTIONS}
    last["meta"] = {"date": "2026-12-01T00:00:00+00:00", "machine": "m", "full": True}
    path = tmp_path / "latest.json"
    path.write_text(json.dumps(last))
    new = {"schedules": {"new": 1}, "meta": {"date": "2026-12-05T00:00:00+00:00"}}
    merged = merge_sections(path, new, "schedules")
    assert merged["schedules"] == {"new": 1} and merged["overhead"] == {"old": "overhead"}
    assert merged["meta"]["full"] and merged["meta"]["date"].startswith("2026-12-01")
    assert merged["meta"]["remeasured"] == {
        "schedules": {
            "date": new["meta"]["date"],
            "command": "python -m bench --sections schedules",
        }
    }
    header = markdown(
        {"meta": merged["meta"]}, quick=False, command="python -m bench"
    ).splitlines()[0]
    assert "Measured 2026-12-01" in header
    assert (
        "the schedules section on 2026-12-05 with `python -m bench --sections schedules`" in header
    )
    # No full run to lay them over: the sections stand alone, and the docs are left alone.
    assert merge_sections(tmp_path / "missing.json", new, "schedules") is new


def test_a_run_of_some_schedule_tasks_keeps_the_other_tasks_figures(tmp_path: Path) -> None:
    from bench.suite import SECTIONS, merge_sections

    last: dict[str, Any] = {name: {"old": name} for name in SECTIONS}
    last["schedules"] = {"tasks": [{"task": "curves", "v": 1}, {"task": "digits", "v": 1}]}
    last["meta"] = {"date": "2026-12-01T00:00:00+00:00", "machine": "m", "full": True}
    path = tmp_path / "latest.json"
    path.write_text(json.dumps(last))
    new = {
        "schedules": {"tasks": [{"task": "digits", "v": 2}]},
        "meta": {"date": "2026-12-05T00:00:00+00:00"},
    }
    merged = merge_sections(path, new, "schedules --tasks digits", tasks=["digits"])
    curves, digits = merged["schedules"]["tasks"]
    assert curves == {"task": "curves", "v": 1}  # kept, in its place
    assert digits["v"] == 2
    assert digits["measured"]["command"] == "python -m bench --sections schedules --tasks digits"


def test_epochs_to_target_counts_up_to_the_first_epoch_that_reached_it() -> None:
    from bench.schedules import Curve, epochs_to_target

    one_worker = [Curve(0, 2, [0.5, 0.4]), Curve(2, 5, [0.3, 0.09, 0.05])]
    assert epochs_to_target(one_worker, 0.1) == (4, True)
    assert epochs_to_target(one_worker[:1], 0.1) == (2, False)
    # Two workers: the second trial's hit (its 2nd epoch, at t = 5) came after 2 of the first
    # trial's epochs (at t = 2 and 4; the other two at 6 and 8).
    two_workers = [Curve(0, 8, [0.5, 0.4, 0.3, 0.2]), Curve(0, 5, [0.3, 0.09])]
    assert epochs_to_target(two_workers, 0.1) == (4, True)


def test_the_median_interval_is_the_order_statistics_of_95_percent() -> None:
    from bench.schedules import median_interval

    # Binomial(20, 1/2): x_(6)..x_(15) covers the median with 95.9%; x_(7)..x_(14) with 88.5%.
    assert median_interval([float(v) for v in range(1, 21)]) == (6.0, 15.0)
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few seeds: the whole range
