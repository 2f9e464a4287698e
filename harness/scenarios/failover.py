"""failover: kill -9 one node of a cluster mid-run; the rest of the room carries on.

Requirement (`--cluster N`, N >= 2): "kill one server node mid-run; clients on the other
nodes lose nothing and see the failed node's clients leave". Parties are spread over the
nodes round-robin, at least two per node. Everyone talks; once the parties on the last
node (the *victims*) have provably received part of the stream and been heard, that
node is killed with SIGKILL. The others (the *survivors*) keep talking until each has
seen every victim leave. Then:

- no loss, FIFO, one order: the survivors get all of each other's lines, and every
  receiver - victims included, up to their end - saw the lines they share in one order;
- nothing appended is lost: a line that reached anyone (a victim's line that reached a
  victim on the dead node came back from the stream) reaches every survivor too;
- the victims leave: each survivor sees ``* NAME left (server lost)`` for every victim
  within the lease and a third of it (with slack for a loaded machine), and the time it
  took is noted.

The victims' clients are expected to end (their server is gone) and the last line each
shows may be cut: neither is a failure.
"""

from __future__ import annotations

import threading
import time

from harness.cluster import ClusterTarget
from harness.party import Party
from harness.scenarios.base import SYNC_BUDGET, Context, Options, Scenario
from harness.transcript import COUNTED

MID_STREAM = 3  # lines each side must have received from the other before the kill
# The leave may take the lease and a third of it (a lease renewed every third); a loaded
# machine adds its own delay on top, which this allows for.
LEAVE_SLACK = 10.0
LEFT = "left (server lost)"


def server_name(party: Party, deadline: float) -> str:
    """The name the server gave ``party`` (its welcome: ``* welcome NAME; ...``)."""
    party.wait_text("* welcome ", deadline)
    line = party.text_with("* welcome ") or ""
    words = line.split("* welcome ", 1)[-1].split()
    return words[0].rstrip(";") if words else ""


class Failover(Scenario):
    name = "failover"
    summary = "--cluster N: kill -9 a node mid-run; the others lose nothing, see its clients leave"
    min_clients = 4
    # It kills a node with SIGKILL: here its process group; over ssh the far process
    # group, through a second session (`SshHost.kill`).

    def check_options(self, options: Options) -> None:
        if options.cluster_nodes < 2:
            raise ValueError("failover needs --cluster N with N >= 2 (a node to kill, one to stay)")
        if not options.ours:
            raise ValueError("failover needs this project's server (its cluster nodes)")

    def run(self, ctx: Context) -> None:
        target = ctx.target
        assert isinstance(target, ClusterTarget)
        nodes = target.node_count
        count = max(ctx.options.clients, 2 * nodes)
        parties = ctx.many_parties([f"p{i + 1}" for i in range(count)])
        if not ctx.sync_all(parties):
            ctx.record.notes.append("not every party heard the others' hellos")
        doomed = nodes - 1
        victims = [p for p in parties if ctx.node_of[p.name] == doomed]
        survivors = [p for p in parties if ctx.node_of[p.name] != doomed]
        names = {p.name: server_name(p, ctx.deadline) for p in victims}
        for s in survivors:
            ctx.expect(s.name, [o.name for o in survivors if o is not s])
        ctx.record.order_group = [p.name for p in parties]
        for v in victims:
            ctx.record.may_be_cut[v.name] = f"its node {doomed} was killed with SIGKILL"
        left_seen, killed = threading.Event(), threading.Event()
        n = ctx.options.messages
        threads = [
            ctx.stream(
                p,
                n,
                window_to=[q for q in survivors if q is not p],
                more=lambda: not left_seen.is_set(),
            )
            for p in survivors
        ]
        threads += [
            ctx.stream(
                v,
                n,
                window_to=[q for q in survivors if q is not v],
                more=lambda: not killed.is_set(),
            )
            for v in victims
        ]
        took = None
        try:
            # Bounded like room sync: a node that relays nothing must not eat the run.
            until = min(ctx.deadline, time.monotonic() + SYNC_BUDGET * ctx.options.settle)
            mid = all(
                v.wait_messages(s.name, MID_STREAM, until)
                and s.wait_messages(v.name, MID_STREAM, until)
                for v in victims
                for s in survivors
            )
            if not mid:
                ctx.record.notes.append(
                    f"the parties of node {doomed} and the others had not heard "
                    f"{MID_STREAM} lines of each other when it was killed"
                )
            t_kill = time.monotonic()
            target.kill_node(doomed)
            killed.set()
            ctx.record.notes.append(
                f"killed node {doomed} of {nodes} (SIGKILL) at {ctx.clock():.3f}s; its "
                f"parties: {', '.join(f'{v.name} ({names[v.name]})' for v in victims)}"
            )
            took = self._await_leaves(ctx, survivors, names, t_kill, target.lease)
        finally:
            left_seen.set()
            killed.set()
        ctx.finish_streams(threads)
        self._judge(ctx, survivors, victims, names, took, target.lease)

    @staticmethod
    def _await_leaves(
        ctx: Context, survivors: list[Party], names: dict[str, str], t_kill: float, lease: float
    ) -> float | None:
        """Wait until every survivor saw every victim leave; seconds it took, or None."""
        until = min(ctx.deadline, t_kill + lease * 4 / 3 + LEAVE_SLACK)
        for s in survivors:
            for name in names.values():
                if not s.wait_text(f"* {name} {LEFT}", until):
                    return None
        return time.monotonic() - t_kill

    @staticmethod
    def _judge(
        ctx: Context,
        survivors: list[Party],
        victims: list[Party],
        names: dict[str, str],
        took: float | None,
        lease: float,
    ) -> None:
        record = ctx.record
        if took is not None:
            ctx.specific(
                "the failed node's clients left",
                True,
                f"every survivor saw {', '.join(sorted(names.values()))} leave "
                f"('{LEFT}') {took:.2f}s after the kill (lease {lease:g}s)",
            )
        else:
            missing = [
                f"{s.name} never saw {name} leave"
                for s in survivors
                for name in names.values()
                if not s.seen_text(f"* {name} {LEFT}")
            ]
            bound = lease * 4 / 3 + LEAVE_SLACK
            ctx.specific(
                "the failed node's clients left",
                False,
                f"not within {bound:g}s of the kill (lease {lease:g}s): {'; '.join(missing[:4])}",
            )
        # Whatever reached anyone came back from the stream, so it must reach every
        # survivor: a victim's line seen on the dead node included.
        delivered: dict[tuple[str, int], str] = {}
        for name, log in record.parties.items():
            for r in log.received:
                if r.token.kind in COUNTED:
                    delivered.setdefault(r.token.key, name)
        lost = []
        for s in survivors:
            have = {r.token.key for r in s.log.received}
            for key, first in sorted(delivered.items()):
                if key[0] != s.name and key not in have:
                    lost.append(f"{key[0]}#{key[1]} reached {first} but never {s.name}")
        victim_lines = sum(1 for key in delivered if key[0] in names)
        ctx.specific(
            "nothing appended is lost",
            not lost,
            f"{len(lost)} lines missing; first: {lost[0]}"
            if lost
            else f"every line that reached anyone reached every survivor ({victim_lines} "
            "of them from the failed node's parties)",
        )
