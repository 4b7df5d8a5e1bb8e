"""Pruning a multi-objective study: the compression built-in with and without the Pareto pruner.

Per seed, ``studies/digits-compress.toml`` (maximize val_accuracy, minimize size_bytes and
latency_ms; 60 trials, 2 workers) runs through ``hpsearch run`` once per method, the sampler
seeded alike:

- ``none``: today's search, every trial trained to the end;
- ``pareto``: ``[pruner] name = "pareto"`` with its defaults (conservative);
- ``pareto, eager``: no warm-up step and no tolerance on the fixed metrics;
- ``pareto, frugal``: no warm-up step; a trial's best case with the median gain completed trials made from its
  epoch (not the largest), and stopped also when that would add at most 0.2% to the front's
  hypervolume.

Measured per run: the epochs trained (training and fine-tuning; a pruned trial's reported
epochs) and the hypervolume of the front of its completed trials. Objectives are scaled to
[0, 1] over every run of the seed together (accuracy negated), the reference point at 1.1 in
each. Reported: medians over seeds of each method's epochs and hypervolume as ratios to
``none``'s of the same seed.

Also reported, from the ``none`` runs: the bound of any pruner that decides by domination. An
oracle that knew each trial's final values after its first epoch, and pruned it there when a
trial completed before it started dominates them, would train this many epochs.

In a pruned study the built-ins report, each epoch, the accuracy of the model compressed as its
recipe says (``compression.compressed_accuracy``): the study's accuracy is the compressed model's,
which a recipe can cut from 0.97 to 0.3.
"""

from __future__ import annotations

import statistics
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import tomli_w
from optuna.trial import FrozenTrial, TrialState

from bench.schedules import run_study
from hpsearch.search.spec._pareto import curve, hypervolume

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "studies" / "digits-compress.toml"
METHODS: Mapping[str, Mapping[str, Any]] = {
    "none": {"name": "none"},
    "pareto": {"name": "pareto"},
    "pareto, eager": {"name": "pareto", "options": {"n_warmup_steps": 0, "tolerance": 0.0}},
    "pareto, frugal": {
        "name": "pareto",
        "options": {"n_warmup_steps": 0, "min_gain": 0.002, "gain_quantile": 0.5},
    },
}
SEEDS = 5
HV_TARGET = 0.98  # the issue's: hypervolume within 2% of the unpruned search's
EPOCHS_TARGET = 0.6  # at no more than 0.6x its epochs


def _epochs(trial: FrozenTrial, training_epochs: int) -> int:
    """Epochs a trial trained: its reports if pruned, else training plus any fine-tuning."""
    if trial.state == TrialState.PRUNED:
        return len(curve(trial))
    params = trial.params
    edits = any(params.get(k, 0) > 0 for k in ("prune_structured", "low_rank", "prune_amount"))
    return training_epochs + (int(params.get("finetune_epochs", 0)) if edits else 0)


def _minimized(trial: FrozenTrial) -> tuple[float, float, float]:
    accuracy, size, latency = trial.values
    return -accuracy, size, latency


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def _scaled_volume(
    trials: Sequence[FrozenTrial], low: Sequence[float], span: Sequence[float]
) -> float:
    """The hypervolume of ``trials``' values scaled by ``low`` and ``span``, reference 1.1."""
    scaled = [
        [(v - lo) / s for v, lo, s in zip(_minimized(t), low, span, strict=True)] for t in trials
    ]
    return hypervolume(scaled, [1.1] * len(low))


def run(method: str, seed: int, trials: int) -> list[FrozenTrial]:
    """One search of the compression study with ``method``'s pruner: its trials."""
    study = tomllib.loads(STUDY.read_text())
    study["study"]["name"] = "compress"
    study["budget"]["n_trials"] = trials
    study["sampler"]["seed"] = seed
    study["pruner"] = dict(METHODS[method])
    with tempfile.TemporaryDirectory(prefix="hpsearch-mo-") as folder:
        path = Path(folder) / "study.toml"
        path.write_text(tomli_w.dumps(study))
        url = f"sqlite:///{folder}/runs.db"
        run_study(path, url, f"{method}, seed {seed}")
        return optuna.load_study(study_name="compress", storage=url).get_trials()


def oracle_epochs(trials: Sequence[FrozenTrial], training_epochs: int) -> tuple[int, list[int]]:
    """Epochs of the domination oracle on an unpruned run, and the trials it would keep."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    epochs, kept = 0, []
    for trial in complete:
        earlier = [
            o
            for o in complete
            if o.datetime_complete is not None
            and trial.datetime_start is not None
            and o.datetime_complete < trial.datetime_start
        ]
        full = _epochs(trial, training_epochs)
        if len(earlier) >= 5 and any(_dominates(_minimized(o), _minimized(trial)) for o in earlier):
            epochs += 1
        else:
            epochs += full
            kept.append(trial.number)
    return epochs, kept


def measure(*, quick: bool) -> dict[str, Any]:
    """Every method over the seeds (quick: 1 seed, 16 trials: that it runs)."""
    seeds, trials = (1, 16) if quick else (SEEDS, 60)
    training_epochs = int(tomllib.loads(STUDY.read_text())["training"]["epochs"])
    per_seed = []
    for seed in range(seeds):
        runs = {method: run(method, seed, trials) for method in METHODS}
        complete = {m: [t for t in ts if t.state == TrialState.COMPLETE] for m, ts in runs.items()}
        every = [_minimized(t) for ts in complete.values() for t in ts]
        low = [min(v[i] for v in every) for i in range(3)]
        span = [max(v[i] for v in every) - low[i] or 1.0 for i in range(3)]

        base_hv = _scaled_volume(complete["none"], low, span)
        base_epochs = sum(_epochs(t, training_epochs) for t in runs["none"])
        row: dict[str, Any] = {"seed": seed, "none_epochs": base_epochs}
        for method, ts in runs.items():
            row[method] = {
                "epochs_ratio": round(
                    sum(_epochs(t, training_epochs) for t in ts) / base_epochs, 3
                ),
                "hv_ratio": round(_scaled_volume(complete[method], low, span) / base_hv, 4),
                "pruned": sum(t.state == TrialState.PRUNED for t in ts),
            }
        epochs, kept = oracle_epochs(runs["none"], training_epochs)
        by_number = {t.number: t for t in complete["none"]}
        row["oracle"] = {
            "epochs_ratio": round(epochs / base_epochs, 3),
            "hv_ratio": round(_scaled_volume([by_number[n] for n in kept], low, span) / base_hv, 4),
            "pruned": len(complete["none"]) - len(kept),
        }
        per_seed.append(row)
    summary = {
        method: {
            key: statistics.median(row[method][key] for row in per_seed)
            for key in ("epochs_ratio", "hv_ratio", "pruned")
        }
        for method in [*METHODS, "oracle"]
    }
    return {
        "study": str(STUDY.relative_to(ROOT)),
        "trials": trials,
        "seeds": seeds,
        "methods": {m: dict(p) for m, p in METHODS.items()},
        "per_seed": per_seed,
        "median": summary,
        "targets": {"hv_ratio_at_least": HV_TARGET, "epochs_ratio_at_most": EPOCHS_TARGET},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(measure(quick=False), indent=1))
