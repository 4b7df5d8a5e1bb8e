"""``hpsearch report``: one self-contained HTML file that shows how a study went.

The figures are Optuna's own (``optuna.visualization``, plotly). plotly.js is inlined once in
the page's head and every figure refers to it, so the file opens without network access and
does not carry the 4.8 MB library once per figure.
"""

from __future__ import annotations

import datetime as dt
import html
import importlib.metadata
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.objectives.command import describe_objective
from hpsearch.search.results._export import write_atomically
from hpsearch.search.results._status import compute_lines, status_document
from hpsearch.search.runtime._budget import worker_of
from hpsearch.search.spec._study_file import StudySpec

# Section ids, in page order; a figure's div is "plot-<id>" ("plot-<id>-<k>" for the k-th
# objective of a multi-objective study).
SECTIONS = ("history", "intermediate", "importances", "parallel", "slice", "pareto", "trials")
_TITLES = {
    "history": "Optimization history",
    "intermediate": "Intermediate values (learning curves)",
    "importances": "Parameter importances",
    "parallel": "Parallel coordinates",
    "slice": "Slice plots",
    "pareto": "Pareto front",
    "trials": "Trials",
}
# The modebar's plotly logo links out; keep the page free of anything that points elsewhere.
_PLOT_CONFIG = {"responsive": True, "displaylogo": False}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2rem; } .meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
p.missing { color: #8a5a00; background: #fff7e0; padding: 0.5rem; border-radius: 4px; }
section { margin-top: 2rem; }
"""


@dataclass(frozen=True)
class _Target:
    """One objective to plot: its name and, with several objectives, how to read it."""

    index: int
    name: str
    read: Callable[[FrozenTrial], float] | None


def _targets(spec: StudySpec) -> list[_Target]:
    if len(spec.directions) == 1:
        return [_Target(0, spec.metrics[0], None)]
    return [_Target(i, metric, _reader(i)) for i, metric in enumerate(spec.metrics)]


def _reader(index: int) -> Callable[[FrozenTrial], float]:
    def read(trial: FrozenTrial) -> float:
        return float(trial.values[index])

    return read


def _lower_is_better(target: _Target, spec: StudySpec) -> Callable[[FrozenTrial], float] | None:
    """Optuna's default importance evaluator (PED-ANOVA) ranks by how params reach LOW values
    of a given target: negate a maximized one. Without a target it follows the direction."""
    read = target.read
    if read is None or spec.directions[target.index] == "minimize":
        return read
    return lambda trial: -read(trial)


def _figure_html(figure: Any, div_id: str) -> str:
    text: str = figure.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, config=_PLOT_CONFIG
    )
    return text


def _missing(reason: str) -> str:
    return f'<p class="missing">{html.escape(reason)}</p>'


def _div_id(section: str, target: _Target, several: bool) -> str:
    return f"plot-{section}-{target.index}" if several else f"plot-{section}"


def _per_target(
    section: str,
    spec: StudySpec,
    plot: Callable[[_Target], Any],
) -> str:
    targets = _targets(spec)
    several = len(targets) > 1
    parts = []
    for target in targets:
        if several:
            parts.append(f"<h3>{html.escape(target.name)}</h3>")
        try:
            parts.append(_figure_html(plot(target), _div_id(section, target, several)))
        except (ValueError, RuntimeError) as err:
            # Optuna refuses some studies (e.g. importances when no parameter ever varied).
            parts.append(_missing(f"Optuna could not draw this plot: {err}"))
    return "\n".join(parts)


def _section_body(section: str, study: optuna.Study, spec: StudySpec) -> str | None:
    """The HTML inside one section, or None when the section does not apply to this study."""
    from optuna import visualization as vis

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    several = len(spec.directions) > 1
    if section == "pareto" and not several:
        return None
    if section != "intermediate" and not complete:
        return _missing("No completed trial yet: nothing to plot.")
    if section == "history":
        return _per_target(
            section,
            spec,
            lambda t: vis.plot_optimization_history(study, target=t.read, target_name=t.name),
        )
    if section == "intermediate":
        if several:
            return _missing("Multi-objective trials report no intermediate values (Optuna).")
        if not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            return _missing("No trial reported intermediate values (trial.report) yet.")
        return _figure_html(vis.plot_intermediate_values(study), "plot-intermediate")
    if not any(t.params for t in complete):
        return _missing("The study has no search space: no parameter to plot.")
    if section == "importances":
        if len(complete) < 2:
            return _missing(
                f"Parameter importances need at least 2 completed trials; {len(complete)} so far."
            )
        return _per_target(
            section,
            spec,
            lambda t: vis.plot_param_importances(
                study, target=_lower_is_better(t, spec), target_name=t.name
            ),
        )
    if section == "parallel":
        return _per_target(
            section,
            spec,
            lambda t: vis.plot_parallel_coordinate(study, target=t.read, target_name=t.name),
        )
    if section == "slice":
        return _per_target(
            section, spec, lambda t: vis.plot_slice(study, target=t.read, target_name=t.name)
        )
    if section == "pareto":
        if len(spec.directions) > 3:
            return _missing("Optuna draws Pareto fronts of 2 or 3 objectives only.")
        return _figure_html(vis.plot_pareto_front(study, target_names=spec.metrics), "plot-pareto")
    return _trials_table(study, spec)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _trials_table(study: optuna.Study, spec: StudySpec) -> str:
    # Unclaimed budget slots (WAITING) are not trials yet.
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    if not trials:
        return _missing("No trial has started yet.")
    names = sorted({name for t in trials for name in t.params})
    header = ["trial", "state", *spec.metrics, *names, "seconds", "host"]
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for t in trials:
        values = list(t.values) if t.values is not None else [None] * len(spec.metrics)
        seconds = round(t.duration.total_seconds(), 1) if t.duration is not None else None
        cells = [
            t.number,
            t.state.name.lower(),
            *values,
            *(t.params.get(n) for n in names),
            seconds,
            worker_of(t)["host"],
        ]
        rows.append(
            "<tr>"
            + "".join(
                f'<td class="num">{html.escape(_cell(c))}</td>'
                if isinstance(c, int | float) and not isinstance(c, bool)
                else f"<td>{html.escape(_cell(c))}</td>"
                for c in cells
            )
            + "</tr>"
        )
    return '<table id="trials-table">\n' + "\n".join(rows) + "\n</table>"


def _summary(study: optuna.Study, spec: StudySpec) -> str:
    doc = status_document(study, spec)
    budget, states = doc["budget"], doc["states"]
    goals = ", ".join(f"{d} {m}" for d, m in zip(spec.directions, spec.metrics, strict=True))
    items = [
        f"Objective <code>{html.escape(describe_objective(spec.objective))}</code>: {html.escape(goals)}",
        f"Budget: {budget['used']} of {budget['n_trials']} trials used"
        + "".join(f"; {html.escape(line)}" for line in compute_lines(budget)),
        "States: " + html.escape(", ".join(f"{v} {k}" for k, v in states.items())),
    ]
    for best in doc["best"][:10]:
        values = ", ".join(
            f"{m} = {v:.6g}" for m, v in zip(spec.metrics, best["values"], strict=True)
        )
        items.append(
            f"Best trial {best['trial']}: {html.escape(values)} "
            f"<code>{html.escape(str(best['params']))}</code>"
        )
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def build_report(study: optuna.Study, spec: StudySpec) -> str:
    """The whole page as one string."""
    from plotly.offline import get_plotlyjs

    sections = []
    with warnings.catch_warnings():
        # Optuna marks several plots experimental; the report is no place for the warning.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # PED-ANOVA warns that a given target is minimized: _lower_is_better sees to that.
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
        for section in SECTIONS:
            body = _section_body(section, study, spec)
            if body is not None:
                sections.append(
                    f'<section id="{section}">\n<h2>{_TITLES[section]}</h2>\n{body}\n</section>'
                )
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    title = html.escape(f"hpsearch report: {spec.name}")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>{title}</title>",
            f"<style>{_CSS}</style>",
            f'<script type="text/javascript">{get_plotlyjs()}</script>',
            "</head>",
            "<body>",
            f"<h1>{title}</h1>",
            f'<p class="meta">Generated {html.escape(generated)} by hpsearch '
            f"{_version('hpsearch')} with Optuna {_version('optuna')}.</p>",
            _summary(study, spec),
            *sections,
            "</body>",
            "</html>",
            "",
        ]
    )


def write_report(study: optuna.Study, spec: StudySpec, path: str) -> None:
    write_atomically(path, build_report(study, spec))
