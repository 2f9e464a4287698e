"""broadcast: N parties all send at once; everyone gets everyone else's lines, in one order.

Requirement: "N parties all sending at once" - no loss, no duplicates, FIFO per sender,
and any two receivers see the messages they share in the same relative order. So that
the order check always has material (two receivers sharing lines from two senders),
a byte-exact party ``burst`` listens to everyone and, while the others talk, hands the
server ~16 KB of lines in one write (a paste, a pipe). The last talker leaves right after
its last line: that line must still reach everyone.
"""

from __future__ import annotations

from harness.scenarios.base import Context, Scenario


class Broadcast(Scenario):
    name = "broadcast"
    summary = "N parties (--clients) and a burst all send at once; same order everywhere"

    def run(self, ctx: Context) -> None:
        count = max(2, ctx.options.clients)
        parties = ctx.many_parties([f"p{i + 1}" for i in range(count)])
        started = ctx.clock()
        if ctx.sync_all(parties):
            # What a run of many parties spends before anyone talks, for the user to see.
            ctx.record.notes.append(
                f"{count} parties started in {started:.1f}s, all proven in the room "
                f"{ctx.clock():.1f}s after the start"
            )
        else:
            ctx.record.notes.append("not every party heard the others' hellos")
        names = [p.name for p in parties]
        leaver = parties[-1]
        burst = ctx.burst_party("burst", parties)
        for name in names:
            # The leaver is gone before the others finish: it is not held to receiving.
            if name != leaver.name:
                ctx.expect(name, [n for n in names if n != name] + ["burst"])
        ctx.expect("burst", names)
        ctx.record.order_group = [n for n in names if n != leaver.name] + ["burst"]
        n = ctx.options.messages
        threads = [
            ctx.stream(p, n, window_to=[q for q in parties if q is not p], leave=p is leaver)
            for p in parties
        ]
        ctx.burst(burst)
        ctx.finish_streams(threads)
