"""The room of a node in a cluster: the same rules as `chatbox.server.room`, one shared order.

The single-node `Room` posts each line straight to its recipients. Here what concerns
others (chat lines, actions, notices, private messages) is queued during the hub's turn
and appended to the cluster's stream at its end (`tick`, one pipelined round trip); the
entries the reader brings back, this node's and every other node's, are delivered to this
node's members in stream order. So every member on every node sees one order, and a
sender's lines keep theirs (they are appended in the order its worker read them).

What concerns the asker alone (its welcome, /who, /help, errors) is posted at once, as in
the single-node room. A line that cannot be appended because Redis is unreachable is
answered with ``! cluster unavailable``, never dropped silently.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass, field

from chatbox import protocol
from chatbox.server.cluster import Cluster, Fields, Unavailable, stream_order
from chatbox.server.room import Postbox

log = logging.getLogger("chatbox.room")

UNAVAILABLE = protocol.error("cluster unavailable")
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


@dataclass
class Member:
    id: int
    name: str
    # The last entry delivered before it joined: what /resume replays ends there.
    joined_at: bytes = b"0-0"
    prefix: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.prefix = protocol.chat_prefix(self.name)


class ClusterRoom:
    def __init__(
        self, postbox: Postbox, cluster: Cluster, max_line: int = protocol.DEFAULT_MAX_LINE
    ) -> None:
        self._postbox = postbox
        self._cluster = cluster
        self._node = cluster.node.encode()
        self._max_line = max_line
        self._members: dict[int, Member] = {}
        self._everyone: list[int] = []
        # Entries to append at the end of this turn, each with the member that caused it
        # (told if the append fails), or None for notices nobody is waiting on.
        self._pending: list[tuple[Fields, int | None]] = []
        # The last entry delivered to this node's members, the members that asked for
        # their place (/resume), and those resumed from a place this node has not
        # delivered yet (it lags behind the node they came from): they are not sent
        # again what they had already seen, up to that place.
        self._delivered = cluster.start_id
        self._resumers: list[int] = []
        self._ahead: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member_id: int) -> bool:
        return member_id in self._members

    def name_of(self, member_id: int) -> str:
        return self._members[member_id].name

    # --- the stream ---------------------------------------------------------------------

    def _queue(self, kind: bytes, member: Member | None, sender: int | None, **rest: bytes) -> None:
        fields: Fields = {b"k": kind, b"n": self._node}
        if member is not None:
            fields[b"m"] = str(member.id).encode()
            fields[b"p"] = member.name.encode()
        fields.update((key.encode(), value) for key, value in rest.items())
        self._pending.append((fields, sender))

    def tick(self) -> None:
        """Once per hub turn: append what this turn queued, deliver what was read."""
        if self._pending:
            pending, self._pending = self._pending, []
            try:
                self._cluster.append(fields for fields, _ in pending)
            except Unavailable:
                told = {s for _, s in pending if s is not None and s in self._members}
                self._postbox.post(told, UNAVAILABLE)
                lost = sum(1 for _, s in pending if s is None)
                if lost:
                    log.warning("cluster unavailable: %d notices not appended", lost)
        taken = self._cluster.take()
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
        if taken:
            self._delivered = taken[-1][0]
            if self._resumers:
                self._postbox.post(self._resumers, protocol.id_line(self._delivered.decode()))

    def end_turn(self) -> None:
        """Nothing to do here: each join and leave is its own entry in the stream, and
        `tick` coalesces the runs of them it reads back."""

    def _replay(self, count: int) -> bytes:
        """The last ``count`` chat lines and actions of the stream (notices and private
        messages are not replayed); looks back at most 4 entries per line asked for."""
        lines: list[bytes] = []
        for fields in self._cluster.history(4 * count):
            data = _public(fields)
            if data is not None:
                lines += data.splitlines(keepends=True)
        return protocol.history_lines(lines[-count:])

    def _resume(self, member: Member, since: str | None) -> None:
        """Replay the stream after ``since`` up to where the member joined (what came
        later reached it live), then its place, and its place after every tick."""
        if since is not None:
            after = since.encode() if _STREAM_ID.fullmatch(since) else None
            limit = 4 * protocol.RESUME_MAX  # entries, of which some are notices
            repeated = 0
            if (
                after is not None
                and stream_order(after) > stream_order(member.joined_at)
                and self._cluster.is_place(after)
            ):
                # Seen on a node that is ahead of this one: nothing to replay; what this
                # node delivers up to there is not sent again, and what it delivered
                # since the member joined up to there is counted, for the client to
                # leave out (those lines came before this reply).
                self._ahead[member.id] = stream_order(after)
                upto = min(after, self._delivered, key=stream_order)
                if stream_order(upto) > stream_order(member.joined_at):
                    sent, _ = self._cluster.since(member.joined_at, upto, limit)
                    repeated = len(self._public_lines(sent, member))
            entries, complete = self._cluster.since(after, member.joined_at, limit)
            lines = self._public_lines(entries, None)
            if len(lines) > protocol.RESUME_MAX:
                lines, complete = lines[-protocol.RESUME_MAX :], False
            self._tell(member, protocol.resume_lines(lines, since, complete, repeated))
        self._tell(member, protocol.id_line(self._delivered.decode()))
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
            if member_id is not None and member_id in self._members:
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

    def _deliver(self, entry_id: bytes, fields: Fields) -> None:
        kind = fields.get(b"k")
        ours = fields.get(b"n") == self._node
        sender = int(fields.get(b"m", b"0")) if ours else None
        if kind == b"p":
            if ours and sender in self._members:
                text = fields[b"t"].decode()
                self._postbox.post((sender,), protocol.private_line(fields[b"f"].decode(), text))
            return
        recipients = [i for i in self._everyone if i != sender]
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

    def join(self, member_id: int) -> str:
        """Admit a member under a guest name fresh across the cluster."""
        name = ""
        try:
            while True:
                name = f"guest{self._cluster.guest_number()}"
                if self._cluster.claim(member_id, name, protocol.name_key(name)) is None:
                    break
            # Not the whole roster: a welcome names a few (a storm of N joins must not
            # read N names N times); /who lists everyone.
            others, total = self._cluster.some_names(protocol.WELCOME_NAMES + 1)
        except Unavailable:
            if name:  # granted or not: this node no longer renews it
                with contextlib.suppress(Unavailable):
                    self._cluster.release(member_id, protocol.name_key(name))
            self._postbox.post((member_id,), UNAVAILABLE)
            self._postbox.dismiss(member_id)
            return ""
        member = Member(member_id, name, self._delivered)
        self._members[member_id] = member
        self._everyone = list(self._members)
        if name in others:
            others.remove(name)
        else:
            others = others[: protocol.WELCOME_NAMES]
        count = max(total - 1, len(others))
        self._postbox.post((member_id,), protocol.welcome(name, others, count))
        self._queue(b"x", member, None, t=f"{name} joined".encode())
        log.info("%s joined (%d on this node)", name, len(self._members))
        return name

    def leave(self, member_id: int, reason: str) -> None:
        member = self._members.pop(member_id, None)
        if member is None:
            return
        self._everyone = list(self._members)
        if member_id in self._resumers:
            self._resumers.remove(member_id)
        self._queue(b"x", member, None, t=f"{member.name} left ({reason})".encode())
        try:
            self._cluster.release(member_id, protocol.name_key(member.name))
            self._cluster.forget_member(member_id)
        except Unavailable:
            pass  # the claim lapses with its lease: nobody renews it any more
        log.info("%s left (%s)", member.name, reason)

    def close(self) -> None:
        """The node is shutting down: its members leave the room, everyone is told."""
        everyone = self._everyone
        self._postbox.post(everyone, protocol.SERVER_SHUTTING_DOWN)
        for member_id in everyone:
            self.leave(member_id, "server shutting down")
        self.tick()
        for member_id in everyone:
            self._postbox.dismiss(member_id)

    # --- what members say -------------------------------------------------------------

    def receive(self, member_id: int, block: bytes) -> bytes:
        """As `Room.receive`; every line is taken (replies are not yet held back for
        the asker's queue in a cluster), so nothing comes back."""
        member = self._members.get(member_id)
        if member is None:
            return b""
        if not (block.startswith(b"/") or b"\n/" in block):
            self._queue(b"c", member, member_id, b=block)
            return b""
        chat: list[bytes] = []
        for line in block[:-1].split(b"\n"):
            if line.startswith(b"/") and not line.startswith(b"//"):
                if chat:
                    self._queue(b"c", member, member_id, b=b"\n".join(chat) + b"\n")
                    chat = []
                self._command(member, line)
                if member.id not in self._members:
                    return b""
            else:
                chat.append(line[1:] if line.startswith(b"//") else line)
        if chat:
            self._queue(b"c", member, member_id, b=b"\n".join(chat) + b"\n")
        return b""

    def line_too_long(self, member_id: int) -> None:
        if member_id in self._members:
            self._postbox.post((member_id,), protocol.line_too_long(self._max_line))

    def _tell(self, member: Member, data: bytes) -> None:
        self._postbox.post((member.id,), data)

    def _command(self, member: Member, line: bytes) -> None:
        command = protocol.parse_line(line.decode("utf-8", "replace"))
        try:
            self._run(member, command)
        except Unavailable:
            self._tell(member, UNAVAILABLE)

    def _run(self, member: Member, command: protocol.Command) -> None:
        if isinstance(command, protocol.Nick):
            self._rename(member, command.name)
        elif isinstance(command, protocol.Who):
            names = self._cluster.roster()
            self._tell(member, protocol.notice(f"here ({len(names)}): {', '.join(names)}"))
        elif isinstance(command, protocol.Private):
            target = self._cluster.lookup(protocol.name_key(command.name))
            if target is None:
                self._tell(member, protocol.error(f"no such user {command.name!r}"))
            elif target[:2] == (self._cluster.node, member.id):
                self._tell(member, protocol.error(protocol.MSG_TO_YOURSELF))
            else:
                node, target_id, _ = target
                fields: Fields = {b"k": b"p", b"n": node.encode(), b"m": str(target_id).encode()}
                fields.update({b"f": member.name.encode(), b"t": command.text.encode()})
                self._pending.append((fields, member.id))
        elif isinstance(command, protocol.Action):
            self._queue(b"a", member, member.id, t=command.text.encode())
        elif isinstance(command, protocol.Quit):
            self.leave(member.id, command.reason)
            self._postbox.dismiss(member.id)
        elif isinstance(command, protocol.Help):
            self._tell(member, protocol.help_lines())
        elif isinstance(command, protocol.History):
            self._tell(member, self._replay(command.count))
        elif isinstance(command, protocol.Resume):
            self._resume(member, command.since)
        elif isinstance(command, protocol.Invalid):
            self._tell(member, protocol.error(command.message))
        else:  # Chat never reaches here: receive() queues chat lines itself.
            raise AssertionError(f"unexpected command {command!r}")

    def _rename(self, member: Member, new: str) -> None:
        problem = protocol.name_error(new)
        if problem is None and new == member.name:
            problem = protocol.already_named(new)
        if problem is None and protocol.name_reserved(new):
            problem = protocol.name_is_reserved(new)
        key = protocol.name_key(new)
        if problem is None and self._cluster.claim(member.id, new, key) is not None:
            problem = protocol.name_taken(new)
        if problem is not None:
            self._tell(member, protocol.error(problem))
            return
        old = member.name
        if protocol.name_key(old) != key:
            # Best effort: no longer renewed, the old claim lapses with its lease anyway.
            with contextlib.suppress(Unavailable):
                self._cluster.release_only(protocol.name_key(old))
        member.name = new
        member.prefix = protocol.chat_prefix(new)
        self._queue(b"x", member, member.id, t=f"{old} is now known as {new}".encode())
        self._tell(member, protocol.notice(protocol.you_renamed(new)))
        log.info("%s is now known as %s", old, new)


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
