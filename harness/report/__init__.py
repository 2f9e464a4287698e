"""Reports: what a person (or a CI system) sees of a run.

`progress` while it runs, `terminal.summary` at the end, `formats` for ``--json`` and
``--junit``, `artifacts` for ``--artifacts DIR`` (transcripts and a sequence diagram).
"""

from __future__ import annotations

from harness.report.artifacts import sequence_svg, write_artifacts
from harness.report.formats import to_json, to_junit, write
from harness.report.progress import Progress
from harness.report.result import RunResult
from harness.report.terminal import summary

__all__ = [
    "Progress",
    "RunResult",
    "sequence_svg",
    "summary",
    "to_json",
    "to_junit",
    "write",
    "write_artifacts",
]
