"""A real browser on `hpsearch dashboard`: the study's page shows its trial count and best value.

Headless Chromium from Debian's `chromium` package, driven by Playwright; no browser is ever
downloaded (`.ci/run` installs the package; `playwright install` is never run). The page may
not reach anything but the dashboard: every other request is refused and counted.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpsearch.search import create_study, load_spec_file, start_workers

from .conftest import free_port, get_json, hpsearch_command

# The browser drives a dashboard over a study run by real workers.
pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
N_TRIALS = 5


def _require_browser() -> None:
    # Fail, never skip: CI installs both (see .ci/run).
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("the playwright package is missing: `pip install -e '.[dev]'`")


def test_study_page_shows_trial_count_and_best_value(
    postgres_url: str, write_study: Any, study_name: str, tmp_path: Path
) -> None:
    _require_browser()
    from playwright.sync_api import Route, sync_playwright

    spec = load_spec_file(str(write_study(n_trials=N_TRIALS)))
    create_study(spec, postgres_url)
    for process in start_workers(
        spec.name, postgres_url, workers=1, timeout=None, log_trials=False
    ):
        process.join(timeout=300)
    best = optuna.load_study(study_name=study_name, storage=postgres_url).best_trial

    port = free_port()
    server = subprocess.Popen(
        [*hpsearch_command(), "dashboard", "--storage", postgres_url, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    refused: list[str] = []

    def local_only(route: Route) -> None:
        if route.request.url.startswith(base):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    try:
        summaries = get_json(f"{base}/api/studies")["study_summaries"]
        (study_id,) = [s["study_id"] for s in summaries if s["study_name"] == study_name]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.route("**/*", local_only)
                page.goto(f"{base}/dashboard/studies/{study_id}")

                # The best trial's card: its number, then its value.
                heading = f"Best Trial (number={best.number})"
                page.get_by_text(heading).wait_for(timeout=60_000)
                text = page.inner_text("body")
                after = text[text.index(heading) + len(heading) :]
                shown = re.search(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", after)
                assert shown is not None, after[:200]
                assert float(shown.group()) == best.value

                # The study page's trial list (its "Trials (List)" tab) counts the trials.
                page.goto(f"{base}/dashboard/studies/{study_id}/trials")
                page.get_by_text(f"{N_TRIALS} Trials", exact=True).wait_for(timeout=60_000)

                # The study file is the study's note (its "Note" tab).
                page.goto(f"{base}/dashboard/studies/{study_id}/note")
                page.get_by_text("[space.x]").wait_for(timeout=60_000)
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert refused == []  # the dashboard works without the network
