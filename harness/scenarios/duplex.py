"""duplex: two parties talk at once, then in turns; what was observed is classified.

Requirement: "two parties send M lines each at the same time; every line must reach the
other side", and the verdict says which of simplex, half duplex and full duplex was
observed, with the evidence:

- a *concurrent* phase: both stream at once; for each party the server must be shown to
  have read one of its lines between two of its peer's, with no long pause (see
  ``harness.checks.interleaving``): the party typed it after it displayed the first,
  the peer displayed it before it typed the second. Lines that merely arrive later
  prove nothing (they may have waited in a buffer for their turn). The parties keep
  talking past M, one line in flight each, until the proof is there, PROOF_SECONDS
  pass or one of them stops. A server that serialises the two directions then keeps
  one party's line waiting while the other's later lines are heard, which the check
  takes as proof of half duplex; a run with neither proof is "unknown", never PASS;
- two *quiet* phases: one party types nothing while the other sends QUIET_LINES lines. A
  full-duplex client displays them at once; a client that reads only after it sent
  shows at most one read's worth, the rest once it types again (late, not lost: the
  final settle nudges it with hellos, which are never counted). A phase waits
  --settle s with no line arriving, or longer on a path the concurrent phase showed to
  be slow (``harness.checks.quiet_patience``);
- a *burst*: a byte-exact party hands the server ~16 KB of lines in one write.
"""

from __future__ import annotations

import threading
import time

from harness.checks import DUPLEX_SPAN, interleaving, quiet_patience
from harness.party import Party
from harness.scenarios.base import Context, Scenario
from harness.transcript import QuietPhase

QUIET_LINES = 20  # lines of a quiet phase: fewer than the window, so nothing paces them
PROOF_EVERY = 16  # a talker past M looks for the full-duplex proof once in this many lines
# How long the talkers go on past M lines for the proof. Past M each talker has one line
# in flight (lockstep), so this is round trips, not a line count: 105 lines fill a
# window in a few milliseconds on an idle loopback, before a single round trip of
# display-then-type has happened, and a fast full-duplex server went unproven. It is
# more than DUPLEX_SPAN, so a server taking turns keeps one talker waiting longer than
# the check allows while the other is heard.
PROOF_SECONDS = 2 * DUPLEX_SPAN
PROOF_LINES = 2000  # and at most this many lines each (bounded whatever the pace)
LOCKSTEP = 0.2  # past M, a line not shown to the peer in this long does not hold the next


class _Proof:
    """Whether a talker past M lines should go on: until the record holds the check's
    proof for both parties (a line of each carried between two of the other's, with no
    long pause in reading the other), for at most PROOF_SECONDS, and only while the
    other talker still talks (no proof can come without it).

    Looking costs a pass over the record, so it is done once in PROOF_EVERY lines."""

    def __init__(self, ctx: Context, talking: list[threading.Thread]) -> None:
        self.ctx, self.talking = ctx, talking
        self.calls, self.proven = 0, False
        self.until: float | None = None  # when proving past M lines ends

    def wanted(self, peer: int) -> bool:
        """Asked by a talker past M lines before each further line."""
        if len(self.talking) <= peer:
            return True  # the threads are still being started
        if self.proven or not self.talking[peer].is_alive():
            return False
        self.calls += 1
        now = time.monotonic()
        if self.until is None:
            self.until = now + PROOF_SECONDS
        elif now >= self.until:
            return False  # no proof in time: the check says what the record shows
        if self.calls % PROOF_EVERY:
            return True  # not the time to look
        record = self.ctx.record
        self.proven = all(
            (found := interleaving(record, party, other)) is not None and found.pause < DUPLEX_SPAN
            for party, other in record.duplex_pairs
        )
        return not self.proven


class Duplex(Scenario):
    name = "duplex"
    summary = "two parties send M lines each at once, then in turns; duplex classified"

    def run(self, ctx: Context) -> None:
        a, b = ctx.party("p1"), ctx.party("p2")
        if not ctx.sync_all([a, b]):
            ctx.record.notes.append("the two parties never heard each other's hello")
        ctx.expect("p1", ["p2"])
        ctx.expect("p2", ["p1"])
        ctx.record.duplex_pairs = [("p1", "p2"), ("p2", "p1")]
        n = ctx.options.messages
        talking: list[threading.Thread] = []
        proof = _Proof(ctx, talking)
        cap = max(n, PROOF_LINES)

        def talker(party: Party, peer: Party, peer_index: int) -> threading.Thread:
            return ctx.stream(
                party,
                n,
                window_to=[peer],
                more=lambda: proof.wanted(peer_index),
                cap=cap,
                lockstep=LOCKSTEP,
            )

        began = ctx.clock()
        talking += [talker(a, b, 1), talker(b, a, 0)]
        ctx.finish_streams(list(talking), nudge=True, since=began)
        ctx.record.concurrent_until = ctx.clock()
        for listener, speaker in ((a, b), (b, a)):
            if ctx.expired:
                break
            self._quiet_phase(ctx, listener, speaker)
        burst = ctx.burst_party("burst", [a, b])
        began = ctx.clock()
        ctx.burst(burst)
        ctx.phase("burst", began, "written in one write" if burst.log.sent else "not written")
        ctx.expect("p1", ["burst"])
        ctx.expect("p2", ["burst"])
        ctx.settle(nudge=True)
        burst.close()
        if ctx.record.specific is not None:
            for p in (a, b):
                ctx.specific(f"{p.name} welcomed", p.seen_text("* welcome"), "saw '* welcome'")

    @staticmethod
    def _quiet_phase(ctx: Context, listener: Party, speaker: Party) -> None:
        """``listener`` types nothing while ``speaker`` sends QUIET_LINES lines; the phase
        ends when all arrived, or after its patience without one arriving: --settle, or
        more on a path the concurrent phase showed to be slow (``quiet_patience``; the
        check forgives a late line that came within it, so the two agree)."""
        patience = quiet_patience(ctx.record, listener.name, speaker.name)
        start = ctx.clock()
        gone = ctx.server_gone()  # before a line is typed: then none can be relayed
        tokens = [ctx.token(speaker.name) for _ in range(QUIET_LINES)]
        for tok in tokens:
            if not speaker.send(tok, ctx.deadline):
                break
        keys = {tok.key for tok in tokens}
        last, since = listener.count_from(keys), time.monotonic()
        outcome = "cut by --timeout"
        if gone is not None:
            outcome = "not waited for: the server had exited before a line was typed"
        while not ctx.expired and gone is None:
            if listener.wait_tokens(keys, min(ctx.deadline, time.monotonic() + 0.1)):
                outcome = f"all {len(keys)} arrived"
                break
            count = listener.count_from(keys)
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since >= patience:
                outcome = f"{count} of {len(keys)} arrived; none for {patience:.2f}s"
                break
        ctx.record.quiet_phases.append(
            QuietPhase(listener.name, speaker.name, [t.seq for t in tokens], start, ctx.clock())
        )
        ctx.phase(f"quiet: {listener.name} listens to {speaker.name}", start, outcome)
