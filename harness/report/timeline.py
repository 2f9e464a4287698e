"""The delivery timeline: per party, lines sent and received per interval of time.

One panel per party on one linear time axis (from the first event to the last, cut into
`BINS` intervals). Above a panel's axis: the lines it sent in each interval. Below it:
the lines it received, stacked by sender in the sender's colour, then what it should
have received from messages sent in that interval but lost (red) or got damaged
(orange). A green tick under the axis marks an interval in which the party both sent and
received: the picture behind the duplex verdict. Full duplex shows bars above and below
the same stretch of axis; a chat box that takes turns (half duplex) alternates them; a
simplex one has a party whose panel only ever goes one way.
"""

from __future__ import annotations

from harness.report import svg
from harness.report.history import DAMAGED, DELIVERED, LOST, History

BINS = 80  # intervals: fine enough to see turns, coarse enough to count at a glance
WIDTH = 900
LEFT = 150  # party name and totals
PANEL = 120  # height of one party's panel
HALF = 44  # bar height for the busiest interval, each side of the axis


def counts(history: History) -> tuple[float, float, dict[str, dict[str, list[int]]]]:
    """(start, step, party -> series -> per-interval counts); series are "sent",
    "from <sender>", LOST and DAMAGED."""
    start, end = history.start, history.end
    step = (end - start) / BINS or 1.0

    def b(t: float) -> int:
        return min(BINS - 1, max(0, int((t - start) / step)))

    table: dict[str, dict[str, list[int]]] = {
        p: {"sent": [0] * BINS, LOST: [0] * BINS, DAMAGED: [0] * BINS} for p in history.parties
    }
    for m in history.messages:
        table[m.sender]["sent"][b(m.t)] += 1
        for d in m.deliveries:
            series = table[d.receiver]
            if d.outcome == DELIVERED and d.t is not None:
                series.setdefault(f"from {m.sender}", [0] * BINS)[b(d.t)] += 1
            elif d.outcome in (LOST, DAMAGED):
                # Where it should have arrived: the interval it was sent in.
                series[d.outcome][b(m.t if d.t is None else d.t)] += 1
    return start, step, table


def timeline_svg(history: History, title: str, uid: str = "tl") -> str:
    """The timeline as a standalone SVG document; ``uid`` prefixes its ids."""
    start, step, table = counts(history)
    colour = svg.colours(history.parties)
    plot = WIDTH - LEFT - 20
    bar = plot / BINS
    body = [svg.text(10, 20, title, size=14, weight="bold")]
    body.append(
        svg.text(
            10,
            38,
            "above the axis: lines sent; below: lines received (by sender), lost (red), "
            "damaged (orange); green: sent and received in the same interval",
            size=11,
            fill=svg.GREY,
        )
    )
    top = 52.0
    for party in history.parties:
        series = table[party]
        received = [k for k in series if k.startswith("from ")]
        down = [sum(series[k][i] for k in [*received, LOST, DAMAGED]) for i in range(BINS)]
        peak = max([1, *series["sent"], *down])
        axis = top + PANEL / 2
        sent_total = sum(series["sent"])
        got_total = sum(sum(series[k]) for k in received)
        lost_total, damaged_total = sum(series[LOST]), sum(series[DAMAGED])
        busy = [i for i in range(BINS) if series["sent"][i] or down[i]]
        both = [i for i in busy if series["sent"][i] and down[i] - series[LOST][i]]
        body.append(svg.text(10, axis - 22, party, size=14, weight="bold", fill=colour[party]))
        body.append(svg.text(10, axis - 6, f"sent {sent_total}", size=11))
        body.append(svg.text(10, axis + 8, f"received {got_total}", size=11))
        if lost_total or damaged_total:
            body.append(
                svg.text(
                    10,
                    axis + 22,
                    f"lost {lost_total}, damaged {damaged_total}",
                    size=11,
                    fill=svg.LOST_COLOUR,
                    weight="bold",
                )
            )
        body.append(
            svg.text(
                10,
                axis + 36,
                f"both ways in {len(both)} of {len(busy)} busy",
                size=10,
                fill=svg.GREY,
            )
        )
        body.append(
            f'<rect x="{LEFT}" y="{top + 4}" width="{plot}" height="{PANEL - 8}" '
            f'fill="#fafafa" stroke="#e0e0e0"/>'
        )
        for i in range(BINS):
            bx = LEFT + i * bar
            lo = start + i * step
            n = series["sent"][i]
            if n:
                h = HALF * n / peak
                body.append(
                    f'<rect x="{bx + 0.5:.1f}" y="{axis - h:.1f}" width="{bar - 1:.1f}" '
                    f'height="{h:.1f}" fill="{colour[party]}"><title>{party} sent {n} in '
                    f"{lo:.3f}-{lo + step:.3f} s</title></rect>"
                )
            y = axis
            for key in [*received, LOST, DAMAGED]:
                n = series[key][i]
                if not n:
                    continue
                h = HALF * n / peak
                fill = (
                    svg.LOST_COLOUR
                    if key == LOST
                    else svg.DAMAGED_COLOUR
                    if key == DAMAGED
                    else colour.get(key[5:], svg.GREY)
                )
                what = f"received {n} {key}" if key.startswith("from ") else f"{n} {key}"
                body.append(
                    f'<rect x="{bx + 0.5:.1f}" y="{y:.1f}" width="{bar - 1:.1f}" '
                    f'height="{h:.1f}" fill="{fill}" fill-opacity="0.75"><title>{party} '
                    f"{what} in {lo:.3f}-{lo + step:.3f} s</title></rect>"
                )
                y += h
        for i in both:
            body.append(
                f'<rect x="{LEFT + i * bar:.1f}" y="{axis - 1.5:.1f}" width="{bar:.1f}" '
                f'height="3" fill="#43a047"/>'
            )
        body.append(svg.line(LEFT, axis, LEFT + plot, axis, "#616161"))
        top += PANEL
    span = step * BINS
    digits = 1 if span >= 10 else 2 if span >= 1 else 3 if span >= 0.1 else 4
    for k in range(0, 11):
        tx = LEFT + plot * k / 10
        body.append(svg.line(tx, top, tx, top + 5, "#616161"))
        body.append(
            svg.text(tx, top + 18, f"{start + span * k / 10:.{digits}f}s", size=10, anchor="middle")
        )
    body.append(
        svg.text(
            LEFT + plot,
            top + 34,
            f"one bar = {step * 1000:.1f} ms",
            size=10,
            fill=svg.GREY,
            anchor="end",
        )
    )
    return svg.document(WIDTH, top + 44, body, title, uid) + "\n"
