"""Reports: what a person (or a CI system) sees of a run.

`progress` while it runs, `terminal.summary` at the end, `formats` for ``--json`` and
``--junit``, `html` for ``--html FILE``, `artifacts` for ``--artifacts DIR`` (transcripts,
pictures, the HTML report). The pictures - `sequence` (the sequence diagram) and
`timeline` (deliveries per interval) - draw one `history` of the run, with `svg`'s pieces.
"""

from __future__ import annotations

from harness.report.artifacts import write_artifacts
from harness.report.formats import to_json, to_junit, write
from harness.report.history import History, build
from harness.report.html import html_report
from harness.report.progress import Progress
from harness.report.result import RunResult
from harness.report.sequence import sequence_svg
from harness.report.terminal import summary
from harness.report.timeline import timeline_svg

__all__ = [
    "History",
    "Progress",
    "RunResult",
    "build",
    "html_report",
    "sequence_svg",
    "summary",
    "timeline_svg",
    "to_json",
    "to_junit",
    "write",
    "write_artifacts",
]
