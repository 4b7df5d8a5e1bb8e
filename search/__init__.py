"""What to try and who runs it: the study file (spec/), the worker runtime (runtime/), what a
study produced (results/) and the command line (cli/); ``_study`` creates and loads studies."""

from __future__ import annotations

from hpsearch.errors import HpsearchError, SpecError
from hpsearch.search._study import LoadedStudy, create_study, load_study, study_summaries
from hpsearch.search.results import export_document, render, status_document
from hpsearch.search.runtime import BudgetState, budget_state, start_workers
from hpsearch.search.spec import StudySpec, load_spec_file, parse_spec

__all__ = [
    "BudgetState",
    "HpsearchError",
    "LoadedStudy",
    "SpecError",
    "StudySpec",
    "budget_state",
    "create_study",
    "export_document",
    "load_spec_file",
    "load_study",
    "parse_spec",
    "render",
    "start_workers",
    "status_document",
    "study_summaries",
]
