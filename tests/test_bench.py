"""The benchmark scripts keep working (their figures are read by people, not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def test_gpu_bench_runs_every_path_on_the_cpu(tmp_path: Path) -> None:
    output = tmp_path / "gpu.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_bench.py"),
            "--device",
            "cpu",
            "--quick",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(output.read_text())
    assert figures["quick"] is True
    assert set(figures["mlp_784_512_10_batch_64"]["median_seconds"]) == {
        "seed_loop",
        "ours",
        "hand_written",
    }
    assert {"amp_off_compile_False", "amp_bf16_compile_False"} <= set(figures["cifar10_vgg"])


def test_gpu_bench_refuses_without_a_gpu_in_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        return  # on a GPU machine there is nothing to refuse
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_bench.py"),
            "--output",
            str(tmp_path / "x.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2 and "no CUDA device" in result.stderr
    assert result.stderr.count("\n") == 1


def test_epochs_to_target_counts_pruned_epochs_until_a_good_trial() -> None:
    from bench.search_efficiency import epochs_to_target

    history = [(2, None), (6, 0.90), (1, None), (6, 0.97), (6, 0.99)]
    assert epochs_to_target(history, 0.95) == 2 + 6 + 1 + 6
    assert epochs_to_target(history, 0.995) is None


def test_random_search_estimate_pools_its_iid_trials() -> None:
    from bench.search_efficiency import random_median_epochs

    # 2 of 8 trials reach 0.95: p = 1/4; P(first success within k) = 1 - 0.75**k >= 0.5 at k = 3.
    runs = [[(6, 0.90), (6, 0.96), (6, 0.80), (6, 0.91)], [(6, 0.97), (6, 0.5), (6, 0.6), (6, 0.7)]]
    assert random_median_epochs(runs, 0.95, 6) == 3 * 6
    assert random_median_epochs(runs, 0.99, 6) is None
    assert random_median_epochs([[(6, 0.99)]], 0.95, 6) == 6


def test_suite_replaces_only_the_marked_readme_block(tmp_path: Path) -> None:
    from bench.suite import BEGIN, END, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n")
    update_readme(readme, "| new | table |\n")
    assert readme.read_text() == f"# title\n\nbefore\n{BEGIN}\n| new | table |\n{END}\nafter\n"


def test_overhead_run_continues_a_prefilled_study_to_its_exact_budget(tmp_path: Path) -> None:
    """The growth benchmark's bulk-filled study is one the workers carry on as their own."""
    import optuna

    from bench.overhead import STUDY, Run, timed_run
    from hpsearch.search import budget_state

    run = Run("ours", "sqlite", "random", workers=1, trials=12, prefilled=16)
    figures = timed_run(run, str(tmp_path), "prefilled")  # raises unless 12 more completed
    assert figures["ms_per_trial"] > 0
    trials = optuna.load_study(
        study_name=STUDY, storage=f"sqlite:///{tmp_path}/prefilled.db"
    ).get_trials()
    state = budget_state(trials, 28)
    assert (state.complete, state.waiting, state.running, len(trials)) == (28, 0, 0, 28)


def test_plain_workers_use_the_sampler_hpsearch_builds(tmp_path: Path) -> None:
    """The overhead benchmark compares coordination only if both sides sample alike."""
    from bench.overhead import ROOT as BENCH_ROOT
    from bench.overhead import STUDY, STUDY_FILE
    from bench.plain_worker import sampler
    from hpsearch.search import load_spec_file
    from hpsearch.search.spec._samplers import build_sampler

    for name in ("tpe", "random"):
        path = tmp_path / f"{name}.toml"
        objective = f"{BENCH_ROOT / 'bench' / 'trivial.py'}:objective"
        path.write_text(
            STUDY_FILE.format(name=STUDY, objective=objective, n_trials=4, sampler=name)
        )
        ours, plain = build_sampler(load_spec_file(str(path)), seed=0), sampler(name, 0)
        assert type(ours) is type(plain)
        settings = ("_multivariate", "_group", "_constant_liar", "_n_startup_trials")
        assert [getattr(ours, s, None) for s in settings] == [
            getattr(plain, s, None) for s in settings
        ]
