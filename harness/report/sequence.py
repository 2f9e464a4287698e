"""The sequence diagram of a run: every message drawn sender -> server -> receiver.

A run's events come in millisecond bursts between seconds of quiet, so the vertical axis
is the *order* of events - one row per send, arrival or damaged line, each labelled with
its time - and a quiet stretch longer than `GAP` is drawn as a grey band that says how
long it was. A message leaves its sender horizontally at its send row, labelled
``sender#seq`` and the start of its text, reaches the server's lifeline, and goes on to
each receiver's lifeline at the row it arrived (an arrowhead, labelled ``sender#seq``).
A lost message ends in a red cross at the server, on the side of the receiver that never
got it; a damaged one ends in an orange diamond; a duplicate is a purple dashed arrow.
The first offending message of every failed check is on a yellow band and named.

A long run (more than `FULL_EVENTS` events) shows a window of `WINDOW` events around the
first offending message (or the first events, if nothing failed) in full, and the rest
as counts per interval per direction above and below it, so the picture stays a few
hundred kilobytes at 100,000 lines.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.report import svg
from harness.report.history import (
    DAMAGED,
    DELIVERED,
    DUPLICATE,
    LOST,
    Delivery,
    History,
    Message,
    Orphan,
)

ROW = 18  # pixels per event: one line of 11 px text and air
GAP_ROW = 28  # height of an elided quiet stretch
GAP = 0.25  # seconds without events that are drawn as a gap rather than rows
FULL_EVENTS = 600  # up to this many events the whole run is drawn
WINDOW = 300  # otherwise: this many events around the first failure
BEFORE = 40  # of which this many before it
SUMMARY_BINS = 8  # intervals per summary block
GUTTER = 86  # left margin for the time labels
LANE = 260  # between lifelines: room for a message label
HEAD = 96  # title, legend, lane names
RIGHT = 230  # right margin: receipt labels and the offender's tag


@dataclass
class _Event:
    t: float
    kind: int  # 0 send, 1 arrival, 2 orphan (sends first at equal times)
    message: Message | None = None
    delivery: Delivery | None = None
    orphan: Orphan | None = None


def _events(history: History) -> list[_Event]:
    events: list[_Event] = []
    for m in history.messages:
        events.append(_Event(m.t, 0, m))
        for d in m.deliveries:
            if d.t is not None:
                # Never above its own send row, whatever the clocks of two reader threads say.
                events.append(_Event(max(d.t, m.t), 1, m, d))
    events.extend(_Event(o.t, 2, orphan=o) for o in history.orphans)
    events.sort(key=lambda e: (e.t, e.kind))
    return events


def window(count: int, anchor: int) -> tuple[int, int]:
    """The events [lo, hi) drawn in full, around the event index ``anchor``."""
    if count <= FULL_EVENTS:
        return 0, count
    lo = max(0, anchor - BEFORE)
    hi = min(count, lo + WINDOW)
    return max(0, hi - WINDOW), hi


def lanes(parties: list[str]) -> list[str]:
    """Lifelines left to right: half the parties, the server, the other half."""
    half = max(1, len(parties) // 2) if len(parties) > 1 else len(parties)
    return [*parties[:half], "server", *parties[half:]]


def _summary(
    history: History, picked: list[Message], title: str, top: float, width: float
) -> tuple[list[str], float]:
    """Counts per interval per direction for messages not drawn; returns (svg, height)."""
    if not picked:
        return [], 0.0
    out = [svg.text(10, top + 16, title, size=12, weight="bold")]
    directions = [d for d in history.directions() if d[0] in {m.sender for m in picked}]
    t0, t1 = picked[0].t, picked[-1].t
    step = (t1 - t0) / SUMMARY_BINS or 1.0
    bins: list[list[Message]] = [[] for _ in range(SUMMARY_BINS)]
    for m in picked:
        bins[min(SUMMARY_BINS - 1, int((m.t - t0) / step))].append(m)
    col = max(190.0, (width - 150) / max(1, len(directions)))
    y = top + 36
    for i, (sender, receiver) in enumerate(directions):
        out.append(svg.text(150 + i * col, y, f"{sender} → {receiver}", weight="bold"))
    for b, group in enumerate(bins):
        if not group:
            continue
        y += 16
        lo, hi = t0 + b * step, t0 + (b + 1) * step
        out.append(svg.text(10, y, f"{lo:8.3f}-{hi:.3f} s", fill=svg.GREY))
        for i, (sender, receiver) in enumerate(directions):
            counts = {DELIVERED: 0, LOST: 0, DAMAGED: 0, DUPLICATE: 0}
            for m in group:
                if m.sender == sender:
                    for d in m.deliveries:
                        if d.receiver == receiver:
                            counts[d.outcome] += 1
            cell = f"{counts[DELIVERED]} delivered"
            bad = [f"{counts[k]} {k}" for k in (LOST, DAMAGED, DUPLICATE) if counts[k]]
            fill = svg.LOST_COLOUR if bad else "#212121"
            out.append(svg.text(150 + i * col, y, ", ".join([cell, *bad]), fill=fill))
    return out, y - top + 14


def _legend(uid: str, y: float) -> list[str]:
    out = [
        svg.line(10, y, 40, y, svg.COLOURS[0], f' marker-end="url(#{uid}-p0)"'),
        svg.text(46, y + 4, "delivered"),
        svg.cross(130, y),
        svg.text(142, y + 4, "lost at the server"),
        svg.diamond(270, y),
        svg.text(282, y + 4, "damaged"),
        svg.line(350, y, 380, y, svg.DUPLICATE_COLOUR, ' stroke-dasharray="5 3"'),
        svg.text(386, y + 4, "duplicate"),
        f'<rect x="460" y="{y - 7}" width="24" height="14" fill="{svg.HIGHLIGHT}"/>',
        svg.text(490, y + 4, "first offending message"),
        f'<rect x="650" y="{y - 7}" width="24" height="14" fill="#eeeeee"/>',
        svg.text(680, y + 4, "quiet gap (elided)"),
    ]
    return out


def sequence_svg(history: History, title: str, uid: str = "seq") -> str:
    """The diagram as a standalone SVG document; ``uid`` prefixes its ids (inline use)."""
    events = _events(history)
    first = history.first_offender()
    anchor = next((i for i, e in enumerate(events) if e.kind == 0 and e.message is first), 0)
    lo, hi = window(len(events), anchor if first else 0)
    shown = events[lo:hi]
    names = lanes(history.parties)
    x: dict[str, float] = {name: GUTTER + 40.0 + i * LANE for i, name in enumerate(names)}
    server_x = x["server"]
    width = max(GUTTER + 40 + LANE * (len(names) - 1) + RIGHT, 760)
    colour = svg.colours(history.parties)

    body: list[str] = ["<defs>"]
    for i, name in enumerate(history.parties):
        body.append(svg.arrow_marker(uid, f"p{i}", colour[name]))
    body.append(svg.arrow_marker(uid, "dup", svg.DUPLICATE_COLOUR))
    body.append("</defs>")
    body.append(svg.text(10, 20, title, size=14, weight="bold"))
    body.extend(_legend(uid, 42))
    marker = {name: f"p{i}" for i, name in enumerate(history.parties)}

    # Summaries of what is not drawn, above and below the window.
    drawn_sends = {id(e.message) for e in shown if e.kind == 0}
    before_ids = {id(e.message) for e in events[:lo] if e.kind == 0}
    before = [m for m in history.messages if id(m) in before_ids]
    after = [m for m in history.messages if id(m) not in drawn_sends and id(m) not in before_ids]
    top = float(HEAD)
    if before:
        note = (
            f"Before the window: {len(before)} messages ({events[0].t:.3f}-"
            f"{events[lo].t:.3f} s), counted per interval and direction"
        )
        part, h = _summary(history, before, note, top, width)
        body.extend(part)
        top += h + 10
    if lo or hi < len(events):
        around = ", around the first offending message" if first else ""
        body.append(
            svg.text(
                10,
                top + 14,
                f"Shown in full: events {lo + 1}-{hi} of {len(events)}{around}",
                size=12,
                weight="bold",
            )
        )
        top += 22

    for name in names:
        body.append(svg.text(x[name], top + 14, name, size=13, anchor="middle", weight="bold"))
    top += 24

    # Rows: y of every event index; gaps push later rows down.
    row_y: dict[int, float] = {}
    y = top + ROW / 2
    gaps: list[tuple[float, float, float]] = []  # (y, seconds, t)
    prev_t: float | None = None
    for i, e in enumerate(shown, start=lo):
        if prev_t is not None and e.t - prev_t > GAP:
            gaps.append((y - ROW / 2, e.t - prev_t, prev_t))
            y += GAP_ROW
        row_y[i] = y
        y += ROW
        prev_t = e.t
    bottom = y - ROW / 2
    send_index = {id(e.message): i for i, e in enumerate(events) if e.kind == 0}

    def y_of(i: int) -> float:
        """y of an event, extrapolated outside the window (the arrow is clipped there)."""
        if i in row_y:
            return row_y[i]
        return top - (lo - i) * ROW if i < lo else bottom + (i - hi + 1) * ROW

    # Offender bands first, under everything.
    bands: list[str] = []
    for i, e in enumerate(shown, start=lo):
        m = e.message
        if m is not None and m.offends:
            bands.append(
                f'<rect x="0" y="{row_y[i] - ROW / 2:.1f}" width="{width}" height="{ROW}" '
                f'fill="{svg.HIGHLIGHT}"/>'
            )
            if e.kind == 0:
                tag = "◀ first offending message: " + ", ".join(m.offends)
                bands.append(
                    svg.text(width - 8, row_y[i] + 4, tag, anchor="end", weight="bold", halo=True)
                )
    body.extend(bands)
    for gy, seconds, _ in gaps:
        body.append(f'<rect x="0" y="{gy:.1f}" width="{width}" height="{GAP_ROW}" fill="#eeeeee"/>')
        zig = " ".join(
            f"L{px:.1f},{gy + (6 if k % 2 else GAP_ROW - 6):.1f}"
            for k, px in enumerate(range(GUTTER, int(width) - 10, 12))
        )
        body.append(
            f'<path d="M{GUTTER - 12},{gy + GAP_ROW / 2:.1f} {zig}" fill="none" '
            f'stroke="#bdbdbd" stroke-width="1"/>'
        )
        body.append(
            svg.text(
                width / 2,
                gy + GAP_ROW / 2 + 4,
                f"⋯ {seconds:.3f} s without events ⋯",
                size=11,
                fill="#424242",
                anchor="middle",
                weight="bold",
                halo=True,
            )
        )
    # Lifelines, broken at the gaps.
    for name in names:
        spans: list[tuple[float, float]] = []
        start: float = top
        for gy, _, _ in gaps:
            spans.append((start, gy))
            start = gy + GAP_ROW
        spans.append((start, bottom))
        stroke = "#9e9e9e" if name != "server" else "#424242"
        dash = ' stroke-dasharray="4 3"' if name != "server" else ' stroke-width="2"'
        for a, b in spans:
            body.append(svg.line(x[name], a, x[name], b, stroke, dash))

    body.append(
        f'<clipPath id="{uid}-win"><rect x="0" y="{top}" width="{width}" '
        f'height="{bottom - top:.1f}"/></clipPath>'
    )
    arrows: list[str] = [f'<g clip-path="url(#{uid}-win)">']
    labels: list[str] = []
    pen = _Pen(x, server_x, colour, marker, uid, arrows, labels)
    for i, e in enumerate(shown, start=lo):
        ey = row_y[i]
        labels.append(svg.text(8, ey + 4, f"{e.t:9.4f}s", size=10, fill=svg.GREY))
        if e.kind == 0 and e.message is not None:
            _send(pen, e.message, ey)
        elif e.kind == 1 and e.message is not None and e.delivery is not None:
            sy = y_of(send_index[id(e.message)])
            _arrival(pen, e.message, e.delivery, sy, ey)
        elif e.orphan is not None:
            o = e.orphan
            labels.append(svg.diamond(x[o.receiver], ey))
            side = 1 if x[o.receiver] >= server_x else -1
            labels.append(
                svg.text(
                    x[o.receiver] + side * 10,
                    ey + 4,
                    f"damaged line: {o.why}"[:48],
                    fill=svg.DAMAGED_COLOUR,
                    anchor="start" if side > 0 else "end",
                    halo=True,
                )
            )
    arrows.append("</g>")
    body.extend(arrows)
    body.extend(labels)
    for name in names:
        body.append(svg.text(x[name], bottom + 16, name, size=12, anchor="middle", weight="bold"))
    height = bottom + 30
    if after:
        note = (
            f"After the window: {len(after)} messages ({after[0].t:.3f}-{after[-1].t:.3f} s), "
            "counted per interval and direction"
        )
        part, h = _summary(history, after, note, height, width)
        body.extend(part)
        height += h + 10
    return svg.document(width, height, body, title, uid) + "\n"


@dataclass(frozen=True)
class _Pen:
    """What every message row is drawn with: the columns, the senders' colours and arrow
    heads, and the two layers (arrows clipped to the window, labels above them)."""

    x: dict[str, float]
    server_x: float
    colour: dict[str, str]
    marker: dict[str, str]
    uid: str
    arrows: list[str]
    labels: list[str]


def _send(pen: _Pen, m: Message, y: float) -> None:
    """The send row: sender to server, labelled; crosses at the server for each loss."""
    x, server_x, colour, uid = pen.x, pen.server_x, pen.colour, pen.uid
    arrows, labels = pen.arrows, pen.labels
    sx = x[m.sender]
    lost = [d for d in m.deliveries if d.outcome == LOST]
    arrived = [d for d in m.deliveries if d.outcome != LOST]
    stroke = svg.LOST_COLOUR if lost and not arrived else colour[m.sender]
    width = "3" if m.offends else "1.6"
    dash = ' stroke-dasharray="5 3"' if lost and not arrived else ""
    arrows.append(
        f'<g id="{uid}-{m.sender}-{m.seq}">'
        + svg.line(sx, y, server_x, y, stroke, f' stroke-width="{width}"{dash}')
        + "</g>"
    )
    mid = (sx + server_x) / 2
    labels.append(svg.text(mid, y - 3, m.label(), anchor="middle", fill=stroke, halo=True))
    for d in lost:
        side = 1 if x[d.receiver] >= server_x else -1
        labels.append(svg.cross(server_x + side * 9, y))
        labels.append(
            svg.text(
                server_x + side * 19,
                y + 4,
                f"{m.name} lost: never reached {d.receiver}",
                fill=svg.LOST_COLOUR,
                anchor="start" if side > 0 else "end",
                weight="bold",
                halo=True,
            )
        )


def _arrival(pen: _Pen, m: Message, d: Delivery, sy: float, y: float) -> None:
    """Server to receiver, from the send row to the arrival row, labelled at its head."""
    x, server_x, colour, marker, uid = pen.x, pen.server_x, pen.colour, pen.marker, pen.uid
    arrows, labels = pen.arrows, pen.labels
    rx = x[d.receiver]
    side = 1 if rx >= server_x else -1
    if d.outcome == DAMAGED:
        arrows.append(
            svg.line(
                server_x,
                sy,
                rx,
                y,
                svg.DAMAGED_COLOUR,
                ' stroke-width="1.6" stroke-dasharray="2 2"',
            )
        )
        labels.append(svg.diamond(rx, y))
        body = f"{m.name} damaged: {d.why}"
        fill = svg.DAMAGED_COLOUR
    elif d.outcome == DUPLICATE:
        arrows.append(
            svg.line(
                server_x,
                sy,
                rx,
                y,
                svg.DUPLICATE_COLOUR,
                f' stroke-width="1.6" stroke-dasharray="5 3" marker-end="url(#{uid}-dup)"',
            )
        )
        body = f"{m.name} again (duplicate)"
        fill = svg.DUPLICATE_COLOUR
    else:
        width = "2.5" if m.offends else "1"
        arrows.append(
            svg.line(
                server_x,
                sy,
                rx,
                y,
                colour[m.sender],
                f' stroke-width="{width}" marker-end="url(#{uid}-{marker[m.sender]})"',
            )
        )
        body = m.name
        fill = colour[m.sender]
    labels.append(
        svg.text(
            rx + side * 8,
            y + 4,
            body[:48],
            fill=fill,
            anchor="start" if side > 0 else "end",
            halo=True,
        )
    )
