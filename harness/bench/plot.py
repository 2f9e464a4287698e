"""The bench's picture: an SVG drawn here, so the bench needs no plotting library.

Two panels side by side, one line per server, log scales throughout (ratios are what
hold between machines, and equal ratios are equal distances on a log scale):
deliveries per second (duplex at 2 clients, fan-out at 10 and 100) and the p99
latency of one broadcast reaching every client (the connection ramp's steps).
INVALID figures are left out, and the legend says so.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

# Colour-blind-safe (Okabe-Ito), in the order servers are listed.
COLOURS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")

WIDTH, HEIGHT = 1000, 440
PANEL_W, PANEL_H = 380, 300
LEFT, TOP = 90, 60

Series = list[tuple[float, float]]


def throughput_series(server: dict[str, Any]) -> Series:
    points = []
    for workload in ("duplex", "fanout10", "fanout100"):
        result = server.get("workloads", {}).get(workload)
        if result and result.get("valid") and result.get("deliveries_per_s"):
            points.append((float(result["clients"]), float(result["deliveries_per_s"])))
    return points


def latency_series(server: dict[str, Any]) -> Series:
    result = server.get("workloads", {}).get("connections")
    if not result:
        return []
    return [
        (float(p["clients"]), float(p["broadcast_p99_ms"]))
        for p in result.get("steps", [])
        if p.get("broadcast_p99_ms")
    ]


def _invalid(server: dict[str, Any]) -> bool:
    return any(not r.get("valid") for r in server.get("workloads", {}).values())


class _Axis:
    """Maps a value range onto pixels, linearly or on a log10 scale."""

    def __init__(self, low: float, high: float, pixels: float, log: bool) -> None:
        self.log = log
        if log:
            low, high = math.floor(math.log10(low)), math.ceil(math.log10(high))
        else:
            high = _nice_ceiling(high)
            low = 0.0
        if high <= low:
            high = low + 1
        self.low, self.high, self.pixels = low, high, pixels

    def __call__(self, value: float) -> float:
        v = math.log10(value) if self.log else value
        return (v - self.low) / (self.high - self.low) * self.pixels

    def ticks(self) -> list[tuple[float, str]]:
        if self.log:
            return [(10.0**e, _short(10.0**e)) for e in range(int(self.low), int(self.high) + 1)]
        step = self.high / 5
        return [(step * i, _short(step * i)) for i in range(6)]


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if value <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _short(value: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:g}{suffix}"
    return f"{value:g}"


def _panel(
    x0: float,
    title: str,
    ylabel: str,
    series: dict[str, Series],
    colours: dict[str, str],
    ylog: bool,
) -> list[str]:
    out = [f'<g transform="translate({x0},{TOP})">']
    out.append(
        f'<text x="{PANEL_W / 2}" y="-24" text-anchor="middle" font-size="15">'
        f"{escape(title)}</text>"
    )
    points = [p for s in series.values() for p in s]
    if not points:
        out.append(f'<text x="{PANEL_W / 2}" y="{PANEL_H / 2}" text-anchor="middle">no data</text>')
        return [*out, "</g>"]
    xs = _Axis(min(p[0] for p in points), max(p[0] for p in points), PANEL_W, True)
    ys = _Axis(min(p[1] for p in points), max(p[1] for p in points), PANEL_H, ylog)
    out.append(f'<rect width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#888"/>')
    for value, label in xs.ticks():
        x = xs(value)
        out.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{PANEL_H}" stroke="#eee"/>')
        out.append(
            f'<text x="{x:.1f}" y="{PANEL_H + 18}" text-anchor="middle" '
            f'font-size="12">{label}</text>'
        )
    for value, label in ys.ticks():
        y = PANEL_H - ys(value)
        out.append(f'<line x1="0" y1="{y:.1f}" x2="{PANEL_W}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="-6" y="{y + 4:.1f}" text-anchor="end" font-size="12">{label}</text>')
    out.append(
        f'<text x="{PANEL_W / 2}" y="{PANEL_H + 40}" text-anchor="middle" '
        'font-size="13">clients</text>'
    )
    out.append(
        f'<text transform="translate(-62,{PANEL_H / 2}) rotate(-90)" '
        f'text-anchor="middle" font-size="13">{escape(ylabel)}</text>'
    )
    for name, pts in series.items():
        if not pts:
            continue
        colour = colours[name]
        path = " ".join(f"{xs(x):.1f},{PANEL_H - ys(y):.1f}" for x, y in sorted(pts))
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in pts:
            out.append(
                f'<circle cx="{xs(x):.1f}" cy="{PANEL_H - ys(y):.1f}" r="3.5" '
                f'fill="{colour}"><title>{escape(name)}: {y:,.4g} at {x:g}</title></circle>'
            )
    return [*out, "</g>"]


def svg(results: dict[str, Any]) -> str:
    """The whole picture for one run's results, as an SVG document."""
    servers = {n: s for n, s in results["servers"].items() if not s.get("skipped")}
    colours = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(servers)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
    ]
    parts += _panel(
        LEFT,
        "Deliveries per second",
        "deliveries/s (log)",
        {n: throughput_series(s) for n, s in servers.items()},
        colours,
        True,
    )
    parts += _panel(
        LEFT + PANEL_W + 110,
        "One broadcast reaching all: p99",
        "latency (ms, log)",
        {n: latency_series(s) for n, s in servers.items()},
        colours,
        True,
    )
    x = LEFT
    for name in servers:
        label = name + (" (some INVALID)" if _invalid(servers[name]) else "")
        parts.append(
            f'<rect x="{x}" y="{HEIGHT - 28}" width="14" height="14" fill="{colours[name]}"/>'
        )
        parts.append(f'<text x="{x + 20}" y="{HEIGHT - 16}" font-size="13">{escape(label)}</text>')
        x += 30 + 8 * len(label)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
