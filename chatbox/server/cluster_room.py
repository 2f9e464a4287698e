"""The room of a node in a cluster: the same rules as `chatbox.server.room`, one shared order.

The single-node `Room` posts each line straight to its recipients. Here what concerns
others (chat lines, actions, notices, private messages) is queued during the hub's turn
and appended to the cluster's stream at its end (`tick`: one pipelined append, on the
appends' thread, while the last one is not out); the entries the reader brings back,
this node's and every other node's, are delivered to this node's members in stream
order. So every member on every node sees one order, and a sender's lines keep theirs
(they are appended in the order its worker read them).

The hub's thread never waits on Redis. What needs an answer from it (an arrival's guest
name, /nick, /who, /msg, /history, /resume) is asked on the calls' thread
(`chatbox.server.cluster_calls`) and answered at a later turn; meanwhile what that member
says next waits, and its input is not read (`accepts`), so its own order holds and
nobody else waits for it. What needs no answer (/help, errors, chat) is done at once. A
line that cannot be appended because Redis is unreachable is answered with ``! cluster
unavailable``, never dropped silently.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from chatbox import protocol
from chatbox.server.cluster import Cluster, Fields, Unavailable, stream_order
from chatbox.server.room import Postbox

log = logging.getLogger("chatbox.room")

UNAVAILABLE = protocol.error("cluster unavailable")
# How long a stopping node waits for Redis to take its members' leave notices: within
# the server's promise to be gone 2 s after SIGTERM.
CLOSE_WAIT = 1.0
T = TypeVar("T")
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


@dataclass
class Member:
    id: int
    name: str
    # The last entry delivered before it joined: what /resume replays ends there.
    joined_at: bytes = b"0-0"
    # A call of its own is out (a rename, /who, /msg...): what it says next waits.
    busy: bool = False
    prefix: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.prefix = protocol.chat_prefix(self.name)


class ClusterRoom:
    def __init__(
        self, postbox: Postbox, cluster: Cluster, max_line: int = protocol.DEFAULT_MAX_LINE
    ) -> None:
        self._postbox = postbox
        self._cluster = cluster
        self._calls = cluster.calls
        self._node = cluster.node.encode()
        self._max_line = max_line
        self._members: dict[int, Member] = {}
        self._everyone: list[int] = []
        # Connections whose arrival (a guest name claimed across the cluster) is out,
        # and those of them not asked for yet: one claim is out at a time, and the
        # arrivals meanwhile are claimed together next.
        self._joining: set[int] = set()
        self._arrivals: list[int] = []
        self._admitting = False
        # Entries to append at the end of this turn, each with the member that caused it
        # (told if the append fails), or None for notices nobody is waiting on; and the
        # names of members that left, given back just before (`_append_pending`).
        self._pending: list[tuple[Fields, int | None]] = []
        self._releases: list[tuple[int, str]] = []
        # One append is out at a time: what comes meanwhile goes in the next, so the
        # lines keep their order and a busy room appends in big batches.
        self._appending = False
        # The last entry delivered to this node's members, the members that asked for
        # their place (/resume), and those resumed from a place this node has not
        # delivered yet (it lags behind the node they came from): they are not sent
        # again what they had already seen, up to that place.
        self._delivered = cluster.start_id
        self._resumers: list[int] = []
        self._ahead: dict[int, tuple[int, int]] = {}
        # Members whose /resume is out: what the stream brings meanwhile is kept for
        # them and goes out after their replay, as if it had been answered at once.
        self._parked: dict[int, list[tuple[bytes, Fields]]] = {}

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member_id: int) -> bool:
        return member_id in self._members

    def name_of(self, member_id: int) -> str:
        return self._members[member_id].name

    def accepts(self, member_id: int) -> bool:
        """Whether the member's next lines can be handled now: not while its arrival or
        a call of its own is out (they wait, in order, and its input is not read)."""
        if member_id in self._joining:
            return False
        member = self._members.get(member_id)
        return member is None or not member.busy

    def _roster_changed(self) -> None:
        self._everyone = [i for i in self._members if i not in self._parked]

    def _ask(
        self,
        member: Member,
        work: Callable[[], T],
        then: Callable[[T], None],
        failed: Callable[[], None] | None = None,
        gone: Callable[[T], None] | None = None,
    ) -> None:
        """Run ``work`` (its Redis calls) off the hub's thread; ``then`` has its answer,
        if the member is still here (else ``gone``). Until then, what the member says
        next waits (`accepts`), so its lines and commands keep their order."""
        member.busy = True

        def answered(result: T) -> None:
            member.busy = False
            if self._members.get(member.id) is member:
                then(result)
            elif gone is not None:
                gone(result)

        def refused() -> None:
            member.busy = False
            if self._members.get(member.id) is member:
                (failed or (lambda: self._tell(member, UNAVAILABLE)))()

        self._calls.submit(work, answered, refused)

    # --- the stream ---------------------------------------------------------------------

    def _queue(self, kind: bytes, member: Member | None, sender: int | None, **rest: bytes) -> None:
        fields: Fields = {b"k": kind, b"n": self._node}
        if member is not None:
            fields[b"m"] = str(member.id).encode()
            fields[b"p"] = member.name.encode()
        fields.update((key.encode(), value) for key, value in rest.items())
        self._pending.append((fields, sender))

    def tick(self) -> None:
        """Once per hub turn: take the answers of the calls that ended, send off what
        was queued, deliver what the reader brought."""
        self._cluster.finish()
        lost = self._cluster.take_lost()
        if lost is not None:
            self._cut_off(*lost)
        self._send_off()
        taken = self._cluster.take()
        if not taken:
            return
        for parked in self._parked.values():
            parked += taken
        # Consecutive joins (or leaves for one reason) from any nodes go out as one
        # notice per recipient, as in a single server: a storm of N arrivals across
        # the cluster costs each member about one line per batch, not N.
        run: list[tuple[int | None, str]] = []
        run_what = ""
        for entry_id, fields in taken:
            arrival = None if self._ahead else _arrival(fields)
            if arrival is not None and (not run or arrival[0] == run_what):
                run_what = arrival[0]
                run.append((self._local_member(fields), arrival[1]))
                continue
            if run:
                self._post_run(run_what, run)
                run = []
            if arrival is not None:
                run_what = arrival[0]
                run.append((self._local_member(fields), arrival[1]))
            else:
                self._deliver(entry_id, fields)
        if run:
            self._post_run(run_what, run)
        self._delivered = taken[-1][0]
        # (A member resumed from a place this node has not reached is told no place
        # until it has: it would go back to an older one.)
        placed = [i for i in self._resumers if i not in self._parked and i not in self._ahead]
        if placed:
            self._postbox.post(placed, protocol.id_line(self._delivered.decode()))

    def _append_pending(self) -> None:
        """Append what was queued, on the appends' thread; the senders of what could
        not be appended are told."""
        pending, self._pending = self._pending, []
        releases, self._releases = self._releases, []
        cluster = self._cluster
        self._appending = True

        def work() -> None:
            if releases:
                # First: once the others read that these members left, their names
                # are free to take.
                cluster.let_go(releases)
            cluster.append([fields for fields, _ in pending])

        def done(_: None) -> None:
            self._appending = False

        def failed() -> None:
            self._appending = False
            told = {s for _, s in pending if s is not None and s in self._members}
            self._postbox.post(told, UNAVAILABLE)
            lost = sum(1 for _, s in pending if s is None)
            if lost:
                log.warning("cluster unavailable: %d notices not appended", lost)

        cluster.appends.submit(work, done, failed)

    def end_turn(self) -> float | None:
        """After the hub handed over input outside a tick (lines it had held back):
        what they queued goes off now, not at some later turn. Nothing is ever held for
        a later turn here (None): each join and leave is its own entry in the stream,
        and `tick` coalesces the runs of them it reads back."""
        self._send_off()
        return None

    def _send_off(self) -> None:
        """Ask for the arrivals' names and append what is queued, unless the last such
        call is still out (then the next takes all that came meanwhile)."""
        if self._arrivals and not self._admitting:
            self._admit()
        if (self._pending or self._releases) and not self._appending:
            self._append_pending()

    def _replay(self, found: list[Fields], count: int) -> bytes:
        """The last ``count`` chat lines and actions of these entries (notices and
        private messages are not replayed)."""
        lines: list[bytes] = []
        for fields in found:
            data = _public(fields)
            if data is not None:
                lines += data.splitlines(keepends=True)
        return protocol.history_lines(lines[-count:])

    def _resume(self, member: Member, since: str | None) -> None:
        """Replay the stream after ``since`` up to where the member joined (what came
        later reached it live), then its place, and its place after every tick."""
        if since is None:
            self._placed(member)
            return
        after = since.encode() if _STREAM_ID.fullmatch(since) else None
        joined_at, delivered, cluster = member.joined_at, self._delivered, self._cluster
        limit = 4 * protocol.RESUME_MAX  # entries, of which some are notices

        def look() -> tuple[bool, bytes]:
            """On the calls' thread: whether ``after`` is ahead of this node, and the reply."""
            ahead, repeated = False, 0
            if (
                after is not None
                and stream_order(after) > stream_order(joined_at)
                and cluster.is_place(after)
            ):
                # Seen on a node that is ahead of this one: nothing to replay; what this
                # node delivers up to there is not sent again, and what it delivered
                # since the member joined up to there is counted, for the client to
                # leave out (those lines came before this reply).
                ahead = True
                upto = min(after, delivered, key=stream_order)
                if stream_order(upto) > stream_order(joined_at):
                    sent, _ = cluster.since(joined_at, upto, limit)
                    repeated = len(self._public_lines(sent, member))
            entries, complete = cluster.since(after, joined_at, limit)
            lines = self._public_lines(entries, None)
            if len(lines) > protocol.RESUME_MAX:
                lines, complete = lines[-protocol.RESUME_MAX :], False
            return ahead, protocol.resume_lines(lines, since, complete, repeated)

        def answer(found: tuple[bool, bytes]) -> None:
            ahead, reply = found
            if ahead and after is not None:
                self._ahead[member.id] = stream_order(after)
            self._tell(member, reply)
            self._unpark(member)
            self._placed(member, after if ahead else None)

        def refused() -> None:
            self._tell(member, UNAVAILABLE)
            self._unpark(member)

        # Until the answer, what the stream brings is kept for the member: it goes out
        # after the replay, as it would have had the answer come at once.
        self._parked[member.id] = []
        self._roster_changed()
        self._ask(member, look, answer, refused)

    def _unpark(self, member: Member) -> None:
        parked = self._parked.pop(member.id, [])
        self._roster_changed()
        for entry_id, fields in parked:
            self._deliver(entry_id, fields, only=member.id)

    def _placed(self, member: Member, ahead: bytes | None = None) -> None:
        """Tell the member its place now (``ahead``: the one it came from, which this
        node has not reached yet), and after every tick from now on."""
        place = ahead if ahead is not None and member.id in self._ahead else self._delivered
        self._tell(member, protocol.id_line(place.decode()))
        if member.id not in self._resumers:
            self._resumers.append(member.id)

    def _local_member(self, fields: Fields) -> int | None:
        """The member of this node an entry is about, if it is one of ours."""
        if fields.get(b"n") != self._node:
            return None
        return int(fields.get(b"m", b"0"))

    def _post_run(self, what: str, run: list[tuple[int | None, str]]) -> None:
        """One notice for a run of joins (``what`` = "joined") or of leaves for one
        reason: those here before it hear of all of it, each newcomer of this node of
        those after it (as `chatbox.server.room` does)."""
        names = [name for _, name in run]
        if what != "joined":
            if self._everyone:
                self._postbox.post(self._everyone, protocol.arrivals(names, len(names), what))
            return
        newcomers = {member_id for member_id, _ in run if member_id is not None}
        before = [i for i in self._everyone if i not in newcomers]
        if before:
            self._postbox.post(before, protocol.arrivals(names, len(names), what))
        for index, (member_id, _) in enumerate(run[:-1], start=1):
            if member_id in self._members and member_id not in self._parked:
                later = names[index : index + protocol.NOTICE_NAMES]
                notice = protocol.arrivals(later, len(names) - index, what)
                self._postbox.post((member_id,), notice)

    def _public_lines(self, entries: list[Fields], skip: Member | None) -> list[bytes]:
        """The chat and action lines of these entries, but those ``skip`` said here."""
        lines: list[bytes] = []
        own = (self._node, str(skip.id).encode()) if skip is not None else None
        for fields in entries:
            data = _public(fields)
            if data is not None and (fields.get(b"n"), fields.get(b"m")) != own:
                lines += data.splitlines(keepends=True)
        return lines

    def _deliver(self, entry_id: bytes, fields: Fields, only: int | None = None) -> None:
        """One entry to this node's members (to member ``only`` alone, if given: what
        was kept for it while its /resume was out)."""
        kind = fields.get(b"k")
        ours = fields.get(b"n") == self._node
        sender = int(fields.get(b"m", b"0")) if ours else None
        if kind == b"p":
            to_it = sender == only if only is not None else sender not in self._parked
            if ours and sender in self._members and to_it:
                text = fields[b"t"].decode()
                self._postbox.post((sender,), protocol.private_line(fields[b"f"].decode(), text))
            return
        if only is None:
            recipients = [i for i in self._everyone if i != sender]
        else:
            recipients = [only] if only != sender and only in self._members else []
        if self._ahead:
            order = stream_order(entry_id)
            for member_id, seen in list(self._ahead.items()):
                if order > seen or member_id not in self._members:
                    del self._ahead[member_id]
                elif member_id in recipients:
                    recipients.remove(member_id)
        if not recipients:
            return
        if kind == b"x":
            data: bytes | None = protocol.notice(fields[b"t"].decode())
        else:
            data = _public(fields)
        if data is None:
            log.warning("unknown stream entry %r", fields)
            return
        self._postbox.post(recipients, data)

    # --- arrivals and departures ------------------------------------------------------

    def join(self, member_id: int) -> None:
        """Admit a member under a guest name fresh across the cluster, once the calls
        that claim one have answered; what it says meanwhile waits. The arrivals of a
        turn are claimed together (`_admit`)."""
        self._joining.add(member_id)
        self._arrivals.append(member_id)

    def _admit(self) -> None:
        """Claim names for the arrivals waiting, in one call: a storm of N joins costs
        a few round trips, not N, and its notices go out as one run."""
        arrivals, self._arrivals = self._arrivals, []
        cluster = self._cluster
        self._admitting = True

        def claim() -> tuple[dict[int, str], list[str], int]:
            names = cluster.claim_guests(arrivals)
            # Not the whole roster: a welcome names a few (a storm of N joins must not
            # read N names N times); /who lists everyone.
            others, total = cluster.some_names(protocol.WELCOME_NAMES + 1)
            return names, others, total

        def admitted(found: tuple[dict[int, str], list[str], int]) -> None:
            self._admitting = False
            names, others, total = found
            gone = [(i, protocol.name_key(n)) for i, n in names.items() if i not in self._joining]
            if gone:
                # They went away while they waited: nobody heard of them; names go back.
                self._calls.submit(lambda: cluster.let_go(gone))
            for member_id in arrivals:
                if member_id in self._joining:
                    self._joining.discard(member_id)
                    self._arrived(member_id, names[member_id], others, total)

        def refused() -> None:
            self._admitting = False
            for member_id in arrivals:
                if member_id in self._joining:
                    self._joining.discard(member_id)
                    self._postbox.post((member_id,), UNAVAILABLE)
                    self._postbox.dismiss(member_id)

        self._calls.submit(claim, admitted, refused)

    def _arrived(self, member_id: int, name: str, others: list[str], total: int) -> None:
        member = Member(member_id, name, self._delivered)
        self._members[member_id] = member
        self._roster_changed()
        shown = [other for other in others if other != name][: protocol.WELCOME_NAMES]
        count = max(total - 1, len(shown))
        self._postbox.post((member_id,), protocol.welcome(name, shown, count))
        self._queue(b"x", member, None, t=f"{name} joined".encode())
        log.info("%s joined (%d on this node)", name, len(self._members))

    def _cut_off(self, told: bool, members: list[int]) -> None:
        """This node was cut off from Redis for too long: these members (all, if the
        room was ``told`` they left) are disconnected, since their names may be someone
        else's now. A client with ``--resume`` comes back and is shown what it missed."""
        here = [*self._members, *self._joining]
        everyone = here if told else [i for i in members if i in self._members]
        self._postbox.post(everyone, protocol.CUT_OFF)
        for member_id in everyone:
            self.leave(member_id, "cut off from the cluster", tell=not told)
        for member_id in everyone:
            self._postbox.dismiss(member_id)

    def leave(self, member_id: int, reason: str, tell: bool = True) -> None:
        if member_id in self._joining:
            self._joining.discard(member_id)  # its arrival, when it answers, is undone
            if member_id in self._arrivals:
                self._arrivals.remove(member_id)
            return
        member = self._members.pop(member_id, None)
        if member is None:
            return
        self._parked.pop(member_id, None)
        self._roster_changed()
        if member_id in self._resumers:
            self._resumers.remove(member_id)
        if tell:
            self._queue(b"x", member, None, t=f"{member.name} left ({reason})".encode())
        self._releases.append((member_id, protocol.name_key(member.name)))
        log.info("%s left (%s)", member.name, reason)

    def close(self) -> None:
        """The node is shutting down: its members leave the room, everyone is told;
        the notices are appended if Redis answers within CLOSE_WAIT."""
        everyone = [*self._members, *self._joining]
        self._postbox.post(everyone, protocol.SERVER_SHUTTING_DOWN)
        for member_id in everyone:
            self.leave(member_id, "server shutting down")
        deadline = time.monotonic() + CLOSE_WAIT
        self._cluster.appends.drain(CLOSE_WAIT)  # an append still out ends first
        self._send_off()
        self._cluster.appends.drain(max(0.0, deadline - time.monotonic()))
        for member_id in everyone:
            self._postbox.dismiss(member_id)

    # --- what members say -------------------------------------------------------------

    def receive(self, member_id: int, block: bytes) -> bytes:
        """As `Room.receive`: the lines from a command whose reply would not fit in the
        asker's queue on come back, and so do those after a command that waits for
        Redis (and all of them while one does, or while the member is arriving)."""
        if member_id in self._joining:
            return block
        member = self._members.get(member_id)
        if member is None:
            return b""
        if member.busy:
            return block
        if not protocol.has_command(block):
            self._queue(b"c", member, member_id, b=block)
            return b""

        def command(line: bytes) -> int:
            if not self._postbox.has_room(member.id):
                return protocol.WAIT
            self._command(member, line)
            if member.id not in self._members:
                return protocol.GONE
            return protocol.WAIT_AFTER if member.busy else protocol.TAKEN

        return protocol.split_commands(
            block, lambda run: self._queue(b"c", member, member_id, b=run), command
        )

    def line_too_long(self, member_id: int) -> None:
        if member_id in self._members:
            self._postbox.post((member_id,), protocol.line_too_long(self._max_line))

    def _tell(self, member: Member, data: bytes) -> None:
        self._postbox.post((member.id,), data)

    def _command(self, member: Member, line: bytes) -> None:
        command = protocol.parse_line(line.decode("utf-8", "replace"))
        cluster = self._cluster
        if isinstance(command, protocol.Nick):
            self._rename(member, command.name)
        elif isinstance(command, protocol.Who):
            self._ask(member, cluster.roster, lambda names: self._tell(member, _here(names)))
        elif isinstance(command, protocol.Private):
            key = protocol.name_key(command.name)
            lookup = lambda: cluster.lookup(key)  # noqa: E731
            self._ask(member, lookup, lambda target: self._private(member, command, target))
        elif isinstance(command, protocol.Action):
            self._queue(b"a", member, member.id, t=command.text.encode())
        elif isinstance(command, protocol.Quit):
            self.leave(member.id, command.reason)
            self._postbox.dismiss(member.id)
        elif isinstance(command, protocol.Help):
            self._tell(member, protocol.help_lines())
        elif isinstance(command, protocol.History):
            count = command.count
            # Looks back at most 4 entries per line asked for (some are notices).
            found = lambda: cluster.history(4 * count)  # noqa: E731
            self._ask(member, found, lambda got: self._tell(member, self._replay(got, count)))
        elif isinstance(command, protocol.Resume):
            self._resume(member, command.since)
        elif isinstance(command, protocol.Invalid):
            self._tell(member, protocol.error(command.message))
        else:  # Chat never reaches here: receive() queues chat lines itself.
            raise AssertionError(f"unexpected command {command!r}")

    def _private(
        self, member: Member, command: protocol.Private, target: tuple[str, int, str] | None
    ) -> None:
        if target is None:
            self._tell(member, protocol.error(f"no such user {command.name!r}"))
        elif target[:2] == (self._cluster.node, member.id):
            self._tell(member, protocol.error(protocol.MSG_TO_YOURSELF))
        else:
            node, target_id, _ = target
            fields: Fields = {b"k": b"p", b"n": node.encode(), b"m": str(target_id).encode()}
            fields.update({b"f": member.name.encode(), b"t": command.text.encode()})
            self._pending.append((fields, member.id))

    def _rename(self, member: Member, new: str) -> None:
        problem = protocol.name_error(new)
        if problem is None and new == member.name:
            problem = protocol.already_named(new)
        if problem is None and protocol.name_reserved(new):
            problem = protocol.name_is_reserved(new)
        if problem is not None:
            self._tell(member, protocol.error(problem))
            return
        key, old_key = protocol.name_key(new), protocol.name_key(member.name)
        cluster = self._cluster

        def claim() -> str | None:
            holder = cluster.claim(member.id, new, key)
            if holder is None and old_key != key:
                # Best effort: no longer renewed, the old claim lapses with its lease anyway.
                with contextlib.suppress(Unavailable):
                    cluster.release_only(old_key)
            return holder

        def renamed(holder: str | None) -> None:
            if holder is not None:
                self._tell(member, protocol.error(protocol.name_taken(new)))
                return
            old = member.name
            member.name = new
            member.prefix = protocol.chat_prefix(new)
            self._queue(b"x", member, member.id, t=f"{old} is now known as {new}".encode())
            self._tell(member, protocol.notice(protocol.you_renamed(new)))
            log.info("%s is now known as %s", old, new)

        def gone(holder: str | None) -> None:
            if holder is None:  # it left while its claim was out: the name goes back
                self._calls.submit(lambda: cluster.let_go([(member.id, key)]))

        self._ask(member, claim, renamed, gone=gone)


