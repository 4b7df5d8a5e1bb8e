"""[warm_start]: earlier studies' finished trials inform the sampler. The study file's checks,
refusals at create in one line with nothing written (a missing study, another direction or
metric, a password in the file), the parameters carried into a changed space, and a real warm
start across two storages (SQLite to PostgreSQL) whose earlier study is left as it was."""

from __future__ import annotations

import os
import statistics
import subprocess
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from hpsearch.errors import SpecError
from hpsearch.search import load_spec_file
from hpsearch.search.runtime._warm_start import _carried, earlier_trials

from ._support import study_toml
from .conftest import hpsearch_command

X_NEAR_2 = {"x": {"type": "float", "low": -10.0, "high": 10.0}}


def _write(folder: Path, name: str, *, n_trials: int, **sections: Any) -> Path:
    path = folder / f"{name}.toml"
    (folder / "quadratic.py").write_text(
        "def quadratic(trial, params):\n    return (params['x'] - 2.0) ** 2\n"
    )
    sections.setdefault("sampler", {"name": "tpe", "seed": 3})
    path.write_text(
        study_toml(
            name=name,
            objective="quadratic.py:quadratic",
            n_trials=n_trials,
            metric="loss",
            space=sections.pop("space", X_NEAR_2),
            **sections,
        )
    )
    return path


def _hpsearch(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [*hpsearch_command(), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def _earlier(folder: Path, url: str, name: str = "earlier", n_trials: int = 30) -> None:
    """A finished study of random trials on (x - 2)^2."""
    path = _write(folder, name, n_trials=n_trials, sampler={"name": "random", "seed": 0})
    result = _hpsearch("-q", "run", str(path), "--storage", url, "--workers", "1", cwd=folder)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("studies = []", "studies must be a list of earlier study names"),
        ('studies = "a"', "studies must be a list of earlier study names"),
        ('studies = ["a"]\nstorge = "x"', "unknown key 'storge'. Did you mean 'storage'?"),
        (
            'studies = ["a"]\nstorage = "postgresql://me:s3cret@db/optuna"',
            "storage holds a password, which the study file must not",
        ),
    ],
)
def test_a_bad_warm_start_table_is_refused(tmp_path: Path, table: str, message: str) -> None:
    path = _write(tmp_path, "new", n_trials=3)
    path.write_text(path.read_text() + f"\n[warm_start]\n{table}\n")
    with pytest.raises(SpecError, match="warm_start") as err:
        load_spec_file(str(path))
    assert message in str(err.value)
    assert "s3cret" not in str(err.value)


