"""One import name: a user's modules and ours never shadow each other, from an editable install
and from a built wheel in a fresh virtual environment; the Python API from scripts."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tests._support import write_study_file
from tests.conftest import ROOT

N_TRIALS = 4
HPSEARCH = [sys.executable, "-m", "hpsearch"]


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("hpsearch-*.whl")
    return wheel


@pytest.fixture(scope="session")
def wheel_bin(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed; its dependencies come from the test
    environment's site-packages, added as a plain path (so its editable hpsearch is not)."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(built_wheel),
        ],
        check=True,
        capture_output=True,
    )
    return venv / "bin"


@pytest.fixture(params=["editable", "wheel"])
def install_bin(request: pytest.FixtureRequest) -> Path:
    """The bin folder of an environment where `hpsearch` is installed."""
    if request.param == "editable":
        return Path(sys.executable).parent
    return Path(request.getfixturevalue("wheel_bin"))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HPSEARCH_STORAGE")}
    env.update(extra)
    return env


def _study_file(folder: Path, objective: str) -> Path:
    return write_study_file(
        folder / "study.toml",
        name="collision",
        objective=objective,
        n_trials=N_TRIALS,
        metric="loss",
        sampler={"name": "random", "seed": 1},
        pruner=None,
        resources={"workers": 2},
        space={"x": {"type": "float", "low": -3.0, "high": 3.0}},
    )


def _user_files(folder: Path, case: str) -> tuple[str, dict[str, str]]:
    """Write one collision case's user code; return the objective reference and extra env.

    Every objective returns x**2 plus an offset that only the user's own module knows, so a
    completed study proves the user's module (not ours) was imported."""
    if case == "objectives-file":  # a user file named like our `objectives` package
        (folder / "objectives.py").write_text(
            "OFFSET = 10.0\n\ndef fn(trial, params):\n    return params['x'] ** 2 + OFFSET\n"
        )
        return "objectives.py:fn", {}
    if case == "storage-neighbour":  # an objective importing its neighbour `storage.py`
        (folder / "storage.py").write_text("OFFSET = 10.0\n")
        (folder / "quad.py").write_text(
            "from storage import OFFSET\n\n"
            "def fn(trial, params):\n    return params['x'] ** 2 + OFFSET\n"
        )
        return "quad.py:fn", {}
    if case == "search-package":  # a user package `search/` next to the study file
        (folder / "search").mkdir()
        (folder / "search" / "__init__.py").write_text("")
        (folder / "search" / "offsets.py").write_text("OFFSET = 10.0\n")
        (folder / "quad.py").write_text(
            "from search.offsets import OFFSET\n\n"
            "def fn(trial, params):\n    return params['x'] ** 2 + OFFSET\n"
        )
        return "quad.py:fn", {}
    assert case == "objectives-module-on-pythonpath"  # exactly as the README advises
    (folder / "objectives.py").write_text(
        "OFFSET = 10.0\n\ndef fn(trial, params):\n    return params['x'] ** 2 + OFFSET\n"
    )
    return "objectives:fn", {"PYTHONPATH": str(folder)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    ["objectives-file", "storage-neighbour", "search-package", "objectives-module-on-pythonpath"],
)
def test_user_modules_named_like_ours_run_to_the_end(
    case: str, install_bin: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "user"
    folder.mkdir()
    objective, extra_env = _user_files(folder, case)
    study_file = _study_file(folder, objective)
    url = f"sqlite:///{tmp_path / 'collision.db'}"
    result = subprocess.run(
        [str(install_bin / "hpsearch"), "run", str(study_file), "--storage", url],
        cwd=folder,  # where a user starts it: their own modules in the working directory
        env=_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="collision", storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * N_TRIALS
    assert all(t.value is not None and t.value >= 10.0 for t in trials)


@pytest.mark.slow
def test_the_distribution_has_one_top_level_name(built_wheel: Path, wheel_bin: Path) -> None:
    with zipfile.ZipFile(built_wheel) as wheel:
        names = wheel.namelist()
        top_level = wheel.read("hpsearch-0.1.0.dist-info/top_level.txt").decode().split()
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"hpsearch"}
    assert top_level == ["hpsearch"]
    # The wheel's own record of what it installed: one package, and nothing else importable.
    script = (
        "import importlib.metadata as m, importlib.util as u, json\n"
        "files = m.distribution('hpsearch').files\n"
        "tops = {f.parts[0] for f in files if f.suffix == '.py' and f.parts[0] != '..'}\n"
        "print(json.dumps({'tops': sorted(tops), 'found': [n for n in "
        "('search', 'objectives', 'storage') if u.find_spec(n)]}))"
    )
    for python in (wheel_bin / "python", Path(sys.executable)):
        out = subprocess.run(
            [str(python), "-c", script],
            cwd=wheel_bin,  # away from the repository's folders
            env=_env(),
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        if python == Path(sys.executable):  # the editable install records a finder, not files
            assert json.loads(out)["found"] == []
        else:
            assert json.loads(out) == {"tops": ["hpsearch"], "found": []}


@pytest.mark.slow
def test_a_user_objective_file_runs_once_per_process(tmp_path: Path) -> None:
    folder = tmp_path / "user"
    folder.mkdir()
    log = tmp_path / "imports.log"
    (folder / "counted.py").write_text(
        textwrap.dedent(
            f"""
            import os
            with open({str(log)!r}, "a") as handle:
                handle.write(f"{{os.getpid()}}\\n")

            def fn(trial, params):
                return params["x"] ** 2
            """
        )
    )
    study_file = _study_file(folder, "counted.py:fn")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpsearch",
            "run",
            str(study_file),
            "--storage",
            f"sqlite:///{tmp_path / 'once.db'}",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    per_process = collections.Counter(log.read_text().split())
    assert len(per_process) == 3  # the `run` parent and its two workers
    assert set(per_process.values()) == {1}, per_process


API_SCRIPT = """
import json, sys
import hpsearch

print("caller's code ran", flush=True)
study_file, url = sys.argv[1], sys.argv[2]
study = hpsearch.run(study_file, storage=url, workers=2, progress=False)
status = hpsearch.status(study.study_name, storage=url)
best = hpsearch.export(study.study_name, storage=url, top=2)
again = hpsearch.run(study_file, storage=url, progress=False)  # budget used: returns at once
print(json.dumps({
    "best_value": study.best_value,
    "used": status["budget"]["used"],
    "exported_value": best["value"],
    "top": len(best["top"]),
    "studies": [row["study"] for row in hpsearch.studies(storage=url)],
    "same_trials": len(again.trials),
    "loaded_trials": len(hpsearch.load(study.study_name, storage=url).trials),
}))
"""


@pytest.fixture
def api_study(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "quad.py").write_text("def fn(trial, params):\n    return params['x'] ** 2\n")
    yield _study_file(folder, "quad.py:fn"), f"sqlite:///{tmp_path / 'api.db'}"


def _check_api_output(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    # Spawned workers did not run the caller's code again (it has no main guard).
    assert result.stdout.count("caller's code ran") == 1, result.stdout
    document = json.loads(result.stdout.strip().splitlines()[-1])
    assert document["used"] == N_TRIALS
    assert document["best_value"] == pytest.approx(document["exported_value"])
    assert document["top"] == 2
    assert document["studies"] == ["collision"]
    assert document["same_trials"] == document["loaded_trials"] == N_TRIALS


@pytest.mark.slow
def test_python_api_from_a_script_without_main_guard(
    api_study: tuple[Path, str], tmp_path: Path
) -> None:
    study_file, url = api_study
    script = tmp_path / "tune.py"
    script.write_text(API_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(study_file), url],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check_api_output(result)


@pytest.mark.slow
def test_python_api_from_a_command_string(api_study: tuple[Path, str], tmp_path: Path) -> None:
    study_file, url = api_study
    result = subprocess.run(
        [sys.executable, "-c", API_SCRIPT, str(study_file), url],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check_api_output(result)


def test_python_api_errors_are_hpsearch_errors(tmp_path: Path) -> None:
    import hpsearch

    with pytest.raises(hpsearch.HpsearchError, match="not found"):
        hpsearch.status("nope", storage=f"sqlite:///{tmp_path / 'empty.db'}")


def test_a_user_module_named_hpsearch_is_refused_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "hpsearch.py").write_text("")
    (folder / "quad.py").write_text("def fn(trial, params):\n    return params['x'] ** 2\n")
    result = subprocess.run(
        [*HPSEARCH, "create", str(_study_file(folder, "quad.py:fn")), "--storage", "sqlite://"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "its folder holds 'hpsearch.py', which would hide hpsearch itself" in line
