"""The accuracy / size / latency front that compression-aware search finds on digits.

Runs ``studies/digits-compress.toml`` (multi-objective: maximize val_accuracy, minimize
size_bytes and latency_ms) for ``--trials`` trials, and the same training space with compression
off, single-objective, for as many trials (the uncompressed best). Then it retrains every front
member and the uncompressed best in this one process, interleaved, and measures them side by
side (latency: the median of 20 timed passes of a 256-sample batch after 3 warm-ups, one thread),
so that the latencies compare like for like. Prints a markdown table and writes JSON:

    .venv/bin/python bench/compression_front.py --trials 60 --workers 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import optuna
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpsearch.objectives.builtin import digits_mlp  # noqa: E402
from hpsearch.search import create_study, start_workers  # noqa: E402
from hpsearch.search.spec._study_file import parse_spec  # noqa: E402

STUDY = ROOT / "studies" / "digits-compress.toml"
COMPRESSION = ("prune_structured", "low_rank", "prune_amount", "finetune_epochs", "quantize")


class _Quiet:
    """A trial stand-in for retraining outside a study."""

    def report(self, value: float, step: int) -> None:
        pass

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: Any) -> None:
        pass


def _run(raw: dict[str, Any], url: str, workers: int) -> optuna.Study:
    spec = parse_spec(raw, source=str(STUDY), base_dir=str(STUDY.parent))
    create_study(spec, url)
    for process in start_workers(spec.name, url, workers=workers, timeout=None, log_trials=False):
        process.join()
    return optuna.load_study(study_name=spec.name, storage=url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results-compression.json"))
    args = parser.parse_args()

    raw = tomllib.loads(STUDY.read_text())
    raw["budget"]["n_trials"] = args.trials
    baseline = copy.deepcopy(raw)
    baseline["study"] = {"name": "digits-uncompressed", "objective": "digits-mlp"}
    for name in COMPRESSION:
        del baseline["space"][name]

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)  # the workers' per-trial files (checkpoints) go with the database
        url = f"sqlite:///{folder}/bench.db"
        front_study = _run(raw, url, args.workers)
        plain_study = _run(baseline, url, args.workers)
        front = sorted(front_study.best_trials, key=lambda t: -t.values[0])
        plain = plain_study.best_trial
        os.chdir(ROOT)
    search_seconds = time.monotonic() - started

    # Retrain and measure side by side, in one process with one thread.
    torch.set_num_threads(1)
    training = raw["training"]
    rows: list[dict[str, Any]] = []
    for label, trial in [("uncompressed best", plain)] + [("front", t) for t in front]:
        measured = digits_mlp(_Quiet(), {**training, **trial.params})
        recipe = {k: trial.params[k] for k in COMPRESSION if k in trial.params}
        rows.append(
            {
                "label": label,
                "trial": trial.number,
                "params": dict(trial.params),
                "recipe": recipe,
                "in_study": {"val_accuracy": trial.values[0]},
                "measured": measured,
            }
        )
    base = rows[0]["measured"]
    figures = {
        "trials": args.trials,
        "workers": args.workers,
        "search_seconds": round(search_seconds, 1),
        "uncompressed_best": rows[0],
        "front": rows[1:],
    }
    Path(args.output).write_text(json.dumps(figures, indent=2) + "\n")

    print(
        f"digits, {args.trials} trials each, {args.workers} workers, {search_seconds:.0f} s; "
        "measured side by side after retraining (1 thread)\n"
    )
    print("| model | val accuracy | size (bytes) | latency (ms, batch 256) | recipe |")
    print("|---|---|---|---|---|")
    for row in rows:
        m = row["measured"]
        size = f"{m['size_bytes']:,} ({m['size_bytes'] / base['size_bytes']:.2f}x)"
        latency = f"{m['latency_ms']:.3f} ({m['latency_ms'] / base['latency_ms']:.2f}x)"
        shape = f"width {row['params']['width']}, depth {row['params']['depth']}"
        recipe = ", ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row["recipe"].items()
            if v not in (0, 0.0, "none")
        )
        print(
            f"| {row['label']} (trial {row['trial']}) | {m['val_accuracy']:.4f} | {size} | "
            f"{latency} | {shape}{'; ' + recipe if recipe else ''} |"
        )


if __name__ == "__main__":
    main()
