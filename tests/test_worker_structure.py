"""The runtime's structure, checked at run time: the package's face is lazy, so importing the
engine (what a worker's objective imports) loads neither SQLAlchemy nor the search runtime."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import ROOT

PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {roots!r})))
"""


def _loaded(module: str, roots: tuple[str, ...]) -> list[str]:
    """The modules under ``roots`` that importing ``module`` loads, in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module, roots=roots)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


@pytest.mark.parametrize(
    "module", ["hpsearch", "hpsearch.objectives.context", "hpsearch.objectives.trainer"]
)
def test_importing_the_engine_loads_no_sqlalchemy(module: str) -> None:
    loaded = _loaded(module, ("sqlalchemy", "hpsearch"))
    assert not [m for m in loaded if m.split(".")[0] == "sqlalchemy"], loaded
    assert not [m for m in loaded if m.startswith(("hpsearch.storage", "hpsearch.search"))], loaded


def test_the_package_face_still_offers_every_name() -> None:
    import hpsearch

    for name in hpsearch.__all__:
        assert getattr(hpsearch, name) is not None, name
    from hpsearch import WorkersFailed, run

    assert issubclass(WorkersFailed, hpsearch.HpsearchError) and callable(run)


def _runtime_imports(module: str) -> set[str]:
    """The runtime modules that ``module`` imports anywhere in its source (lazily too)."""
    from .test_layout import _imports

    path = ROOT / "search" / "runtime" / f"{module}.py"
    prefix = "hpsearch.search.runtime."
    return {name[len(prefix) :].split(".")[0] for name in _imports(path) if name.startswith(prefix)}


def test_the_launcher_and_the_worker_loop_import_no_circle() -> None:
    # The parent's launcher reaches the loop only through the child's start-up; the loop
    # imports neither back.
    assert "_worker" not in _runtime_imports("_launch")
    assert not {"_launch", "_startup"} & _runtime_imports("_worker")
    assert "_launch" not in _runtime_imports("_startup")
    assert not {"_launch", "_startup", "_worker"} & _runtime_imports("_heartbeat")
