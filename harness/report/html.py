"""The HTML report: one self-contained file a person opens to see what went wrong.

``--html FILE`` and ``index.html`` in ``--artifacts DIR``. It leads with the verdict and
the cause, then per run the table of checks with each first offending message linked to
its line in the transcript, the sequence diagram and the delivery timeline inline, each
party's transcript (offending lines marked and anchored), the server's stderr, the
impairment log and the notes; the command line that made the run is at the top. With
``--repeat`` every run is listed, flaky checks marked, and the failed runs shown in full.

Self-contained: inline CSS and SVG, no scripts, no fonts or images fetched, so it opens
from a CI artifact or a mail attachment without a network. Long transcripts keep their
head, tail and the lines around every marked line; the whole ones are the ``.log`` files
of ``--artifacts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from harness.checks import FAIL, NOT_APPLICABLE, PASS
from harness.report.history import History, build, parse_offender
from harness.report.result import RunResult
from harness.report.sequence import sequence_svg
from harness.report.terminal import where_lines
from harness.report.timeline import timeline_svg
from harness.transcript import NOTE, SENT

DETAILED_RUNS = 5  # runs drawn in full with --repeat (failed ones first): keeps it small
TRANSCRIPT_FULL = 3000  # a transcript up to this many lines is shown whole
KEEP_ENDS = 100  # otherwise its first and last lines,
KEEP_AROUND = 30  # and this many on each side of a marked line
STDERR_FULL = 2000  # server stderr lines shown whole; beyond, head and tail of half each

STYLE = """
body{font:14px/1.45 'DejaVu Sans',Verdana,Arial,sans-serif;margin:0;color:#212121;background:#fff}
main{padding:0 20px 40px}
header{padding:14px 20px;color:#fff}
header.fail{background:#b71c1c} header.pass{background:#2e7d32} header.flaky{background:#e65100}
header h1{margin:0;font-size:30px;letter-spacing:1px}
header p{margin:4px 0 0;font-size:15px}
header .cause{font-weight:bold;font-size:16px}
h2{border-bottom:2px solid #e0e0e0;padding-bottom:3px;margin-top:26px}
h3{margin:20px 0 6px}
table{border-collapse:collapse;margin:6px 0}
td,th{border:1px solid #e0e0e0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}
td.fail{background:#ffcdd2;font-weight:bold;color:#b71c1c}
td.pass{color:#2e7d32} td.na{color:#9e9e9e} td.flaky{background:#ffe0b2;font-weight:bold}
td.offender,.offender{background:#fff176;font-weight:bold}
code,pre{font-family:'DejaVu Sans Mono',Menlo,monospace;font-size:12px}
pre{background:#fafafa;border:1px solid #eeeeee;padding:6px 8px;overflow-x:auto;margin:4px 0}
pre.context{background:#fff8e1}
.picture{overflow:auto;border:1px solid #e0e0e0;max-height:80vh}
.picture svg{display:block}
.ln{display:block;white-space:pre}
.ln a{color:#9e9e9e;text-decoration:none;display:inline-block;min-width:4em}
.ln.sent{color:#0d47a1} .ln.note{color:#757575;font-style:italic}
.ln.mark{background:#fff176} .ln:target{background:#ffcc80;outline:2px solid #e65100}
.elided{color:#757575;font-style:italic;display:block;padding:2px 0}
summary{cursor:pointer;font-weight:bold}
.muted{color:#757575}
"""


def verdict(results: Sequence[RunResult]) -> str:
    failed = sum(1 for r in results if not r.passed)
    return PASS if failed == 0 else ("flaky" if failed < len(results) else FAIL)


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _anchor(run: int, party: str, index: int) -> str:
    return f"r{run}-{party}-L{index}"


def html_report(
    results: Sequence[RunResult], command: str, artifacts: dict[int, str] | None = None
) -> str:
    """The whole report as one HTML document.

    ``artifacts`` maps a run's number to its folder relative to the report (in
    ``--artifacts``), so the report can link the whole transcripts.
    """
    out: list[str] = []
    v = verdict(results)
    scenario = results[0].scenario if results else "no run"
    passed = sum(1 for r in results if r.passed)
    out.append("<!DOCTYPE html>")
    out.append('<html lang="en"><head><meta charset="utf-8">')
    out.append('<meta name="viewport" content="width=device-width, initial-scale=1">')
    out.append(f"<title>{_e(v.upper())}: chatbox harness, {_e(scenario)}</title>")
    out.append(f"<style>{STYLE}</style></head><body>")
    errors = [r.error for r in results if r.error]
    out.append(f'<header id="verdict" class="{"fail" if errors else v}">')
    out.append(f"<h1>{'SETUP ERROR' if errors else v.upper()}</h1>")
    out.append(
        f"<p>scenario <b>{_e(scenario)}</b>: {passed}/{len(results)} runs passed"
        + (f", seed {results[0].record.seed}" if results else "")
        + "</p>"
    )
    causes = sorted({r.cause for r in results if r.cause})
    for c in causes:
        out.append(f'<p class="cause">cause: {_e(c)}; the other failures follow from it</p>')
    for err in errors:
        out.append(f'<p class="cause">setup failed: {_e(err)}</p>')
    out.append("</header><main>")
    if len(results) > 1:
        out.extend(_runs_table(results))
    detailed = [r for r in results if not r.passed][:DETAILED_RUNS] or list(results[:1])
    for r in results:
        if r in detailed:
            out.extend(_run_section(r, artifacts.get(r.iteration) if artifacts else None))
    if len(detailed) < len(results):
        left = len(results) - len(detailed)
        out.append(f'<p class="muted">{left} more run(s) are listed above, not drawn.</p>')
    out.append('<h2 id="command">How this run was made</h2>')
    out.append(f"<pre>{_e(command)}</pre>")
    if results:
        first = results[0]
        out.append("<ul>")
        out.extend(f"<li>{_e(w)}</li>" for w in where_lines(first))
        out.append(f"<li>server command: <code>{_e(first.record.server_command)}</code></li>")
        out.append("</ul>")
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


def _runs_table(results: Sequence[RunResult]) -> list[str]:
    """--repeat: a row per run, and per check whether it failed in some runs only."""
    out = ['<h2 id="runs">Runs</h2>', "<table><tr><th>run</th><th>result</th>"]
    out.append("<th>failed checks</th><th>cause</th><th>duration</th></tr>")
    for r in results:
        failed = [c.name for c in r.checks if c.status == FAIL]
        mark = "pass" if r.passed else "fail"
        out.append(
            f'<tr><td><a href="#run{r.iteration}">run {r.iteration}</a></td>'
            f'<td class="{mark}">{mark.upper()}</td><td>{_e(", ".join(failed) or r.error)}</td>'
            f"<td>{_e(r.cause)}</td><td>{r.record.duration:.2f} s</td></tr>"
        )
    out.append("</table>")
    names = list(dict.fromkeys(c.name for r in results for c in r.checks))
    flaky = []
    for name in names:
        statuses = [r.status_of(name) for r in results]
        if 0 < statuses.count(FAIL) < len(results):
            flaky.append(f"{name} ({statuses.count(FAIL)}/{len(results)} runs fail)")
    if flaky:
        out.append(
            '<p class="flaky"><b>FLAKY</b> (fails in some runs only): '
            + _e("; ".join(flaky))
            + "</p>"
        )
    return out


def _run_section(r: RunResult, folder: str | None) -> list[str]:
    history = build(r.record, r.checks)
    n = r.iteration
    mark = "PASS" if r.passed else "FAIL"
    out = [f'<h2 id="run{n}">Run {n}: {mark}</h2>']
    if r.error:
        out.append(f'<p class="cause">setup failed: {_e(r.error)}</p>')
    out.extend(_checks_table(r, history))
    for c in r.checks:
        if c.status == FAIL and c.context:
            out.append(f"<h3>{_e(c.name)}: {_e(c.detail)}</h3>")
            out.append(f'<pre class="context">{_e(chr(10).join(c.context))}</pre>')
    if r.record.notes:
        out.append("<h3>Notes</h3><ul>")
        out.extend(f"<li>{_e(note)}</li>" for note in r.record.notes)
        out.append("</ul>")
    title = f"{r.scenario} run {n}: " + (
        "all checks pass" if r.passed else "FAILED: " + ", ".join(history.failed)
    )
    out.append(f'<h3 id="r{n}-diagram">Sequence diagram</h3>')
    out.append(f'<div class="picture">{sequence_svg(history, title, f"r{n}-seq")}</div>')
    out.append(f'<h3 id="r{n}-timeline">Delivery timeline</h3>')
    out.append(f'<div class="picture">{timeline_svg(history, title, f"r{n}-tl")}</div>')
    out.extend(_transcripts(r, history, folder))
    out.extend(_stderr(r, folder))
    if r.record.impair_log is not None:
        out.append(f'<h3 id="r{n}-impair">Impairment log</h3>')
        log = "\n".join(f"{t:10.4f} {line}" for t, line in r.record.impair_log)
        out.append(f"<pre>{_e(log) or '(the proxy said nothing)'}</pre>")
    return out


def _checks_table(r: RunResult, history: History) -> list[str]:
    by_key = history.by_key()
    n = r.iteration
    out = ['<table class="checks"><tr><th>check</th><th>result</th><th>detail</th>']
    out.append("<th>first offending message</th></tr>")
    for c in r.checks:
        css = {PASS: "pass", FAIL: "fail", NOT_APPLICABLE: "na"}.get(c.status, "")
        cell = "<td></td>"
        if c.offender:
            key = parse_offender(c.offender)
            msg = by_key.get(key) if key else None
            if msg is None:
                cell = f'<td class="offender">{_e(c.offender)}</td>'
            else:
                link = f'<a href="#{_anchor(n, msg.sender, msg.index)}">{_e(msg.name)}</a>'
                where = [
                    f'<a href="#{_anchor(n, d.receiver, d.index)}">{d.outcome} at '
                    f"{_e(d.receiver)}</a>"
                    for d in msg.deliveries
                    if d.index >= 0
                ]
                where += [f"{d.outcome} to {_e(d.receiver)}" for d in msg.deliveries if d.index < 0]
                cell = (
                    f'<td class="offender">{link} <span class="muted">sent {msg.t:.4f} s'
                    f"</span><br>{', '.join(where)}</td>"
                )
        out.append(
            f'<tr><td>{_e(c.name)}</td><td class="{css}">{_e(c.status.upper())}</td>'
            f"<td>{_e(c.detail)}</td>{cell}</tr>"
        )
    out.append("</table>")
    return out


def _marked(history: History) -> dict[str, set[int]]:
    """Transcript lines to mark per party: offenders' sends and arrivals, damage."""
    marks: dict[str, set[int]] = {p: set() for p in history.parties}
    for m in history.offenders():
        marks[m.sender].add(m.index)
        for d in m.deliveries:
            if d.index >= 0:
                marks[d.receiver].add(d.index)
    for o in history.orphans:
        marks[o.receiver].add(o.index)
    return marks


def _kept(count: int, marks: set[int]) -> list[range]:
    """Which stretches of a long transcript to show."""
    if count <= TRANSCRIPT_FULL:
        return [range(count)]
    wanted = [(0, KEEP_ENDS), (count - KEEP_ENDS, count)]
    wanted += [(max(0, i - KEEP_AROUND), min(count, i + KEEP_AROUND + 1)) for i in marks]
    wanted.sort()
    merged: list[list[int]] = []
    for a, b in wanted:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [range(a, b) for a, b in merged]


def _transcripts(r: RunResult, history: History, folder: str | None) -> list[str]:
    n = r.iteration
    marks = _marked(history)
    out = [f'<h3 id="r{n}-transcripts">Transcripts</h3>']
    out.append(
        '<p class="muted">&gt; sent, &lt; received, # noted by the harness; times in seconds '
        "since the run started; marked lines belong to an offending message.</p>"
    )
    for name, log in r.record.parties.items():
        lines = log.snapshot()
        whole = (
            f' (whole: <a href="{_e(folder)}/{_e(name)}.log">{_e(name)}.log</a>)' if folder else ""
        )
        out.append(
            f"<details open><summary>{_e(name)} on {_e(log.where)}: {len(lines)} lines"
            f"{whole}</summary>"
        )
        out.append(f'<p class="muted"><code>{_e(log.command)}</code> {_e(log.exit_status)}</p>')
        out.append("<pre>")
        shown = 0
        for stretch in _kept(len(lines), marks.get(name, set())):
            if stretch.start > shown:
                out.append(
                    f'<span class="elided">… {stretch.start - shown} lines not shown (see '
                    f"{_e(name)}.log in --artifacts) …</span>"
                )
            for i in stretch:
                line = lines[i]
                kind = {SENT: "sent", NOTE: "note"}.get(line.direction, "received")
                css = f"ln {kind} mark" if i in marks.get(name, ()) else f"ln {kind}"
                anchor = _anchor(n, name, i)
                out.append(
                    f'<span class="{css}" id="{anchor}"><a href="#{anchor}">{i}</a>'
                    f"{line.t:9.4f} {_e(line.direction)} {_e(line.text)}</span>"
                )
            shown = stretch.stop
        if shown < len(lines):
            out.append(f'<span class="elided">… {len(lines) - shown} lines not shown …</span>')
        out.append("</pre></details>")
    return out


def _stderr(r: RunResult, folder: str | None) -> list[str]:
    lines = r.server_stderr.splitlines()
    ended = r.record.server_exit or r.server_exit
    link = f' (<a href="{_e(folder)}/server.stderr">server.stderr</a>)' if folder else ""
    out = [
        f'<h3 id="r{r.iteration}-stderr">Server stderr: {len(lines)} lines, {_e(ended)}{link}</h3>'
    ]
    if len(lines) > STDERR_FULL:
        half = STDERR_FULL // 2
        left = len(lines) - STDERR_FULL
        text = "\n".join([*lines[:half], f"… {left} lines not shown …", *lines[-half:]])
    else:
        text = "\n".join(lines)
    out.append(f"<pre>{_e(text) or '(empty)'}</pre>")
    return out
