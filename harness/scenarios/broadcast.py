"""broadcast: N parties all send at once; everyone gets everyone else's lines, in one order.

Requirement: "N parties all sending at once" - no loss, no duplicates, FIFO per sender,
and any two receivers see the messages they share in the same relative order.
"""

from __future__ import annotations

from harness.scenarios.base import Context, Scenario


class Broadcast(Scenario):
    name = "broadcast"
    summary = "N parties (--clients) all send M lines at once; same order everywhere"

    def run(self, ctx: Context) -> None:
        count = max(2, ctx.options.clients)
        parties = [ctx.party(f"p{i + 1}") for i in range(count)]
        if not ctx.sync_all(parties):
            ctx.record.notes.append("not every party heard the others' hellos")
        names = [p.name for p in parties]
        for name in names:
            ctx.expect(name, [n for n in names if n != name])
        ctx.record.order_group = names
        n = ctx.options.messages
        ctx.finish_streams(
            [ctx.stream(p, n, window_to=[q for q in parties if q is not p]) for p in parties]
        )
