"""churn: parties join and leave over and over while two others keep talking.

Requirement: "parties join and leave repeatedly while two others keep talking; the
talkers lose nothing." Each joiner proves it is in the room (its hello reaches both
talkers) before it leaves, so every cycle really happens mid-conversation.
"""

from __future__ import annotations

import threading

from harness.scenarios.base import Context, Scenario

MAX_CYCLES = 20  # joins are process starts: bound the scenario's length


class Churn(Scenario):
    name = "churn"
    summary = "joiners come and go repeatedly while two parties keep talking"

    def run(self, ctx: Context) -> None:
        a, b = ctx.party("p1"), ctx.party("p2")
        if not ctx.sync_all([a, b]):
            ctx.record.notes.append("the two talkers never heard each other's hello")
        ctx.expect("p1", ["p2"])
        ctx.expect("p2", ["p1"])
        ctx.record.order_group = ["p1", "p2"]
        done = threading.Event()
        more = lambda: not done.is_set()  # noqa: E731 - a tiny predicate
        n = ctx.options.messages
        threads = [
            ctx.stream(a, n, window_to=[b], more=more),
            ctx.stream(b, n, window_to=[a], more=more),
        ]
        cycles = min(MAX_CYCLES, max(3, n // 10))
        slots = max(1, ctx.options.clients - 2)
        joined = 0
        try:
            for cycle in range(cycles):
                for slot in range(slots):
                    if ctx.expired:
                        break
                    joiner = ctx.party(f"j{slot + 1}c{cycle + 1}")
                    if ctx.sync(joiner, [a, b]):
                        joined += 1
                    joiner.close()
        finally:
            done.set()
        ctx.record.notes.append(f"{joined} joins and leaves while the talkers talked")
        ctx.finish_streams(threads)
        if ctx.record.specific is not None:
            seen = a.seen_text(" joined") and a.seen_text(" left")
            ctx.specific(
                "join/leave notices", seen, "talkers saw '* NAME joined' and '* NAME left'"
            )
