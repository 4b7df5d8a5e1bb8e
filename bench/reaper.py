"""One pass of the stale-trial reaper on a large study, against reading every trial.

``hpsearch proxy`` reaps every study of its database each heartbeat interval (``hpsearch
reap`` once), loading each study afresh. A fresh study's cache reads every trial of the study
on its first read, whatever states it asks for; a pass asks the storage for the RUNNING and
FAIL trials alone, and for every trial only while a crashed trial's retry may be lost. The
study: N finished trials of 27 reports each, one crashed trial whose retry is in the queue (the
steady state after a worker died once). Medians of interleaved repeats, one process.

    .venv/bin/python -m bench.reaper [--trials 2000] [--storage URL]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
import warnings

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpsearch.search.runtime._budget import reap_stale_trials
from hpsearch.storage._rdb import StorageSettings, open_storage

STUDY = "reaper-bench"


def fill(storage: optuna.storages.BaseStorage, trials: int) -> None:
    """The study: ``trials`` finished trials, and one crashed trial with its retry queued."""
    with contextlib.suppress(KeyError):  # a study left by an earlier run on --storage
        optuna.delete_study(study_name=STUDY, storage=storage)
    study = optuna.create_study(study_name=STUDY, storage=storage)
    space = {f"p{i}": FloatDistribution(0.0, 1.0) for i in range(5)}
    for number in range(trials):
        study.add_trial(
            create_trial(
                params={name: 0.5 for name in space},
                distributions=space,
                value=float(number),
                intermediate_values={step: 1.0 / (step + 1) for step in range(27)},
            )
        )
    crashed = study.ask()  # its worker dies; a reaper fails it and queues its retry
    storage.set_trial_state_values(crashed._trial_id, TrialState.FAIL)
    requeue = storage.get_heartbeat_stale_trial_callback()
    assert requeue is not None
    requeue(study, storage.get_trial(crashed._trial_id))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--storage", help="a database URL (default: a SQLite file)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # Optuna: experimental APIs, ask() on a heartbeat storage
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        url = args.storage or f"sqlite:///{folder}/reaper.db"
        storage = open_storage(url, settings=StorageSettings(), create_tables=True)
        fill(storage, args.trials)

        def timed(read: str) -> float:
            start = time.perf_counter()
            study = optuna.load_study(study_name=STUDY, storage=storage)  # as the proxy does
            if read == "pass":
                reap_stale_trials(study, storage)
            else:
                study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            return time.perf_counter() - start

        times: dict[str, list[float]] = {"pass": [], "every trial": []}
        for _ in range(args.repeats):
            for read, of in times.items():
                of.append(timed(read))
        reap, every = (statistics.median(of) for of in times.values())
        print(
            f"{args.trials} trials: a reaper pass {reap * 1000:.0f} ms, reading every trial "
            f"{every * 1000:.0f} ms (a pass takes {reap / every:.3f}x), medians of {args.repeats}"
        )


if __name__ == "__main__":
    main()
