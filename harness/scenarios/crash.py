"""crash: kill -9 a client mid-stream (and, in a forking server, a worker process).

Requirement: "kill -9 a client mid-stream (and, in fork mode, a worker process); the
others continue without loss." Victims are killed only after they have provably received
part of the stream, so each kill really lands mid-stream.
"""

from __future__ import annotations

import os
import signal
import threading

from harness.scenarios.base import Context, Scenario

MID_STREAM = 3  # lines a victim must have received before it is killed


class Crash(Scenario):
    name = "crash"
    summary = "kill -9 a client (and a forked worker) mid-stream; the others lose nothing"
    min_clients = 3

    def run(self, ctx: Context) -> None:
        a, b, victim = ctx.party("p1"), ctx.party("p2"), ctx.party("victim")
        if not ctx.sync_all([a, b, victim]):
            ctx.record.notes.append("not every party heard the others' hellos")
        # The worker to kill is the server process that appears when `orphan` joins.
        before = set(ctx.target.children())
        orphan = ctx.party("orphan")
        ctx.sync(orphan, [a, b])
        workers = sorted(set(ctx.target.children()) - before)

        ctx.expect("p1", ["p2"])
        ctx.expect("p2", ["p1"])
        ctx.record.order_group = ["p1", "p2"]
        done = threading.Event()
        n = ctx.options.messages
        threads = [
            ctx.stream(a, n, window_to=[b], more=lambda: not done.is_set()),
            ctx.stream(b, n, window_to=[a], more=lambda: not done.is_set()),
        ]
        try:
            victim.wait_messages("p1", MID_STREAM, ctx.deadline)
            # Killed mid-stream, it may have shown the first part of a line only.
            ctx.record.may_be_cut[victim.name] = "killed with SIGKILL mid-stream"
            victim.kill()
            if workers:
                orphan.wait_messages("p2", MID_STREAM, ctx.deadline)
                try:
                    os.kill(workers[-1], signal.SIGKILL)
                    ctx.record.notes.append(f"killed server worker pid {workers[-1]} (SIGKILL)")
                except ProcessLookupError:
                    ctx.record.notes.append("the worker had already gone")
            else:
                ctx.record.notes.append("no worker process to kill (threaded or remote server)")
        finally:
            done.set()
        ctx.finish_streams(threads)
