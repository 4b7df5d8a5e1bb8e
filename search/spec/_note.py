"""The study spec as a note on the study, so that optuna-dashboard shows what the study searches.

optuna-dashboard keeps a study's note (Markdown) in the study's system attributes and shows it
on the study's page; ``optuna_dashboard.save_note`` writes it in that layout.
"""

from __future__ import annotations

import json
import re
from typing import Any

import optuna
import tomli_w

from hpsearch.search.spec._auto import describe
from hpsearch.search.spec._study_file import StudySpec
from hpsearch.storage._optuna_internals import save_dashboard_note

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _inline(value: Any) -> str:
    """One TOML value on one line (tomli_w spreads every array over several lines)."""
    if isinstance(value, dict):
        items = ", ".join(f"{_key(k)} = {_inline(v)}" for k, v in value.items() if v is not None)
        return f"{{ {items} }}" if items else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def spec_toml(data: dict[str, Any]) -> str:
    """A compact, readable TOML rendering of a stored spec: one table per section."""
    lines = [f"{_key(k)} = {_inline(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if not isinstance(table, dict):
            continue
        # [space] holds one table per parameter: give each its own header.
        nested = bool(table) and all(isinstance(v, dict) for v in table.values())
        groups = (
            {f"{section}.{_key(k)}": v for k, v in table.items()} if nested else {section: table}
        )
        for header, entries in groups.items():
            lines += ["", f"[{header}]"]
            lines += [f"{_key(k)} = {_inline(v)}" for k, v in entries.items() if v is not None]
    return "\n".join(lines).strip() + "\n"


def spec_note(spec: StudySpec) -> str:
    """The study spec as Markdown: a one-line summary, then the stored study file."""
    goals = ", ".join(f"{d} {m}" for d, m in zip(spec.directions, spec.metrics, strict=True))
    sampler = describe(spec) + "\n\n" if spec.sampler.name == "auto" else ""
    return (
        f"## {spec.name}\n\n"
        f"Objective `{spec.objective}`: {goals}; budget {spec.n_trials} trials.\n\n"
        f"{sampler}"
        "The study file as hpsearch stored it (user attribute `hpsearch:spec`):\n\n"
        f"```toml\n{spec_toml(spec.data)}```\n"
    )


def save_spec_note(study: optuna.Study, spec: StudySpec) -> None:
    save_dashboard_note(study, spec_note(spec))
