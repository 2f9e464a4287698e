"""``--artifacts DIR``: per-party transcripts and a sequence diagram a person can open.

Layout: ``DIR/<scenario>-run<N>/`` holding ``<party>.log`` (every line the party sent
``>``, received ``<`` or the harness noted ``#``, with its time in seconds since the run
started), ``server.stderr``, ``impair.stderr`` (only with the impairment proxy: its own
lines, such as the resets it made, timed like the transcripts), ``result.json`` and
``sequence.svg``: one lifeline per party and one for the server, one arrow per delivery
from the sender (at the time it was sent) to the receiver (at the time it arrived), and
a red arrow into the server for every delivery that never arrived. Hover an arrow to
see its message and times.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from harness.report.result import RunResult
from harness.transcript import COUNTED

MAX_ARROWS = 3000  # beyond this the picture is unreadable and the file huge
LANE = 180  # pixels between lifelines
TOP = 70
HEIGHT = 1400  # pixels for the whole run's time axis
COLOURS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def write_artifacts(directory: str, result: RunResult) -> Path:
    """Write one run's artifacts; return the run's folder.

    Error handling: OSError propagates (the runner reports it in one line).
    """
    folder = Path(directory) / f"{result.scenario}-run{result.iteration}"
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
    (folder / "sequence.svg").write_text(sequence_svg(result), encoding="utf-8")
    return folder


def sequence_svg(result: RunResult) -> str:
    """A self-contained SVG sequence diagram of the run (no scripts, no external files)."""
    rec = result.record
    names = list(rec.parties)
    half = len(names) // 2
    lanes = [*names[:half], "server", *names[half:]]
    x = {name: 90 + i * LANE for i, name in enumerate(lanes)}
    end = max([rec.duration, 0.001] + [ln.t for p in rec.parties.values() for ln in p.lines])
    scale = HEIGHT / end

    def y(t: float) -> float:
        return TOP + t * scale

    width = 90 * 2 + LANE * (len(lanes) - 1)
    height = TOP + HEIGHT + 60
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        "<defs>",
    ]
    colour = {n: COLOURS[i % len(COLOURS)] for i, n in enumerate(names)}
    for n, c in [*colour.items(), ("lost", "#d62728")]:
        out.append(
            f'<marker id="a-{escape(n)}" viewBox="0 0 10 10" refX="10" refY="5" '
            f'markerWidth="6" markerHeight="6" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{c}"/></marker>'
        )
    out.append("</defs>")
    title = f"{result.scenario} run {result.iteration}: " + (
        "all checks pass"
        if result.passed
        else "FAILED: " + ", ".join(c.name for c in result.checks if c.status == "fail")
    )
    out.append(f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>')
    for name in lanes:
        where = "" if name == "server" else rec.parties[name].where
        out.append(
            f'<text x="{x[name]}" y="{TOP - 22}" text-anchor="middle" '
            f'font-weight="bold">{escape(name)}</text>'
        )
        out.append(
            f'<text x="{x[name]}" y="{TOP - 8}" text-anchor="middle" fill="#666">'
            f"{escape(where)}</text>"
        )
        out.append(
            f'<line x1="{x[name]}" y1="{TOP}" x2="{x[name]}" y2="{TOP + HEIGHT}" '
            f'stroke="#999" stroke-dasharray="4 3"/>'
        )
    for t in range(0, 11):
        ty = TOP + HEIGHT * t / 10
        out.append(f'<text x="4" y="{ty:.1f}" fill="#999">{end * t / 10:.2f}s</text>')
    sent_at = {s.token.key: s.t for p in rec.parties.values() for s in p.sent}
    arrows = 0
    for name, log in rec.parties.items():
        for r in log.received:
            if arrows >= MAX_ARROWS:
                break
            sender = r.token.sender
            if sender not in x:
                continue
            t0 = sent_at.get(r.token.key, r.t)
            arrows += 1
            tip = f"{r.token} {sender} -> {name}: sent {t0:.4f}s, arrived {r.t:.4f}s"
            out.append(
                f'<line x1="{x[sender]}" y1="{y(t0):.1f}" x2="{x[name]}" y2="{y(r.t):.1f}" '
                f'stroke="{colour[sender]}" stroke-width="1" marker-end="url(#a-{escape(sender)})">'
                f"<title>{escape(tip)}</title></line>"
            )
    for exp in rec.expectations:
        got = {r.token.key for r in rec.party(exp.receiver).received}
        for sender in exp.senders:
            for s in rec.sent_by(sender, COUNTED):
                if s.token.key not in got and arrows < MAX_ARROWS:
                    arrows += 1
                    tip = f"LOST {s.token} {sender} -> {exp.receiver}, sent {s.t:.4f}s"
                    out.append(
                        f'<line x1="{x[sender]}" y1="{y(s.t):.1f}" x2="{x["server"]}" '
                        f'y2="{y(s.t):.1f}" stroke="#d62728" stroke-width="2" '
                        f'stroke-dasharray="3 2" marker-end="url(#a-lost)">'
                        f"<title>{escape(tip)}</title></line>"
                    )
    if arrows >= MAX_ARROWS:
        out.append(
            f'<text x="10" y="{height - 20}" fill="#d62728">only the first {MAX_ARROWS} '
            "deliveries are drawn</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"
