"""SVG pieces the pictures share: colours per party, text, markers, a document frame.

The pictures are plain SVG 1.1 with no scripts, no fonts to fetch and no external files,
so they open the same in a browser, inline in the HTML report, and in ``rsvg-convert``.
"""

from __future__ import annotations

from html import escape

# Party colours (colour-blind safe where it matters: the fates below are never one of
# these): blue, green, purple, brown, pink, teal, olive.
COLOURS = ["#1f5fa8", "#2e7d32", "#6a3d9a", "#8c564b", "#c2185b", "#00838f", "#827717"]
LOST_COLOUR = "#c62828"
DAMAGED_COLOUR = "#ef6c00"
DUPLICATE_COLOUR = "#7b1fa2"
HIGHLIGHT = "#fff176"
GREY = "#757575"
FONT = "DejaVu Sans, Verdana, Arial, sans-serif"


def colours(parties: list[str]) -> dict[str, str]:
    return {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(parties)}


def attr(value: object) -> str:
    return escape(str(value), quote=True)


def text(
    x: float,
    y: float,
    body: str,
    *,
    size: float = 11,
    fill: str = "#212121",
    anchor: str = "start",
    weight: str = "normal",
    halo: bool = False,
    extra: str = "",
) -> str:
    """One line of text; ``halo`` paints a white outline under it, so a label stays
    readable where arrows cross it."""
    style = ' stroke="#ffffff" stroke-width="3" paint-order="stroke"' if halo else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{fill}" '
        f'text-anchor="{anchor}" font-weight="{weight}"{style}{extra}>{escape(body)}</text>'
    )


def line(x1: float, y1: float, x2: float, y2: float, stroke: str, extra: str = "") -> str:
    return (
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}"{extra}/>'
    )


def arrow_marker(uid: str, name: str, fill: str) -> str:
    return (
        f'<marker id="{uid}-{name}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto-start-reverse" markerUnits="userSpaceOnUse">'
        f'<path d="M0,0 L10,5 L0,10 z" fill="{fill}"/></marker>'
    )


def cross(x: float, y: float, size: float = 5, stroke: str = LOST_COLOUR) -> str:
    """The mark of a lost message: where it vanished."""
    return (
        f'<path d="M{x - size:.1f},{y - size:.1f} L{x + size:.1f},{y + size:.1f} '
        f'M{x - size:.1f},{y + size:.1f} L{x + size:.1f},{y - size:.1f}" '
        f'stroke="{stroke}" stroke-width="2.5"/>'
    )


def diamond(x: float, y: float, size: float = 5, fill: str = DAMAGED_COLOUR) -> str:
    """The mark of a damaged message: it arrived, but broken."""
    return (
        f'<path d="M{x:.1f},{y - size:.1f} L{x + size:.1f},{y:.1f} L{x:.1f},{y + size:.1f} '
        f'L{x - size:.1f},{y:.1f} z" fill="{fill}" stroke="#ffffff" stroke-width="1"/>'
    )


def document(width: float, height: float, body: list[str], title: str, uid: str) -> str:
    """A standalone SVG document (also valid inline in HTML)."""
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" id="{uid}" width="{width:.0f}" '
            f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
            f'font-family="{FONT}" role="img" aria-label="{attr(title)}">',
            f"<title>{escape(title)}</title>",
            f'<rect width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>',
            *body,
            "</svg>",
        ]
    )