def _here(names: list[str]) -> bytes:
    return protocol.notice(f"here ({len(names)}): {', '.join(names)}")


_JOINED = re.compile(r"(\S+) joined")
_LEFT = re.compile(r"(\S+) (left \(.*\))")
# A dead node's members are announced one by one: the harness's failover scenario (and
# perhaps other watchers) look for each `* NAME left (server lost)` line as it is.
_LOST = "left (server lost)"


def _arrival(fields: Fields) -> tuple[str, str] | None:
    """A join or leave notice entry as (what, name): ("joined", "alice"), ("left
    (quit)", "bob"); None for any other entry."""
    if fields.get(b"k") != b"x":
        return None
    text = fields.get(b"t", b"").decode("utf-8", "replace")
    joined = _JOINED.fullmatch(text)
    if joined is not None:
        return "joined", joined.group(1)
    left = _LEFT.fullmatch(text)
    if left is not None and left.group(2) != _LOST:
        return left.group(2), left.group(1)
    return None


def _public(fields: Fields) -> bytes | None:
    """A chat or action entry as its recipients read it; None for any other kind."""
    kind = fields.get(b"k")
    if kind == b"c":
        return protocol.prefix_block(protocol.chat_prefix(fields[b"p"].decode()), fields[b"b"])
    if kind == b"a":
        return protocol.action_line(fields[b"p"].decode(), fields[b"t"].decode())
    return None
