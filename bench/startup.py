"""Start-up and shutdown of `hpsearch run` against a plain Optuna script, on SQLite.

Start-up: the wall time from launching the command to its first trial's start. On our side,
``hpsearch run STUDY.toml --storage sqlite:///... --workers 1``; on the other, a plain script that
imports what the objective needs (torch and Optuna for a torch objective, Optuna and the objective's
module for the trivial one), opens the same kind of SQLite storage and starts one trial
(``study.ask()``). Both studies are created beforehand, so the schema's creation is outside.
Two objectives: the built-in ``digits-mlp`` (torch; one epoch) and bench/trivial.py (no torch).

Shutdown: from the last trial's end to the ``hpsearch run`` process's exit.

Times: ``time.time()`` just before ``Popen`` and just after ``wait`` returns, against the trial's
``datetime_start``/``datetime_complete`` as Optuna's FrozenTrial gives them (naive local time,
microseconds on SQLite), the former converted the same way (``datetime.fromtimestamp``). Medians
of interleaved repeats.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parent.parent
STUDY = "startup"
START_TARGET = 1.5  # `hpsearch run`'s start-up at most 1.5x the plain script's
SHUTDOWN_TARGET = 1.0  # seconds from the last trial's end to the command's exit
# name in the tables -> (the study file's objective, its other sections, whether it needs torch)
OBJECTIVES = {
    "digits-mlp (torch)": (
        '"digits-mlp"',
        "[training]\nepochs = 1\nbatch_size = 32\nwidth = 32\ndepth = 1\n\n"
        '[space.lr]\ntype = "float"\nlow = 1e-3\nhigh = 1e-1\nlog = true\n',
        True,
    ),
    "bench/trivial.py (no torch)": (
        f'"{ROOT / "bench" / "trivial.py"}:objective"\ndirection = "minimize"',
        '[space.x]\ntype = "float"\nlow = -10.0\nhigh = 10.0\n',
        False,
    ),
}
STUDY_FILE = """
[study]
name = "{name}"
objective = {objective}

[budget]
n_trials = 1

[sampler]
name = "random"
seed = 0

[pruner]
name = "none"

{sections}"""
# The plain script: argv[1] the storage URL, argv[2] "torch" if the objective needs torch.
PLAIN = (
    "import sys\n"
    "if sys.argv[2] == 'torch':\n"
    "    import torch\n"
    "else:\n"
    "    import bench.trivial\n"
    "import optuna\n"
    "optuna.logging.set_verbosity(optuna.logging.WARNING)\n"
    f"optuna.load_study(study_name={STUDY!r}, storage=sys.argv[1]).ask()\n"
)


def seconds_between(launched: float, when: datetime) -> float:
    """Seconds from ``launched`` (a time.time()) to ``when``, a naive local datetime as Optuna's
    FrozenTrial has it."""
    return (when - datetime.fromtimestamp(launched)).total_seconds()


def _launch(argv: list[str], cwd: str) -> tuple[float, float]:
    """(time.time() just before the launch, just after the exit) of a command that must succeed."""
    launched = time.time()
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, stderr = process.communicate()
    exited = time.time()
    if process.returncode:
        lines = stderr.decode().strip().splitlines() or ["(no output)"]
        raise RuntimeError(f"{' '.join(argv)} failed ({process.returncode}): {lines[-1]}")
    return launched, exited


def ours(name: str, folder: str, tag: str) -> tuple[float, float]:
    """(start-up, shutdown) seconds of one `hpsearch run` of a one-trial study."""
    from hpsearch.search import create_study, load_spec_file

    objective, sections, _ = OBJECTIVES[name]
    study_file = Path(folder) / f"{tag}.toml"
    study_file.write_text(STUDY_FILE.format(name=STUDY, objective=objective, sections=sections))
    url = f"sqlite:///{folder}/{tag}.db"
    create_study(load_spec_file(str(study_file)), url)  # as `hpsearch create` does
    hpsearch = str(Path(sys.executable).parent / "hpsearch")
    argv = [hpsearch, "run", str(study_file), "--storage", url, "--workers", "1"]
    launched, exited = _launch(argv, folder)  # checkpoints go under the run's folder
    trials = optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    if not ends:
        raise RuntimeError(f"`hpsearch run` finished no trial in {url}")
    return seconds_between(launched, min(starts)), -seconds_between(exited, max(ends))


def plain(name: str, folder: str, tag: str) -> float:
    """Start-up seconds of the plain script: launch to its trial's start."""
    url = f"sqlite:///{folder}/{tag}.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name=STUDY, storage=url)
    needs = "torch" if OBJECTIVES[name][2] else "none"
    launched, _ = _launch([sys.executable, "-c", PLAIN, url, needs], str(ROOT))
    trial = optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)[0]
    assert trial.datetime_start is not None
    return seconds_between(launched, trial.datetime_start)


def measure(*, quick: bool) -> dict[str, Any]:
    repeats = 1 if quick else 3
    samples: dict[str, dict[str, list[float]]] = {
        name: {"plain": [], "ours": [], "shutdown": []} for name in OBJECTIVES
    }
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as folder:
        for repeat in range(repeats):
            for number, name in enumerate(OBJECTIVES):  # interleaved: plain, ours, plain, ...
                tag = f"{number}-{repeat}"
                samples[name]["plain"].append(plain(name, folder, f"plain-{tag}"))
                start, stop = ours(name, folder, f"ours-{tag}")
                samples[name]["ours"].append(start)
                samples[name]["shutdown"].append(stop)
    rows = []
    for name, s in samples.items():
        start_plain, start_ours = statistics.median(s["plain"]), statistics.median(s["ours"])
        shutdown = statistics.median(s["shutdown"])
        rows.append(
            {
                "objective": name,
                "plain_start_seconds": round(start_plain, 3),
                "ours_start_seconds": round(start_ours, 3),
                "start_ratio": round(start_ours / start_plain, 3),
                "start_target_met": start_ours / start_plain <= START_TARGET,
                "ours_shutdown_seconds": round(shutdown, 3),
                "shutdown_target_met": shutdown < SHUTDOWN_TARGET,
            }
        )
    return {
        "repeats": repeats,
        "start_target": START_TARGET,
        "shutdown_target_seconds": SHUTDOWN_TARGET,
        "rows": rows,
    }
