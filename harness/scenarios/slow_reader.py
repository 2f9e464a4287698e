"""slow-reader: one party stops reading; the others keep their pace and lose nothing.

Requirement: "one party stops reading; the others keep their rate and lose nothing." The
slow party's terminal is simply not drained, so a client that writes its arrivals
straight to the terminal blocks, stops reading its socket, and the server's queue for it
grows: a server that waits for it stalls the whole room, which the "bounded time" and
"no loss" checks then report.

With this project's server the scenario goes further and proves the cut-off its
protocol promises ("a client whose queue stays over --sendq for --slow-timeout is
disconnected", and the others go on meanwhile). Normal chat traffic never fills the
default 1 MiB queue plus the kernel's buffers, so the server is started with a small
queue (`server_options`), and two raw parties join: ``stalled``, which stops reading
with a small receive window (see `harness.rawclient`), and ``flood``, which sends long
lines until the others are told ``* stalled left (too slow)``. The others must see that
notice and lose nothing.
"""

from __future__ import annotations

import time

from harness.party import Party
from harness.scenarios.base import Context, Scenario

SENDQ = 16384  # bytes: small, so a stopped reader overflows it within ~100 KiB of traffic
SLOW_TIMEOUT = 0.5  # seconds over the bound before the cut-off (nobody else waits for it)
# The hard bound, far over --sendq: the readers that keep up have a flood line or two of
# each window in flight (32 lines of 3 KB), which must never come near it; the stopped
# reader is cut off by its grace.
SENDQ_HARD = 1 << 20
# The stopped reader's socket: a 4 KiB receive buffer and 200-byte segments. The kernel
# sizes the server's send buffer from the segment size (64 KiB segments on loopback give
# megabytes of buffer); small segments keep what the kernel absorbs near 100 KiB.
STALLED_SOCKET = ("--rcvbuf", "4096", "--mss", "200")
FLOOD_PAYLOAD = 3000  # characters per flood line: under the server's 4096-byte --max-line
# Flood lines at most (2 MB): the kernel's buffers for the stalled socket grow with the
# traffic (the server's send buffer reached ~640 KiB on loopback), so the flood goes on
# until the notice, and this bounds it when a server never cuts anyone off.
FLOOD_CAP = 700
NOTICE = "* stalled left (too slow)"
CLOSED_WAIT = 5.0  # seconds for the stopped reader to see its connection closed


