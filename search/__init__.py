"""What to try and who runs it: study files, samplers, studies, workers, export, the CLI."""

from __future__ import annotations

from search._budget import BudgetState, budget_state
from search._errors import HpsearchError, SpecError
from search._export import export_document, render
from search._spec import StudySpec, load_spec_file, parse_spec
from search._status import status_document
from search._study import LoadedStudy, create_study, load_study, study_summaries
from search._worker import start_workers

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
