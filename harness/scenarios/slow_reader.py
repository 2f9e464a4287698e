"""slow-reader: one party stops reading; the others keep their pace and lose nothing.

Requirement: "one party stops reading; the others keep their rate and lose nothing." The
slow party's terminal is simply not drained, so its client blocks writing, stops reading
its socket, and the server's queue for it grows: a server that waits for it stalls the
whole room, which the "bounded time" and "no loss" checks then report.
"""

from __future__ import annotations

from harness.scenarios.base import Context, Scenario


class SlowReader(Scenario):
    name = "slow-reader"
    summary = "one party stops reading; the other two keep their rate and lose nothing"
    min_clients = 3

    def run(self, ctx: Context) -> None:
        a, b, slow = ctx.party("p1"), ctx.party("p2"), ctx.party("slow")
        if not ctx.sync_all([a, b, slow]):
            ctx.record.notes.append("not every party heard the others' hellos")
        slow.pause_reading()
        ctx.expect("p1", ["p2"])
        ctx.expect("p2", ["p1"])
        ctx.record.order_group = ["p1", "p2"]
        n = ctx.options.messages
        ctx.finish_streams([ctx.stream(a, n, window_to=[b]), ctx.stream(b, n, window_to=[a])])
        slow.resume_reading()
        if ctx.record.specific is not None:
            cut = a.seen_text("left (too slow)")
            ctx.record.notes.append(
                "the slow reader was cut off as too slow"
                if cut
                else "the slow reader was not cut off (too little traffic to fill --sendq)"
            )
