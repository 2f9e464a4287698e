"""The report's pictures and HTML, drawn from synthetic transcripts checked by the real checks.

A transcript is plain data, so each fate a picture must show (delivered, lost, damaged,
duplicated, a quiet gap, a 100,000-line run) is built exactly; the checks that judge it
are the harness's own, so the offender the pictures highlight is the one a run reports.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from needs import needs

from harness.checks import run_checks
from harness.report import RunResult, build, html_report, sequence_svg, timeline_svg
from harness.report.sequence import FULL_EVENTS
from harness.report.svg import LOST_COLOUR
from harness.tokens import make
from harness.transcript import Expectation, PartyLog, RunRecord

SVG = "{http://www.w3.org/2000/svg}"


def record(
    messages: int,
    lose: set[int] = frozenset(),  # type: ignore[assignment]
    gap_after: int | None = None,
    damage: set[int] = frozenset(),  # type: ignore[assignment]
    twice: set[int] = frozenset(),  # type: ignore[assignment]
) -> RunRecord:
    """p1 and p2 each send ``messages`` lines to the other, 1 ms apart, each arriving
    0.5 ms later through a relay that decorates it, except p1's lines numbered in
    ``lose`` (never arrive), ``damage`` (arrive cut short) and ``twice`` (arrive twice);
    ``gap_after``: 3 s of quiet after that many lines."""
    rec = RunRecord("duplex", seed=1, duration=1.0)
    for name in ("p1", "p2"):
        rec.parties[name] = PartyLog(name, command=f"client {name}")
    rec.expectations = [Expectation("p2", ["p1"]), Expectation("p1", ["p2"])]
    t = 0.1
    for seq in range(1, messages + 1):
        if gap_after is not None and seq == gap_after + 1:
            t += 3.0
        for sender, receiver in (("p1", "p2"), ("p2", "p1")):
            token = make(sender, seq, f"hello number {seq} from {sender} to {receiver}")
            rec.parties[sender].add_sent(t, token)
            line = f"<user> {token.encode()}"
            if sender == "p1" and seq in lose:
                continue
            if sender == "p1" and seq in damage:
                line = line[:-12]
            rec.parties[receiver].add_received(t + 0.0005, line)
            if sender == "p1" and seq in twice:
                rec.parties[receiver].add_received(t + 0.0007, line)
        t += 0.001
    rec.duration = t + 0.5
    return rec


def result_of(rec: RunRecord) -> RunResult:
    return RunResult(rec.scenario, 1, rec, run_checks(rec))


def texts(svg: str) -> list[str]:
    return ["".join(e.itertext()) for e in ET.fromstring(svg).iter(f"{SVG}text")]


def draw(rec: RunRecord) -> tuple[RunResult, str]:
    result = result_of(rec)
    return result, sequence_svg(build(rec, result.checks), "test")


def test_sequence_labels_every_message_and_marks_the_lost_one_first_offending() -> None:
    result, svg = draw(record(12, lose={4, 9}))
    labels = texts(svg)
    for sender in ("p1", "p2"):
        for seq in range(1, 13):
            # the send arrow: sender#seq and the start of its text
            assert any(t.startswith(f"{sender}#{seq} hello number {seq}") for t in labels)
    # every arrival has a label at its head; the lost ones end in a cross at the server
    assert labels.count("p1#3") == 1 and "p1#4" not in labels
    assert "p1#4 lost: never reached p2" in labels and "p1#9 lost: never reached p2" in labels
    crosses = svg.count(f'stroke="{LOST_COLOUR}" stroke-width="2.5"/>')
    assert crosses == 3  # the legend's, and one at the server for each lost message
    offender = next(c.offender for c in result.checks if c.failed)
    assert offender == "p1#4"
    assert "◀ first offending message: no loss" in labels
    assert svg.count('fill="#fff176"') >= 2  # the legend's swatch and the offender's band


def test_sequence_marks_damage_and_duplicates_apart_from_deliveries() -> None:
    _, svg = draw(record(6, damage={2}, twice={5}))
    labels = texts(svg)
    assert any(t.startswith("p1#2 damaged: broken token") for t in labels)
    assert "p1#5 again (duplicate)" in labels
    assert "p1#2 lost: never reached p2" not in labels  # it arrived, broken: not lost


def test_a_quiet_stretch_is_elided_with_its_length() -> None:
    _, with_gap = draw(record(10, gap_after=5))
    _, without = draw(record(10))
    assert any("3.00" in t and "s without events" in t for t in texts(with_gap))
    height = float(ET.fromstring(with_gap).get("height", "0"))
    # Three quiet seconds cost one band, not three seconds of axis.
    assert height < float(ET.fromstring(without).get("height", "0")) + 60


def test_a_long_run_is_a_window_around_the_first_failure_and_counts_for_the_rest() -> None:
    rec = record(25_001, lose={15_000})
    assert sum(len(p.lines) for p in rec.parties.values()) >= 100_000
    result = result_of(rec)
    t0 = time.monotonic()
    history = build(rec, result.checks)
    svg = sequence_svg(history, "long run")
    timeline = timeline_svg(history, "long run")
    page = html_report([result], "python -m harness.run")
    took = time.monotonic() - t0
    labels = texts(svg)
    assert "p1#15000 lost: never reached p2" in labels
    assert any(t.startswith("Before the window: ") for t in labels)
    assert any(t.startswith("After the window: ") for t in labels)
    assert any(t.startswith("Shown in full: events") for t in labels)
    assert sum(1 for t in labels if t.endswith(" delivered")) >= 4  # interval counts
    assert sum(1 for t in labels if "#" in t) < 2 * FULL_EVENTS  # not 100,000 labels
    assert len(svg) < 600_000 and len(timeline) < 200_000 and len(page) < 3_000_000
    assert took < 60, took  # generous: a shared, loaded machine
    sizes = f"svg {len(svg)} B, timeline {len(timeline)} B, html {len(page)} B"
    print(f"100k lines: {sizes}, {took:.2f} s")


def test_timeline_counts_each_partys_lines_per_direction() -> None:
    rec = record(30, lose={3, 4})
    svg = timeline_svg(build(rec, result_of(rec).checks), "t")
    labels = texts(svg)
    assert labels.count("sent 30") == 2
    assert "received 28" in labels and "received 30" in labels
    assert "lost 0, damaged 0" not in labels
    assert any(t.startswith("both ways in ") for t in labels)


def test_html_links_the_offender_to_its_transcript_line() -> None:
    rec = record(8, lose={4})
    page = html_report([result_of(rec)], "python -m harness.run --messages 8")
    index = rec.parties["p1"].sent[3].index
    assert f'href="#r1-p1-L{index}">p1#4</a>' in page
    assert f'id="r1-p1-L{index}"' in page
    assert "python -m harness.run --messages 8" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


@needs(None if shutil.which("rsvg-convert") else "rsvg-convert (librsvg2-bin) is not installed")
def test_the_pictures_render(tmp_path: Path) -> None:
    rec = record(20, lose={4}, damage={7}, twice={9}, gap_after=10)
    history = build(rec, result_of(rec).checks)
    for name, svg in (("seq", sequence_svg(history, "t")), ("tl", timeline_svg(history, "t"))):
        (tmp_path / f"{name}.svg").write_text(svg)
        subprocess.run(
            ["rsvg-convert", str(tmp_path / f"{name}.svg"), "-o", str(tmp_path / f"{name}.png")],
            check=True,
            timeout=60,
        )
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
