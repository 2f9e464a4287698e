"""The input timeouts (`--idle-timeout`, `--line-timeout`): one clock per client.

A client silent for too long is gone (a laptop closed, a NAT that forgot it); a client
that began a line and does not finish it in time is holding a slot (slowloris). Both
are the worker's to see, because only the worker sees every byte: the bare newlines
that keep a connection alive (they never reach the hub) and partial lines. A plain
worker (`chatbox.server.worker`) and a TLS worker (`chatbox.server.tls`) read their
clients differently, so each tells an `InputClock` what it read and asks it when the
client times out: the rule lives here once, for both.

The clock does not run while the server holds the client back (its lines wait for room
in the channel): that wait is the server's, not the client's.

A client that trickles (reads that bring a few bytes of a line and no line's end) is
read less often, `Trickle`: slowloris's cost to everyone else is the wake-ups it causes,
not its bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatbox.server.channel import timeout_note

# Five minutes of silence is a client that is gone; chatbox-client sends a bare newline
# after a minute of its own silence.
DEFAULT_IDLE_TIMEOUT = 300.0
# A person's telnet sends each key as typed: a minute for one line is generous; one byte
# every few seconds (slowloris) never finishes a line of any length in that time.
DEFAULT_LINE_TIMEOUT = 60.0

# A read that brings fewer bytes than this and no line's end is a trickle: a person's
# client sends a line in one write, and a long line over a slow link comes in segments
# of hundreds of bytes. After one, the client is not read again for TRICKLE_PAUSE (the
# kernel keeps what it sends meanwhile): 500 connections at a byte every 100 ms woke
# their workers 5,000 times a second (in thread mode, each a turn of the interpreter
# lock the room's relaying needs too); now 1,000. A person typing into telnet in
# character mode sees a line relayed up to this much later.
TRICKLE_BYTES = 64
TRICKLE_PAUSE = 0.5


@dataclass(frozen=True)
class InputTimeouts:
    """How long a client may send nothing (``idle``), and how long a line it began may
    take to finish (``line``); 0 turns one off."""

    idle: float = DEFAULT_IDLE_TIMEOUT
    line: float = DEFAULT_LINE_TIMEOUT


_NO_LIMIT: tuple[float | None, bytes] = (None, b"")


class InputClock:
    """One client's timeouts, from the moment it may talk (in the room) until it times
    out once; then ``expired`` and the worker throws away what it still sends."""

    def __init__(self, timeouts: InputTimeouts, now: float) -> None:
        self._timeouts = timeouts
        self._heard_at = now  # its last bytes (or the end of the server's last hold)
        self._line_since: float | None = None  # when the line being received began
        self.expired = False
        self._silent = True  # nothing heard yet

    def hold(self, now: float) -> None:
        """The server holds the client back at ``now``: its clocks start afresh."""
        self._heard_at = now
        if self._line_since is not None:
            self._line_since = now

    def heard(self, now: float, finished: bool, holding: bool) -> bool:
        """Bytes arrived at ``now``: ``finished`` whether they ended a line (or more),
        ``holding`` whether a line is begun and waits for its end. Whether these are
        the first: then the worker tells the hub (`heard_note`), for whom a connection
        that never sent anything is the first to go when the server is nearly full."""
        first, self._silent = self._silent, False
        self._heard_at = now
        if not holding:
            self._line_since = None
        elif self._line_since is None or finished:
            # Begun now, or a line finished and the next one begun.
            self._line_since = now
        return first

    def remaining(self, now: float) -> float | None:
        """Seconds until the client times out if it keeps silent (0 or less: it has);
        None if no timeout applies, or it has already expired."""
        if self.expired:
            return None
        if self._line_since is not None and self._timeouts.line:
            # A partial line keeps the connection busy: the line's own clock applies.
            return self._line_since + self._timeouts.line - now
        if self._timeouts.idle:
            return self._heard_at + self._timeouts.idle - now
        return None

    def turn(self, now: float, held: bool) -> tuple[float | None, bytes]:
        """A turn of a worker's loop while the client may still send: how long the
        worker may wait for it (None: no limit), and the note telling the hub that it
        timed out just now (else empty). ``held``: the server holds the client back
        (its lines wait for room in the channel), so no clock runs."""
        if held:
            self.hold(now)
            return _NO_LIMIT
        remaining = self.remaining(now)
        if remaining is None:
            return _NO_LIMIT
        if remaining > 0:
            return remaining, b""
        return None, self.expire()

    def expire(self) -> bytes:
        """Mark the client timed out; the note that tells the hub why."""
        self.expired = True
        return timeout_note(idle=self._line_since is None)


class Trickle:
    """When a client that trickles is next read: ``read`` is told of each read, and
    ``pause`` says how long the worker leaves the client unread."""

    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until = 0.0

    def read(self, size: int, finished: bool, holding: bool, now: float) -> None:
        """A read of ``size`` bytes at ``now``; ``finished``: it ended a line (or more);
        ``holding``: a line is begun and waits for its end."""
        trickling = holding and not finished and size < TRICKLE_BYTES
        self._until = now + TRICKLE_PAUSE if trickling else 0.0

    def pause(self, now: float) -> float:
        """Seconds the client is still left unread (0.0: read it when it is readable)."""
        return max(0.0, self._until - now) if self._until else 0.0
