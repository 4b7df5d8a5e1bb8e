"""The study file: its sections, the search space, samplers and pruners, constraints, the note."""

from __future__ import annotations

from hpsearch.search.spec._samplers import build_pruner, build_sampler
from hpsearch.search.spec._study_file import StudySpec, load_spec_file, parse_spec

__all__ = ["StudySpec", "build_pruner", "build_sampler", "load_spec_file", "parse_spec"]
