"""The room: who is here, what they are called, and who gets which line.

This is the only owner of state shared between clients (names, roster, routing) and the
one sequencer of messages: every delivery goes through `Postbox.post` in one global
order, so all recipients see the same order. It lives in the hub, in the server's parent
process; in fork mode a copy of it in a worker would silently diverge, so workers never
touch it.

Like the protocol module it does no I/O: the hub hands it decoded events - a member's
lines, a line that was too long, a departure - and implements `Postbox`, so every rule
here is testable with a list standing in for the sockets. A departure the hub reports
(`leave`) is not reported back; only a member that quits is `dismiss`ed by the room.

Join and leave notices are coalesced: consecutive joins (or consecutive leaves for the
same reason) with nothing else posted in between wait in a run, and the run goes out as
one notice per recipient when anything else is posted or when the hub ends its turn
(`end_turn`). Every recipient learns of every joiner (named, or counted in "and N
others"), exactly once.

A storm spans many hub turns (the hub takes 64 connections a turn, and in fork mode a
client enters when its worker has started), so a run per turn would still cost O(N²/64)
lines or worse - 35 reads per client in a 5,000-client storm. So, given a ``hold`` (the
hub gives `STORM_HOLD`), a run is part of a storm when it begins less than a hold after
a previous run of several went out, or while more members are on their way (``coming``: the hub
counts the clients whose workers are starting). Such a run waits at the end of its
turns until it is as long as the room was when it began, and at least `STORM_RUN` long
(so runs double: a storm of N costs about 2N notice lines in O(log N) runs), or until
it has waited its hold (`end_turn` says when; the hub wakes for it). Each held run of a
storm may wait twice as long as the one before, up to `STORM_HOLD_MAX` (that bound
alone while members are on their way), so a storm that trickles in slowly (a loaded
machine forking workers one by one) costs O(log T) runs and then one per
`STORM_HOLD_MAX`, not one per turn. A join after a quiet spell still goes out at the
end of its turn, and anything else posted sends the run first, as always.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from chatbox import protocol
from chatbox.server.history import History

log = logging.getLogger("chatbox.room")

# The longest the first held run of a storm waits (seconds); each next one may wait
# twice as long as the one before, up to STORM_HOLD_MAX. A notice is late by that much
# at most, and only while joins (or leaves) keep coming.
STORM_HOLD = 0.05
STORM_HOLD_MAX = 2.0
# A held run that has this many joins (or leaves) goes out even into a room smaller
# than that: a storm into a small room does not double its way up from one.
STORM_RUN = 64


class Postbox(Protocol):
    """What the room needs from whoever moves bytes (the hub)."""

    def post(self, member_ids: Iterable[int], data: bytes) -> None:
        """Queue ``data`` for each member, in call order."""

    def dismiss(self, member_id: int) -> None:
        """The member chose to leave (or the room closed): flush what is queued for it,
        then disconnect it."""

    def has_room(self, member_id: int) -> bool:
        """Whether a reply to this member fits in its queue now; a command is handled
        only then, so replies count against the asker's queue before they are built."""


@dataclass
class Member:
    id: int
    name: str
    # Where the history stood when it joined: what /resume replays ends there, since
    # everything later was sent to it live.
    joined_at: int = 0
    prefix: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.prefix = protocol.chat_prefix(self.name)