class SlowReader(Scenario):
    name = "slow-reader"
    summary = "one party stops reading; the other two keep their rate and lose nothing"
    min_clients = 3
    server_options = (
        "--sendq",
        str(SENDQ),
        "--slow-timeout",
        str(SLOW_TIMEOUT),
        "--sendq-hard",
        str(SENDQ_HARD),
    )

    def run(self, ctx: Context) -> None:
        a, b, slow = ctx.party("p1"), ctx.party("p2"), ctx.party("slow")
        ours = ctx.record.specific is not None
        # Through the impairment proxy the stopped reader cannot overflow the server's
        # queue: the proxy reads on its behalf and buffers megabytes in between.
        proxied = ctx.target.proxy is not None
        cut_off = ours and ctx.target.options_applied and not proxied
        if cut_off:
            stalled = ctx.raw_party("stalled", STALLED_SOCKET)
            flood = ctx.raw_party("flood")
            if not self._join_raw(ctx, stalled, flood):
                ctx.record.notes.append("the raw parties never joined the room")
        if not ctx.sync_all([a, b, slow]):
            ctx.record.notes.append("not every party heard the others' hellos")
        slow.pause_reading()
        ctx.expect("p1", ["p2"])
        ctx.expect("p2", ["p1"])
        ctx.record.order_group = ["p1", "p2"]
        n = ctx.options.messages
        threads = [ctx.stream(a, n, window_to=[b]), ctx.stream(b, n, window_to=[a])]
        if cut_off:
            stalled.pause_reading()
            ctx.expect("p1", ["p2", "flood"])
            ctx.expect("p2", ["p1", "flood"])
            threads.append(
                ctx.stream(
                    flood,
                    1,
                    window_to=[a, b],
                    more=lambda: not (a.seen_text(NOTICE) and b.seen_text(NOTICE)),
                    size=FLOOD_PAYLOAD,
                    cap=FLOOD_CAP,
                )
            )
        ctx.finish_streams(threads)
        slow.resume_reading()
        if cut_off:
            self._check_cut_off(ctx, a, b, stalled, flood)
            self._expect_cut_if_cut_off(ctx, a, slow)
        elif ours and proxied:
            ctx.record.notes.append(
                "the slow-reader cut-off is not checked through the impairment proxy: it "
                "reads for the stopped reader and buffers megabytes in front of the server"
            )
        elif ours:
            ctx.record.notes.append(
                "the slow reader was cut off as too slow"
                if a.seen_text("left (too slow)")
                else "the slow reader was not cut off (its --sendq was not reached; the "
                "server command has no {server_options} for a small one)"
            )

    @staticmethod
    def _join_raw(ctx: Context, stalled: Party, flood: Party) -> bool:
        """Both raw parties connected and in the room; ``stalled`` named so its departure
        notice can be recognised."""
        if not (
            stalled.wait_text("welcome", ctx.deadline) and flood.wait_text("welcome", ctx.deadline)
        ):
            return False
        stalled.send_text("/nick stalled", ctx.deadline)
        return stalled.wait_text("you are now known as stalled", ctx.deadline)

    @staticmethod
    def _check_cut_off(ctx: Context, a: Party, b: Party, stalled: Party, flood: Party) -> None:
        """The others were told the stopped reader left as too slow (they lost nothing:
        the generic checks hold them to every line, the flood's included)."""
        flooded = sum(len(s.token.payload) for s in flood.log.sent)
        ctx.record.notes.append(
            f"slow-reader: this project's server ran with --sendq {SENDQ} --slow-timeout "
            f"{SLOW_TIMEOUT:g} --sendq-hard {SENDQ_HARD}; 'stalled' stopped reading "
            f"(receive buffer 4 KiB, 200-byte segments) while 'flood' sent "
            f"{len(flood.log.sent)} lines ({flooded} bytes)"
        )
        deadline = min(ctx.deadline, time.monotonic() + ctx.options.settle)
        saw = {p.name: p.wait_text(NOTICE, deadline) for p in (a, b)}
        missed = [name for name, ok in saw.items() if not ok]
        ctx.specific(
            "stopped reader cut off",
            not missed,
            f"p1 and p2 saw {NOTICE!r}"
            if not missed
            else f"{' and '.join(missed)} never saw {NOTICE!r} after {flooded} bytes of flood",
        )
        # Best effort by the protocol: the cut-off reader may get a last line; its
        # connection must be closed either way (the raw client then ends on its own).
        stalled.resume_reading()
        closed = stalled.wait_exit(min(ctx.deadline, time.monotonic() + CLOSED_WAIT))
        told = stalled.seen_text("disconnected: too slow")
        if told or closed:
            SlowReader._expect_cut_line(ctx, stalled)
        ctx.record.notes.append(
            "the stopped reader's connection was "
            + ("closed by the server" if closed else "still open")
            + (", after '! disconnected: too slow'" if told else " (no '! disconnected' line)")
        )

    @staticmethod
    def _expect_cut_if_cut_off(ctx: Context, witness: Party, slow: Party) -> None:
        """``slow`` stopped reading too. With the small --sendq of this scenario the
        server may cut it off as well (its client's display queue is bounded, so an unread
        terminal holds the server back): that is the server doing its job, and the line
        it cut short is not damage. Whether it happened, ``witness`` was told."""
        cut = [
            ln.text
            for ln in witness.log.snapshot()
            if "left (too slow)" in ln.text and "stalled" not in ln.text
        ]
        if not cut:
            return
        slow.wait_exit(min(ctx.deadline, time.monotonic() + CLOSED_WAIT))
        SlowReader._expect_cut_line(ctx, slow)
        ctx.record.notes.append(f"the paused reader was cut off too ({cut[0].strip()!r})")

    @staticmethod
    def _expect_cut_line(ctx: Context, stalled: Party) -> None:
        """The server drops a cut-off reader's queue mid-line: it ends that partial line
        with a LF before ``! disconnected: too slow`` (chatbox/server/hub.py), or, when the notice
        does not fit, the connection closes after it. So that reader's last line holding a
        token may arrive cut short: an expectation the checks honour, the transcript
        stays as received."""
        ctx.record.may_be_cut[stalled.name] = "cut off by the server as too slow"
