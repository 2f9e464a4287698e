"""bad-input: one party sends what no well-behaved client would; nobody else notices.

Requirement: "a party sends overlong lines, invalid UTF-8, control and escape sequences,
NUL; the others are unaffected and the server survives." The bad party is byte-exact
(`harness.rawclient`, its terminal in raw mode), so the bytes reach the server as
written. It ends with a NUL line and one good token line in the same write: its own connection
must still work, and the good line must survive the NUL before it.
"""

from __future__ import annotations

from harness.scenarios.base import Context, Scenario

OVERLONG = 5000  # past this project's default --max-line of 4096

NUL_LINE = b"nul then a good line in the same write\x00lost by C-string handling\n"

# (label for the transcript, bytes sent)
BAD_LINES: list[tuple[str, bytes]] = [
    (f"overlong line ({OVERLONG} bytes)", b"x" * OVERLONG + b"\n"),
    ("invalid UTF-8", b"bad \xff\xfe \xc3( \xed\xa0\x80 end\n"),
    ("C0 controls and DEL", b"bell\x07 back\x08 vt\x0b ff\x0c del\x7f\n"),
    ("escape sequences", b"\x1b[31mred\x1b[0m \x1b]0;title\x07 \x1b[2J\x1b[H\n"),
    ("NUL bytes", b"nul\x00in\x00the\x00middle\n"),
    ("C1 controls", "c1 \u0085\u009b31m\n".encode()),
    ("CRLF line", b"crlf line\r\n"),
    ("empty lines", b"\n\n\r\n"),
    (f"{OVERLONG * 2} bytes without a newline", b"y" * (OVERLONG * 2) + b"\n"),
]


class BadInput(Scenario):
    name = "bad-input"
    summary = "a raw party sends overlong lines, bad UTF-8, escapes, NUL; others unaffected"

    def run(self, ctx: Context) -> None:
        a, b = ctx.party("p1"), ctx.party("p2")
        bad = ctx.raw_party("bad")
        ready = bad.wait_text("connected", ctx.deadline)
        if not ctx.sync_all([a, b]) or not ready:
            ctx.record.notes.append("not every party was in the room")
        ctx.expect("p1", ["p2", "bad"])
        ctx.expect("p2", ["p1", "bad"])
        ctx.record.order_group = ["p1", "p2"]
        n = ctx.options.messages
        threads = [ctx.stream(a, n, window_to=[b]), ctx.stream(b, n, window_to=[a])]
        for label, data in BAD_LINES:
            bad.send_bytes(data, ctx.deadline, label)
        # The bad party's connection must still carry a good line afterwards - handed
        # over in the same write as a NUL line, so a server that treats a read as a C
        # string (everything after the NUL gone) loses it.
        last = ctx.token("bad", "still here")
        bad.send_block(NUL_LINE, [last], ctx.deadline)
        ctx.finish_streams(threads)
        if ctx.record.specific is not None:
            ctx.specific(
                "overlong line refused",
                bad.seen_text("line too long"),
                "the bad party got '! line too long'",
            )
