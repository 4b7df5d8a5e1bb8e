"""Search efficiency on the digits objective: how many training epochs until a good model.

Each configuration (sampler + pruner) searches the built-in digits study's space with the same
budget of training epochs, once per seed. Epochs are what the search spends: a pruned trial
costs the epochs it ran. After all runs, the target is the best validation accuracy any run
reached, less ``TARGET_GAP``; a run's cost is the epochs it had spent when a trial first finished
at or above the target (the whole budget, marked as not reached, when none did). Runs use an
in-memory Optuna storage in parallel processes: what is compared is the search, not the database.

Random search's trials are independent draws, so beside its budgeted runs the full suite runs 20
more of its seeds (500 trials) only to pool their trials: the probability p that one trial reaches
the target, with a 95% Wilson interval, gives random search's median epochs to the target without
the budget's cap (geometric: ceil(ln 0.5 / ln(1 - p)) trials) and its interval.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parent.parent
TARGET_GAP = 0.01  # 1%: about 3.6 of the 359 validation images (one image is 0.28%)
# name -> (sampler, pruner, pruner options); the first is hpsearch's default configuration.
CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "tpe + median (default)": ("tpe", "median", {}),
    "tpe + successive-halving": ("tpe", "successive-halving", {}),
    "tpe + hyperband": ("tpe", "hyperband", {}),
    "tpe + wilcoxon": ("tpe", "wilcoxon", {}),
    "random, no pruning": ("random", "none", {}),
}
BASELINE = "random, no pruning"
DEFAULT = "tpe + median (default)"


def _study_file(folder: str, sampler: str, pruner: str, options: Mapping[str, Any]) -> str:
    """The built-in digits study with another sampler and pruner, and a fixed epoch count."""
    text = (ROOT / "studies" / "digits.toml").read_text()
    head, _, rest = text.partition("[sampler]")
    _, _, rest = rest.partition("[resources]")
    pruner_options = ", ".join(f"{k} = {v!r}" for k, v in options.items())
    path = Path(folder) / f"{sampler}-{pruner}.toml"
    path.write_text(
        f'{head}[sampler]\nname = "{sampler}"\n\n[pruner]\nname = "{pruner}"\n'
        f"options = {{ {pruner_options} }}\n\n[resources]{rest}"
    )
    return str(path)


def search_run(job: tuple[str, int, int, int]) -> list[tuple[int, float | None]]:
    """One search (a configuration and a seed) until ``budget`` epochs are spent.

    Returns (epochs run, final value or None if pruned/failed) per trial, in order.
    """
    name, seed, budget, epochs = job
    import torch

    from hpsearch.objectives import load_objective
    from hpsearch.search.spec._samplers import build_pruner, build_sampler
    from hpsearch.search.spec._space import suggest
    from hpsearch.search.spec._study_file import load_spec_file

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler_name, pruner_name, options = CONFIGS[name]
    with tempfile.TemporaryDirectory() as folder:
        spec = load_spec_file(_study_file(folder, sampler_name, pruner_name, options))
    objective = load_objective(spec.objective)
    training = {**spec.training, "epochs": epochs}
    study = optuna.create_study(
        direction="maximize",
        sampler=build_sampler(spec, seed=seed),
        pruner=build_pruner(spec),
    )

    def run(trial: optuna.Trial) -> float:
        result: Any = objective(trial, {**training, **suggest(trial, spec.space)})
        return float(result["val_accuracy"] if isinstance(result, Mapping) else result)

    spent, history = 0, []
    while spent < budget:
        study.optimize(run, n_trials=1)
        trial = study.trials[-1]
        used = len(trial.intermediate_values) or epochs
        spent += used
        done = trial.state == optuna.trial.TrialState.COMPLETE
        history.append((used, trial.value if done else None))
    return history


def epochs_to_target(history: list[tuple[int, float | None]], target: float) -> int | None:
    spent = 0
    for used, value in history:
        spent += used
        if value is not None and value >= target:
            return spent
    return None


def _median_trials(p: float) -> int | None:
    """Median trials until the first success of probability ``p``; None if p is 0."""
    if p <= 0:
        return None
    return 1 if p >= 0.5 else math.ceil(math.log(0.5) / math.log(1 - p))


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def random_median_epochs(
    histories: list[list[tuple[int, float | None]]], target: float, epochs: int
) -> int | None:
    """Random search's median epochs to the target, without the budget's censoring.

    Random search without pruning draws i.i.d. trials, so every trial of every seed estimates
    one probability p of reaching the target; the trials until the first success are geometric,
    with median ceil(ln 0.5 / ln(1 - p)). None if no trial reached it.
    """
    values = [value for history in histories for _, value in history]
    trials = _median_trials(sum(v is not None and v >= target for v in values) / len(values))
    return None if trials is None else trials * epochs


def random_median_interval(
    histories: list[list[tuple[int, float | None]]], target: float, epochs: int
) -> tuple[int, int | None]:
    """95% interval of :func:`random_median_epochs`: the median at the ends of p's Wilson
    interval (the median falls as p rises). The upper end is None (unbounded) if p's lower
    end is 0."""
    values = [value for history in histories for _, value in history]
    low, high = wilson(sum(v is not None and v >= target for v in values), len(values))
    fewest, most = _median_trials(high), _median_trials(low)
    assert fewest is not None  # the interval's upper end is above 0 whenever n > 0
    return fewest * epochs, None if most is None else most * epochs


def measure(*, quick: bool, processes: int = 2) -> dict[str, Any]:
    seeds = 2 if quick else 5
    epochs = 3 if quick else 6
    budget = epochs * (6 if quick else 25)  # epochs: random search's 25 trials
    pooled_seeds = 1 if quick else 20  # more random-search runs, for the pooled estimate only
    configs = list(CONFIGS) if not quick else [DEFAULT, "tpe + hyperband", BASELINE]
    jobs = [(name, seed, budget, epochs) for seed in range(seeds) for name in configs]
    jobs += [(BASELINE, seed, budget, epochs) for seed in range(seeds, seeds + pooled_seeds)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        histories = pool.map(search_run, jobs, chunksize=1)
    runs: dict[str, list[list[tuple[int, float | None]]]] = {name: [] for name in configs}
    for (name, seed, *_), history in zip(jobs, histories, strict=True):
        if seed < seeds:
            runs[name].append(history)
    pooled = [h for (name, *_), h in zip(jobs, histories, strict=True) if name == BASELINE]
    best = max(v for hs in runs.values() for h in hs for _, v in h if v is not None)
    target = best - TARGET_GAP
    table: list[dict[str, Any]] = []
    for name, histories_of in runs.items():
        costs = [epochs_to_target(h, target) for h in histories_of]
        reached = [c for c in costs if c is not None]
        # A run that never reached the target counts as its whole budget (a lower bound).
        censored = [c if c is not None else budget for c in costs]
        table.append(
            {
                "configuration": name,
                "median_epochs_to_target": statistics.median(censored),
                "reached": f"{len(reached)}/{len(costs)}",
                "median_trials_run": statistics.median(len(h) for h in histories_of),
                "best_accuracy_median": round(
                    statistics.median(
                        max((v for _, v in h if v is not None), default=0.0) for h in histories_of
                    ),
                    4,
                ),
            }
        )
    baseline = next(r for r in table if r["configuration"] == BASELINE)["median_epochs_to_target"]
    for row in table:
        row["vs_random"] = round(row["median_epochs_to_target"] / baseline, 3)
    uncensored = random_median_epochs(pooled, target, epochs)
    fewest, most = random_median_interval(pooled, target, epochs)
    default = next(r for r in table if r["configuration"] == DEFAULT)["median_epochs_to_target"]
    hits = sum(v is not None and v >= target for h in pooled for _, v in h)
    return {
        "random_trials_pooled": sum(len(h) for h in pooled),
        "random_runs_pooled": len(pooled),
        "random_trials_reaching_target": hits,
        "random_median_epochs_uncensored": uncensored,
        "random_median_epochs_95": [fewest, most],
        "default_vs_random_uncensored": (
            None if uncensored is None else round(default / uncensored, 3)
        ),
        # The ratio's 95% interval from random search's side (the default's median is fixed).
        "default_vs_random_uncensored_95": [
            None if most is None else round(default / most, 3),
            round(default / fewest, 3),
        ],
        "seeds": seeds,
        "epochs_per_trial": epochs,
        "budget_epochs": budget,
        "best_seen": round(best, 4),
        "target": round(target, 4),
        "table": table,
    }