class Room:
    def __init__(
        self,
        postbox: Postbox,
        max_line: int = protocol.DEFAULT_MAX_LINE,
        history: History | None = None,
        hold: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        coming: Callable[[], int] = lambda: 0,
    ) -> None:
        self._postbox = postbox
        self._max_line = max_line
        self._members: dict[int, Member] = {}  # insertion order = joining order
        self._by_key: dict[str, Member] = {}
        # The id lists recipients are drawn from, rebuilt only when the roster changes,
        # because fan-out reads them for every relayed block.
        self._everyone: list[int] = []
        self._everyone_stale = False  # rebuilt once after a run of joins or leaves
        self._guest_numbers = itertools.count(1)
        # The run of notices not yet posted: joined (member id, name) or left names.
        self._joins: list[tuple[int, str]] = []
        self._leaves: list[str] = []
        self._leave_reason = ""
        # Storms (``hold`` 0: every run goes out at the end of its turn): when the last
        # run went out, when the pending one began, the room's size then, its hold (0:
        # none), and whether it began soon enough after the last to be held.
        self._hold = hold
        self._clock = clock
        self._coming = coming
        self._posted_at = -math.inf
        self._run_began = 0.0
        self._run_base = 0
        self._run_hold = 0.0
        self._storming = False
        self._last_length = 0  # joins or leaves in the last run that went out
        # What /history and /resume replay: the latest relayed blocks (chat, actions).
        self._history = history if history is not None else History()
        # Members that asked for their place (/resume) and the place they were last told.
        self._resumers: list[int] = []
        self._announced = self._history.last_seq

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member_id: int) -> bool:
        return member_id in self._members

    def names(self) -> list[str]:
        return [m.name for m in self._members.values()]

    def name_of(self, member_id: int) -> str:
        return self._members[member_id].name

    # --- arrivals and departures ------------------------------------------------------

    def join(self, member_id: int) -> str:
        """Admit a new member under a fresh guest name; returns the name."""
        name = self._free_guest_name()
        others = [
            m.name for m in itertools.islice(self._members.values(), protocol.WELCOME_NAMES + 1)
        ]
        if self._leaves:
            self._end_run()
        if not self._joins:
            self._run_begins()
        member = Member(member_id, name, self._history.last_seq)
        self._members[member_id] = member
        self._by_key[protocol.name_key(name)] = member
        self._joins.append((member_id, name))
        self._everyone_stale = True
        # Straight out, not through the run: no notice of the run goes to the newcomer
        # before it, so its order against them is kept.
        self._postbox.post((member_id,), protocol.welcome(name, others, len(self._members) - 1))
        log.info("%s joined (%d here)", name, len(self._members))
        return name

    def leave(self, member_id: int, reason: str) -> None:
        """Remove a member and tell everyone else why; a no-op if it already left.

        The caller deals with the connection: the hub when the client went away or was
        cut off, the room itself (`dismiss`) when the member quit.
        """
        member = self._members.pop(member_id, None)
        if member is None:
            return
        del self._by_key[protocol.name_key(member.name)]
        if member_id in self._resumers:
            self._resumers.remove(member_id)
        if self._joins or (self._leaves and reason != self._leave_reason):
            self._end_run()
        if not self._leaves:
            self._run_begins()
        self._leaves.append(member.name)
        self._leave_reason = reason
        self._everyone_stale = True
        log.info("%s left (%s)", member.name, reason)

    def end_turn(self) -> float | None:
        """The hub ends its loop turn: post the run of join or leave notices (unless a
        storm holds it), tell the members that asked where they are now, and let the
        history write its turn. Returns when a held run is due (monotonic; the hub must
        end a turn then), or None when none waits."""
        due = None
        if self._joins or self._leaves:
            due = self._run_due()
            if due is None:
                self._end_run()
        if self._announced != self._history.last_seq:
            self._announced = self._history.last_seq
            if self._resumers:
                self._postbox.post(self._resumers, protocol.id_line(self._history.position()))
        self._history.end_turn()
        return due

    def _run_begins(self) -> None:
        if self._hold:
            now = self._clock()
            self._run_began = now
            self._run_base = len(self._members)
            # One join after another, each once the last was announced (people
            # arriving one by one) is no storm: only a run after a run of several is.
            soon = now - self._posted_at < max(self._hold, self._run_hold)
            self._storming = soon and self._last_length > 1
            if not self._storming:
                self._run_hold = 0.0
            elif self._run_hold:
                self._run_hold = min(STORM_HOLD_MAX, 2 * self._run_hold)
            else:
                self._run_hold = self._hold

    def _run_due(self) -> float | None:
        """When the pending run must go out, if a storm holds it past this turn."""
        if not self._hold:
            return None
        coming = self._coming() > 0
        length = len(self._joins) + len(self._leaves)
        if not (self._storming or coming) or length >= max(self._run_base, STORM_RUN):
            return None
        due = self._run_began + (STORM_HOLD_MAX if coming else self._run_hold)
        return due if self._clock() < due else None

    def _end_run(self) -> None:
        if self._hold:
            self._posted_at = self._clock()
            self._last_length = len(self._joins) + len(self._leaves)
        joins, self._joins = self._joins, []
        leaves, self._leaves = self._leaves, []
        everyone = self._recipients()
        if leaves:
            self._postbox.post(
                everyone, protocol.arrivals(leaves, len(leaves), f"left ({self._leave_reason})")
            )
        if not joins:
            return
        # Those who were here before the run hear of all of it; each newcomer of the
        # run hears of those who came after it (its welcome named those before).
        newcomers = {member_id for member_id, _ in joins}
        names = [name for _, name in joins]
        before = [i for i in everyone if i not in newcomers]
        if before:
            self._postbox.post(before, protocol.arrivals(names, len(names), "joined"))
        for index, (member_id, _) in enumerate(joins[:-1], start=1):
            later = names[index : index + protocol.NOTICE_NAMES]
            self._postbox.post((member_id,), protocol.arrivals(later, len(names) - index, "joined"))

    def _recipients(self) -> list[int]:
        """Everyone here, in joining order (the list is rebuilt once per run of joins
        or leaves, not once per join: a storm would make that O(N²))."""
        if self._everyone_stale:
            self._everyone = list(self._members)
            self._everyone_stale = False
        return self._everyone

    def _post(self, member_ids: Iterable[int], data: bytes) -> None:
        """Post anything but a welcome: the run of notices goes first, keeping the order."""
        if self._joins or self._leaves:
            self._end_run()
        self._postbox.post(member_ids, data)

    def close(self) -> None:
        """The server is shutting down: tell everyone, and dismiss them all."""
        if self._joins or self._leaves:
            self._end_run()
        self.end_turn()
        everyone = self._recipients()
        self._postbox.post(everyone, protocol.SERVER_SHUTTING_DOWN)
        self._members.clear()
        self._by_key.clear()
        self._resumers.clear()
        self._everyone = []
        for member_id in everyone:
            self._postbox.dismiss(member_id)

    def _free_guest_name(self) -> str:
        while True:
            name = f"guest{next(self._guest_numbers)}"
            if protocol.name_key(name) not in self._by_key:
                return name

    # --- what members say -------------------------------------------------------------

    def accepts(self, member_id: int) -> bool:
        """Whether the member's lines can be handled now: always here (nothing is ever
        out; in a cluster, see `ClusterRoom.accepts`)."""
        return True

    def receive(self, member_id: int, block: bytes) -> bytes:
        """Handle complete lines from a member's worker (each ends in LF); return the
        lines not handled yet (empty when all were), to be handed back later.

        The common case - a block of plain chat lines - is relayed as one prefixed
        block, without looking at each line. Lines from a member that has left are
        ignored: its worker may still be sending what was already on the way. A command
        is handled only while its reply fits in the member's queue (`Postbox.has_room`):
        the lines from the first one that does not fit on come back to the caller, so
        a storm of /who cannot grow the server past the asker's --sendq.
        """
        member = self._members.get(member_id)
        if member is None:
            return b""
        if not protocol.has_command(block):
            self._relay(member, block)
            return b""

        def command(line: bytes) -> int:
            if not self._postbox.has_room(member.id):
                return protocol.WAIT
            self._command(member, line)
            return protocol.TAKEN if member.id in self._members else protocol.GONE

        return protocol.split_commands(block, lambda run: self._relay(member, run), command)

    def _relay(self, member: Member, block: bytes) -> None:
        if self._joins or self._leaves:
            self._end_run()
        recipients = [i for i in self._recipients() if i != member.id]
        data = protocol.prefix_block(member.prefix, block)
        self._remember(data)
        if recipients:
            self._postbox.post(recipients, data)

    def _remember(self, data: bytes) -> None:
        self._history.remember(data)

    def _replay(self, count: int) -> bytes:
        return protocol.history_lines(self._history.recent(count))

    def _resume(self, member: Member, since: str | None) -> None:
        """Replay what was said after ``since`` until the member joined (what came later
        reached it live), then its place, and its place after every turn from now on."""
        if since is not None:
            lines, complete = self._history.since(since, member.joined_at)
            self._post((member.id,), protocol.resume_lines(lines, since, complete))
        self._post((member.id,), protocol.id_line(self._history.position()))
        if member.id not in self._resumers:
            self._resumers.append(member.id)

    def line_too_long(self, member_id: int) -> None:
        """The member's worker discarded a line over the limit: tell the member alone."""
        if member_id in self._members:
            self._post((member_id,), protocol.line_too_long(self._max_line))

    def _command(self, member: Member, line: bytes) -> None:
        command = protocol.parse_line(line.decode("utf-8", "replace"))
        if isinstance(command, protocol.Nick):
            self._rename(member, command.name)
        elif isinstance(command, protocol.Who):
            names = self.names()
            text = f"here ({len(names)}): {', '.join(names)}"
            self._post((member.id,), protocol.notice(text))
        elif isinstance(command, protocol.Private):
            target = self._by_key.get(protocol.name_key(command.name))
            if target is None:
                self._post((member.id,), protocol.error(f"no such user {command.name!r}"))
            elif target is member:
                # The sender gets nothing back of a private message (docs/protocol.md);
                # one to oneself would be exactly that.
                self._post((member.id,), protocol.error(protocol.MSG_TO_YOURSELF))
            else:
                self._post((target.id,), protocol.private_line(member.name, command.text))
        elif isinstance(command, protocol.Action):
            recipients = [i for i in self._recipients() if i != member.id]
            data = protocol.action_line(member.name, command.text)
            self._remember(data)
            self._post(recipients, data)
        elif isinstance(command, protocol.History):
            self._post((member.id,), self._replay(command.count))
        elif isinstance(command, protocol.Resume):
            self._resume(member, command.since)
        elif isinstance(command, protocol.Quit):
            self.leave(member.id, command.reason)
            self._postbox.dismiss(member.id)
        elif isinstance(command, protocol.Help):
            self._post((member.id,), protocol.help_lines())
        elif isinstance(command, protocol.Invalid):
            self._post((member.id,), protocol.error(command.message))
        else:  # Chat never reaches here: receive() relays chat lines itself.
            raise AssertionError(f"unexpected command {command!r}")

    def _rename(self, member: Member, new: str) -> None:
        problem = protocol.name_error(new)
        if problem is None and new == member.name:
            problem = protocol.already_named(new)
        if problem is None and protocol.name_reserved(new):
            problem = protocol.name_is_reserved(new)
        key = protocol.name_key(new)
        if problem is None and key in self._by_key and self._by_key[key] is not member:
            problem = protocol.name_taken(new)
        if problem is not None:
            self._post((member.id,), protocol.error(problem))
            return
        old = member.name
        del self._by_key[protocol.name_key(old)]
        member.name = new
        member.prefix = protocol.chat_prefix(new)
        self._by_key[key] = member
        self.end_turn()
        others = [i for i in self._recipients() if i != member.id]
        self._post(others, protocol.notice(f"{old} is now known as {new}"))
        self._post((member.id,), protocol.notice(protocol.you_renamed(new)))
        log.info("%s is now known as %s", old, new)
