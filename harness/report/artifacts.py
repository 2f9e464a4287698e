"""``--artifacts DIR``: per-party transcripts, the pictures and the HTML report, on disk.

Layout: ``DIR/index.html`` (the HTML report of every run so far, `harness.report.html`)
and ``DIR/<scenario>-run<N>/`` holding ``<party>.log`` (every line the party sent ``>``,
received ``<`` or the harness noted ``#``, with its time in seconds since the run
started), ``server.stderr``, ``impair.stderr`` (only with the impairment proxy: its own
lines, such as the resets it made, timed like the transcripts), ``result.json``,
``sequence.svg`` (`harness.report.sequence`) and ``timeline.svg``
(`harness.report.timeline`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from harness.report.history import build
from harness.report.html import html_report
from harness.report.result import RunResult
from harness.report.sequence import sequence_svg
from harness.report.timeline import timeline_svg


def folder_name(result: RunResult) -> str:
    return f"{result.scenario}-run{result.iteration}"


def picture_title(result: RunResult) -> str:
    failed = [c.name for c in result.checks if c.failed]
    verdict = "all checks pass" if result.passed else "FAILED: " + ", ".join(failed)
    return f"{result.scenario} run {result.iteration}: {verdict}"


def write_artifacts(
    directory: str,
    result: RunResult,
    results: Sequence[RunResult] = (),
    command: str = "",
) -> Path:
    """Write one run's artifacts and ``index.html`` of ``results`` (the runs so far, this
    one included); return the run's folder.

    Error handling: OSError propagates (the runner reports it in one line).
    """
    folder = Path(directory) / folder_name(result)
    folder.mkdir(parents=True, exist_ok=True)
    for name, log in result.record.parties.items():
        with open(folder / f"{name}.log", "w", encoding="utf-8") as f:
            f.write(f"# party {name} on {log.where}: {log.command}\n")
            for line in log.snapshot():
                f.write(f"{line.t:10.4f} {line.direction} {line.text}\n")
    (folder / "server.stderr").write_text(result.server_stderr + "\n", encoding="utf-8")
    if result.record.impair_log is not None:
        (folder / "impair.stderr").write_text(
            "".join(f"{t:10.4f} {line}\n" for t, line in result.record.impair_log),
            encoding="utf-8",
        )
    (folder / "result.json").write_text(
        json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    history = build(result.record, result.checks)
    title = picture_title(result)
    (folder / "sequence.svg").write_text(sequence_svg(history, title), encoding="utf-8")
    (folder / "timeline.svg").write_text(timeline_svg(history, title), encoding="utf-8")
    runs = list(results) or [result]
    links = {r.iteration: folder_name(r) for r in runs}
    (Path(directory) / "index.html").write_text(html_report(runs, command, links), encoding="utf-8")
    return folder
