"""The HTML report of a failing run, as a person sees it: rendered by headless Chromium.

One real failing run (a relay that drops every 5th line) writes ``--html`` and
``--artifacts``; the browser lays the page out and the checks read its layout (boxes of
the verdict, the first offending message and the diagram, measured by the browser in a
copy of the page with a measuring script appended) and its screenshot (the verdict's red
banner and the offender's yellow highlight are on screen). The diagram is rendered by
``rsvg-convert`` and holds a label for every message the transcripts show was sent.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import tempfile
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest
from faulty_relays import Outcome, relay_cmd, run_harness
from needs import missing

WINDOW = (1200, 1800)  # the first screen a person sees (a tall monitor in portrait)
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
]
MEASURE = """<script>
const box = (el) => { if (!el) return null; const r = el.getBoundingClientRect();
  const s = getComputedStyle(el);
  return {top: r.top, left: r.left, width: r.width, height: r.height,
          visible: s.visibility !== 'hidden' && s.display !== 'none', text: el.textContent}; };
const out = document.createElement('pre'); out.id = 'layout';
out.textContent = JSON.stringify({
  verdict: box(document.getElementById('verdict')),
  offender: box(document.querySelector('td.offender')),
  diagram: box(document.getElementById('r1-seq')),
  band: box(document.querySelector('#r1-seq rect[fill="#fff176"][x="0"]'))});
document.body.appendChild(out);
</script>"""


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Outcome, Path, Path]:
    tmp = tmp_path_factory.mktemp("report")
    html, artifacts = tmp / "report.html", tmp / "artifacts"
    # broadcast, not duplex: a duplex run talks on (up to 10x --messages) until it has
    # proven full duplex, and on a loaded machine the diagram would then be too long to
    # draw whole. Here every line sent is drawn.
    out = run_harness(
        str(tmp), "--scenario", "broadcast", "--clients", "2",
        "--server-cmd", relay_cmd("drop", every=5), "--messages", "20",
        "--settle", "0.5", "--html", str(html), "--artifacts", str(artifacts),
    )  # fmt: skip
    assert out.code == 1, out.stdout + out.stderr
    return out, html, artifacts


def chromium(*args: str) -> str:
    browser = shutil.which("chromium")
    if browser is None:
        missing("chromium (Debian package chromium) is not installed")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [browser, *BROWSER_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes) into rows."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, data, width, height, channels = 8, b"", 0, 0, 4
    while pos < len(png):
        (length,), kind = struct.unpack(">I", png[pos : pos + 4]), png[pos + 4 : pos + 8]
        chunk = png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            data += chunk
        pos += 12 + length
    raw, stride, rows = zlib.decompress(data), width * channels, []
    prev = bytearray(stride)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line[j] for j in range(stride) if j % channels < 3))
        prev = line
    return width, height, rows


def count(rows: list[bytes], rgb: tuple[int, int, int], top: int, bottom: int) -> int:
    colour = bytes(rgb)
    return sum(row[i : i + 3] == colour for row in rows[top:bottom] for i in range(0, len(row), 3))


def test_the_report_of_a_failing_run_shows_verdict_offender_and_diagram(
    failing: tuple[Outcome, Path, Path], tmp_path: Path
) -> None:
    out, html, _ = failing
    offender = next(c["offender"] for c in out.report["runs"][0]["checks"] if c["status"] == "fail")
    page = html.read_text()
    assert "<script" not in page  # self-contained and inert; the measuring copy adds one
    measured = tmp_path / "measured.html"
    measured.write_text(page.replace("</body>", MEASURE + "</body>"))
    dom = chromium("--dump-dom", measured.as_uri())
    match = re.search(r'<pre id="layout">(.*?)</pre>', dom, re.S)
    assert match, dom[-2000:]
    layout = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    for name in ("verdict", "offender", "diagram", "band"):
        box = layout[name]
        assert box and box["visible"] and box["width"] > 50 and box["height"] > 10, (name, box)
        assert box["top"] < WINDOW[1] and box["left"] < WINDOW[0], (name, box)  # first screen
    assert layout["verdict"]["text"].strip().startswith("FAIL")
    assert offender in layout["offender"]["text"]
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", html.as_uri())
    width, height, rows = pixels(shot.read_bytes())
    assert (width, height) == WINDOW
    assert count(rows, (0xB7, 0x1C, 0x1C), 0, 100) > 20_000  # the red FAIL banner
    assert count(rows, (0xFF, 0xF1, 0x76), 100, height) > 2_000  # the offender highlighted


def test_the_diagram_renders_and_labels_every_message_sent(
    failing: tuple[Outcome, Path, Path], tmp_path: Path
) -> None:
    _, _, artifacts = failing
    folder = artifacts / "broadcast-run1"
    assert (artifacts / "index.html").read_text().count('id="r1-seq"') == 1
    converter = shutil.which("rsvg-convert")
    if converter is None:
        missing("rsvg-convert (Debian package librsvg2-bin) is not installed")
    png = tmp_path / "sequence.png"
    subprocess.run([converter, str(folder / "sequence.svg"), "-o", str(png)], check=True)
    _, height, rows = pixels(png.read_bytes())
    assert height > 300 and count(rows, (0xC6, 0x28, 0x28), 0, height) > 50  # red crosses
    labels = [
        "".join(e.itertext())
        for e in ET.parse(folder / "sequence.svg").iter("{http://www.w3.org/2000/svg}text")
    ]
    sent = []
    for log in folder.glob("p*.log"):
        sent += re.findall(r" > ~cbx\|(\w+)\|(\d+)\|[me]\|", log.read_text())
    assert len(sent) >= 40
    for sender, seq in sent:
        assert any(t.startswith(f"{sender}#{seq} ") for t in labels), f"{sender}#{seq}"