def test_parameters_that_no_longer_fit_are_dropped() -> None:
    space = {
        "x": FloatDistribution(0.0, 5.0),
        "n": IntDistribution(1, 8, step=1),
        "act": CategoricalDistribution(["relu", "gelu"]),
    }
    old = create_trial(
        state=TrialState.COMPLETE,
        value=1.5,
        params={"x": 7.0, "n": 4, "act": "relu", "gone": 0.1},
        distributions={
            "x": FloatDistribution(-10.0, 10.0),
            "n": IntDistribution(1, 16),
            "act": CategoricalDistribution(["relu", "tanh"]),
            "gone": FloatDistribution(0.0, 1.0),
        },
    )
    carried = _carried(old, space, number=-1)
    assert carried is not None
    assert carried.params == {"n": 4, "act": "relu"}  # x left the bounds, gone left the space
    assert carried.distributions == {"n": space["n"], "act": space["act"]}
    assert (carried.number, carried.values, carried.state) == (-1, [1.5], TrialState.COMPLETE)
    tanh = create_trial(
        state=TrialState.COMPLETE,
        value=2.0,
        params={"act": "tanh"},
        distributions={"act": CategoricalDistribution(["relu", "tanh"])},
    )
    assert _carried(tanh, space, number=-2) is None  # nothing of it fits


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"studies": ["nope"]}, "no study 'nope' in sqlite:///"),
        ({"direction": "maximize"}, "optimizes minimize, this study maximize"),
        ({"metric": "mse"}, "measured loss, this study mse"),
        ({"storage": "$NOT_SET_ANYWHERE"}, "the environment variable NOT_SET_ANYWHERE is not set"),
        # A typo in the earlier storage's path: a missing SQLite file, not created by the check.
        ({"storage": "sqlite:///typo.db"}, "typo.db' does not exist); name a storage that holds"),
        # No storage named: this study's own, whose SQLite file `create` has not made yet.
        ({"storage": None}, "new.db' does not exist); name a storage that holds earlier"),
    ],
)
def test_create_refuses_a_warm_start_it_cannot_use_in_one_line_and_writes_nothing(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    url = f"sqlite:///{tmp_path / 'earlier.db'}"
    _earlier(tmp_path, url, n_trials=3)
    warm = {"studies": change.get("studies", ["earlier"]), "storage": change.get("storage", url)}
    if warm["storage"] is None:
        del warm["storage"]
    path = tmp_path / "new.toml"
    path.write_text(
        study_toml(
            name="new",
            objective="quadratic.py:quadratic",
            n_trials=3,
            metric=change.get("metric", "loss"),
            direction=change.get("direction", "minimize"),
            space=X_NEAR_2,
            warm_start=warm,
        )
    )
    new_url = f"sqlite:///{tmp_path / 'new.db'}"
    result = _hpsearch("create", str(path), "--storage", new_url, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert message in line and "[warm_start]" in line
    assert not (tmp_path / "new.db").exists() and not (tmp_path / "typo.db").exists()


@pytest.mark.slow
def test_a_warm_start_across_storages_guides_the_first_trials_and_leaves_the_earlier_study(
    tmp_path: Path, postgres_url: str, study_name: str
) -> None:
    """60 random trials of (x - 2)^2 on SQLite; then 8 TPE trials on PostgreSQL, warm-started
    from them through $EARLIER_STORAGE: past TPE's 10 random start-up trials at once, they land
    near x = 2, where the same study cold proposes its start-up's random points."""
    earlier_url = f"sqlite:///{tmp_path / 'earlier.db'}"
    _earlier(tmp_path, earlier_url, n_trials=60)
    before = optuna.load_study(study_name="earlier", storage=earlier_url).get_trials()

    def run(name: str, warm: dict[str, Any] | None) -> list[float]:
        sections = {"warm_start": warm} if warm else {}
        path = _write(tmp_path, name, n_trials=8, **sections)
        result = _hpsearch(
            "-q",
            "run",
            str(path),
            "--storage",
            postgres_url,
            "--workers",
            "1",
            cwd=tmp_path,
            env={"EARLIER_STORAGE": earlier_url},
        )
        assert result.returncode == 0, result.stderr[-2000:]
        trials = optuna.load_study(study_name=name, storage=postgres_url).get_trials()
        assert len(trials) == 8  # its own budget: no earlier trial was added to it
        return [abs(t.params["x"] - 2.0) for t in trials]

    warm = run(f"{study_name}-warm", {"studies": ["earlier"], "storage": "$EARLIER_STORAGE"})
    cold = run(f"{study_name}-cold", None)
    # Half of the warm proposals within 0.5 of x = 2 (the start-up's random points: about 5).
    assert statistics.median(warm) < 0.5 < statistics.median(cold) / 5, (warm, cold)
    after = optuna.load_study(study_name="earlier", storage=earlier_url).get_trials()
    assert [(t.number, t.params, t.values, t.state) for t in after] == [
        (t.number, t.params, t.values, t.state) for t in before
    ]


def test_the_worker_hands_its_sampler_the_carried_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'earlier.db'}"
    _earlier(tmp_path, url, n_trials=4)
    path = _write(tmp_path, "new", n_trials=2, warm_start={"studies": ["earlier"]})
    spec = load_spec_file(str(path))
    carried = earlier_trials(spec, url)
    old = optuna.load_study(study_name="earlier", storage=url).get_trials()
    assert [t.params for t in carried] == [t.params for t in old]
    assert [t.number for t in carried] == [-1, -2, -3, -4]  # never one of the new study's
