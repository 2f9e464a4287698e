"""duplex: two parties talk at once; every line arrives, and full duplex is proven.

Requirement: "two parties send M lines each at the same time; every line must reach the
other side. Each party received some of the peer's lines while it still had its own to
send." A party keeps talking past M (bounded) until that is shown, so a server that
serialises the two directions fails the "full duplex" check instead of passing by luck.
"""

from __future__ import annotations

from harness.scenarios.base import Context, Scenario


class Duplex(Scenario):
    name = "duplex"
    summary = "two parties send M lines each at once; full duplex must be proven"

    def run(self, ctx: Context) -> None:
        a, b = ctx.party("p1"), ctx.party("p2")
        if not ctx.sync_all([a, b]):
            ctx.record.notes.append("the two parties never heard each other's hello")
        ctx.expect("p1", ["p2"])
        ctx.expect("p2", ["p1"])
        ctx.record.duplex_pairs = [("p1", "p2"), ("p2", "p1")]
        n = ctx.options.messages
        ctx.finish_streams(
            [
                ctx.stream(a, n, window_to=[b], prove_with="p2"),
                ctx.stream(b, n, window_to=[a], prove_with="p1"),
            ]
        )
        if ctx.record.specific is not None:
            for p in (a, b):
                ctx.specific(f"{p.name} welcomed", p.seen_text("* welcome"), "saw '* welcome'")
