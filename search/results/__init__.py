"""What a study produced: status, the progress line, export, the HTML report, retraining."""

from __future__ import annotations

from hpsearch.search.results._export import export_document, render
from hpsearch.search.results._status import format_status, status_document

__all__ = ["export_document", "format_status", "render", "status_document"]
