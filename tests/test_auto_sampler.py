"""The default sampler, auto: GP or TPE by the kind of study, the choice recorded per trial."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna_dashboard._note import get_note_from_system_attrs

from hpsearch.attrs import SAMPLER
from hpsearch.search import SpecError, load_spec_file
from hpsearch.search.spec._auto import GP_TRIALS, AutoSampler, space_kind, why_not_gp
from hpsearch.search.spec._samplers import build_sampler

from ._support import RESUMING, study_toml
from .conftest import hpsearch_command

CONTINUOUS = {
    "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "width": {"type": "int", "low": 8, "high": 1024, "log": True},
}
GRID = {**CONTINUOUS, "depth": {"type": "int", "low": 1, "high": 3}}
CATEGORICAL = {**CONTINUOUS, "act": {"type": "categorical", "choices": ["relu", "gelu"]}}
CONDITIONAL = {
    **CATEGORICAL,
    "slope": {"type": "float", "low": 0.0, "high": 0.3, "when": {"act": ["relu"]}},
}


def _spec(
    tmp_path: Path,
    space: Mapping[str, Mapping[str, Any]],
    *,
    sampler: Mapping[str, Any] | None = None,
    pruner: str = "none",
    n_trials: int = 12,
    objective: str = "fn.py:fn",
    **sections: Any,
) -> Any:
    text = study_toml(
        name="auto",
        objective=objective,
        n_trials=n_trials,
        sampler=sampler or {"seed": 5},  # no name: the default
        pruner={"name": pruner},
        space=space,
        **sections,
    )
    (tmp_path / "fn.py").write_text(
        "import math\n\n"
        "def fn(trial, params):\n"
        "    return (math.log10(params['lr']) + 2) ** 2 + math.log2(params['width']) / 10\n"
    )
    path = tmp_path / "auto.toml"
    path.write_text(text)
    return load_spec_file(str(path))


@pytest.mark.parametrize(
    ("space", "kind"),
    [
        (CONTINUOUS, "continuous"),
        (GRID, "grid"),
        (CATEGORICAL, "categorical"),
        (CONDITIONAL, "conditional"),
        ({}, "empty"),
    ],
)
def test_the_kind_of_space_decides_whether_gp_proposes(
    space: Mapping[str, Any], kind: str, tmp_path: Path
) -> None:
    spec = _spec(tmp_path, space)
    assert spec.sampler.name == "auto"
    assert space_kind(spec.space) == kind
    sampler = build_sampler(spec, seed=1)
    assert isinstance(sampler, AutoSampler)
    assert (sampler.gp is not None) == (kind == "continuous")
    assert (why_not_gp(spec) is None) == (kind == "continuous")
    assert sampler._group == (kind == "conditional")  # TPE in a conditional space: grouped


def test_a_float_with_a_few_steps_is_a_grid(tmp_path: Path) -> None:
    stepped = {"lr": {"type": "float", "low": 0.1, "high": 0.5, "step": 0.1}}
    assert space_kind(stepped) == "grid"
    assert space_kind({"lr": {**stepped["lr"], "step": 0.01}}) == "continuous"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"pruner": "median"}, "pruned or paused"),
        (
            {
                "objective": "hpsearch.objectives.curves:learning_curve",  # it resumes
                "scheduler": {
                    "name": "asha",
                    "min_epochs": 1,
                    "max_epochs": 9,
                    "reduction_factor": 3,
                },
            },
            "pruned or paused",
        ),
    ],
)
def test_studies_that_prune_or_pause_get_tpe(
    change: dict[str, Any], reason: str, tmp_path: Path
) -> None:
    spec = _spec(tmp_path, CONTINUOUS, **change)
    why = why_not_gp(spec)
    assert why is not None and reason in why
    assert build_sampler(spec, seed=1).gp is None  # type: ignore[attr-defined]


def test_a_multi_objective_study_gets_tpe(tmp_path: Path) -> None:
    text = study_toml(
        name="mo",
        objective="fn.py:fn",
        n_trials=4,
        direction=None,
        sampler={"seed": 1},
        space=CONTINUOUS,
        study={"directions": ["minimize", "minimize"], "metrics": ["a", "b"]},
    )
    (tmp_path / "mo.toml").write_text(text)
    (tmp_path / "fn.py").write_text("def fn(trial, params):\n    return 0.0, 0.0\n")
    spec = load_spec_file(str(tmp_path / "mo.toml"))
    assert why_not_gp(spec) == "several objectives"


def test_the_auto_sampler_takes_no_options(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"auto sampler takes no options.*name = \"tpe\""):
        _spec(tmp_path, CONTINUOUS, sampler={"name": "auto", "options": {"n_startup_trials": 3}})


def _proposals(sampler: optuna.samplers.BaseSampler, n_trials: int) -> optuna.Study:
    study = optuna.create_study(sampler=sampler)
    study.optimize(
        lambda t: (t.suggest_float("x", -5, 5) - 1) ** 2 + t.suggest_int("k", 0, 100) / 100,
        n_trials=n_trials,
    )
    return study


def test_gp_proposes_the_first_trials_then_tpe_and_each_trial_says_which() -> None:
    gp = optuna.samplers.GPSampler(seed=0)
    study = _proposals(AutoSampler(seed=0, group=False, gp=gp, gp_trials=14), 18)
    chosen = [t.user_attrs[SAMPLER] for t in study.trials]
    assert chosen == ["gp"] * 14 + ["tpe"] * 4
    # GP's model, not its start-up sampler, proposed trials 10 to 13: near the optimum.
    assert min(abs(t.params["x"] - 1) for t in study.trials[10:14]) < 1.0
    assert GP_TRIALS == 100


def test_where_gp_does_not_suit_auto_proposes_what_plain_tpe_does() -> None:
    auto = _proposals(AutoSampler(seed=4, group=False, gp=None), 16)
    plain = _proposals(optuna.samplers.TPESampler(seed=4), 16)
    assert [t.params for t in auto.trials] == [t.params for t in plain.trials]
    assert {t.user_attrs[SAMPLER] for t in auto.trials} == {"tpe"}


def _run_and_export(tmp_path: Path, url: str) -> dict[str, Any]:
    """``hpsearch run`` of the study file ``_spec`` wrote, then its ``export`` as JSON."""
    for args in (
        ["-q", "run", str(tmp_path / "auto.toml"), "--storage", url],
        ["export", "--study", "auto", "--storage", url, "--format", "json"],
    ):
        result = subprocess.run(
            [*hpsearch_command(), *args], capture_output=True, text=True, cwd=tmp_path, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_export_and_the_dashboard_note_say_which_sampler_proposed(tmp_path: Path) -> None:
    _spec(tmp_path, CONTINUOUS, n_trials=4)
    url = f"sqlite:///{tmp_path / 'auto.db'}"
    assert _run_and_export(tmp_path, url)["sampler"] == "gp"
    study = optuna.load_study(study_name="auto", storage=url)
    assert {t.user_attrs[SAMPLER] for t in study.trials} == {"gp"}
    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    note = get_note_from_system_attrs(system_attrs, None)["body"]
    assert "Sampler auto: Optuna's GP sampler proposes the first 100 trials" in note


@pytest.mark.parametrize("scheduler", **RESUMING)
def test_a_continuation_names_the_sampler_that_proposed_its_params(
    scheduler: dict[str, Any], tmp_path: Path
) -> None:
    """A paused configuration's continuation is enqueued, proposed by no sampler: it names the
    one that proposed the params it goes on with (a PBT member's explored params: none), so
    that export of a promoted best says which sampler found it."""
    space = {**CONTINUOUS, "l2": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True}}
    _spec(
        tmp_path,
        space,
        n_trials=4 if scheduler["name"] == "pbt" else 8,
        objective="hpsearch.objectives.curves:learning_curve",
        scheduler=scheduler,
        resources={"artifacts": str(tmp_path / "artifacts")},
    )
    url = f"sqlite:///{tmp_path / 'auto.db'}"
    exported = _run_and_export(tmp_path, url)
    trials = optuna.load_study(study_name="auto", storage=url).get_trials()
    by_number = {t.number: t for t in trials}
    continuations = [t for t in trials if "promoted_from" in t.user_attrs]
    assert continuations, "nothing was paused and resumed"
    for trial in continuations:
        source = by_number[trial.user_attrs["promoted_from"]]
        if trial.params == source.params:  # PBT: unless explored after an exploit
            assert trial.user_attrs.get(SAMPLER) == source.user_attrs.get(SAMPLER)
        else:
            assert SAMPLER not in trial.user_attrs
    assert "tpe" in {t.user_attrs.get(SAMPLER) for t in continuations}
    best = optuna.load_study(study_name="auto", storage=url).best_trial
    assert exported["sampler"] == best.user_attrs.get(SAMPLER)
    if scheduler["name"] == "asha":
        assert best.user_attrs[SAMPLER] == "tpe"
