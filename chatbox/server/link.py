"""A link: the hub's side of one client, and the one lifecycle every event consults.

A link holds the client's socket, its worker's channel, its outbound queue (SendQ) and
the state it is in. The state is the only answer to "may this client still be sent
to, read from, shut down, closed?", so an event that arrives late - a socket reported
writable in the same select batch in which its worker ended - finds the link already
past the point where that event means anything, and is ignored::

    WAITING --ready--> OPEN --dismiss--> LEAVING --queue flushed--> SHUT --channel ends--> GONE
       |                 |                    ^                        ^                     ^
       +--refused, gone--)--------------------+                        |                     |
                         +----cut off (too slow), send failed----------+                     |
                         +----------worker ended (channel closed) before anything else-------+

- WAITING: accepted, not yet in the room: its worker is doing the TLS handshake or
  waiting for the password (only with `--tls-cert` or `--password-file`; a plain,
  open server's links start OPEN). Nothing is sent to it; its channel is read for the
  ready note. A wrong password takes it to LEAVING with its verdict queued.
- OPEN: in the room; what is posted is queued and sent; its channel is read.
- LEAVING: out of the room (quit, connection closed, server closing); what is queued
  still goes out (the room posts nothing new to a non-member); then it is shut.
- SHUT: the client socket is shut down and the hub's direction of the channel too;
  nothing is sent any more. The worker sees the end and closes its channel end.
- GONE: the worker has ended; both sockets are closed and unregistered. Final.

Transitions only go forward; each method below returns whether it moved the link, so
the hub does each step's work exactly once.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass, field

from chatbox.server.admission import Ticket
from chatbox.server.channel import ChannelEvent, ChannelReader
from chatbox.server.flood import FloodBucket
from chatbox.server.handover import Handover


class State(enum.Enum):
    WAITING = 0
    OPEN = 1
    LEAVING = 2
    SHUT = 3
    GONE = 4


@dataclass(eq=False)
class Link:
    """The hub's side of one client: its socket, its worker's channel, its queue, its state."""

    id: int
    client: socket.socket
    channel: socket.socket
    sendq: bytearray = field(default_factory=bytearray)
    inbound: ChannelReader = field(default_factory=ChannelReader)
    state: State = State.OPEN
    over_since: float | None = None  # when its queue went over the bound, if it is
    # What the selector watches for it, mirrored here so the hub changes a
    # registration only when it must (these are interest, not lifecycle).
    reading: bool = True  # its channel (unless paused for backpressure)
    want_write: bool = False  # its client socket, while output waits for room
    # While its queue waits for room: when its stall timer started, and the bytes it
    # must still take for the queue to count as moved (all that was queued then).
    moved_at: float = 0.0
    owed: int = 0
    bucket: FloodBucket | None = None  # its flood allowance (None: flood control off)
    # With TLS, ``client`` is the hub's end of the relay to the worker, and this is the
    # TCP connection itself: the worker speaks TLS on it; the hub holds it only to close
    # it last, after the worker's channel end (as it does a plain client's socket).
    raw: socket.socket | None = None
    # Thread mode: its worker's short cut into the hub (`chatbox.server.handover`).
    handover: Handover | None = None
    address: str = ""  # the client's IP address (the password gate's penalties)
    # What it sent that waits for room in its own queue (commands whose replies would
    # not fit); its channel is not read meanwhile.
    held: list[ChannelEvent] = field(default_factory=list)
    # Its place in its address's connection count, given back when it is GONE.
    ticket: Ticket = field(default_factory=lambda: Ticket(None))

    def start_stall_timer(self, now: float) -> None:
        """Its queue waits for room from ``now``: it has moved once all of it is out."""
        self.moved_at = now
        self.owed = len(self.sendq)

    def took(self, sent: int, now: float) -> bool:
        """Its socket took ``sent`` bytes: whether that moved its queue, which restarts
        the stall timer. A few bytes are not a move - a reader taking a byte a second
        would keep a queue (and a slot) forever - all that waited when it started is."""
        self.owed -= sent
        if self.owed > 0:
            return False
        self.start_stall_timer(now)
        return True

    @property
    def sending(self) -> bool:
        """Output may still be queued for it (OPEN) or still goes out (LEAVING)."""
        return self.state is State.OPEN or self.state is State.LEAVING

    @property
    def gone(self) -> bool:
        return self.state is State.GONE

    def admit(self) -> bool:
        """WAITING -> OPEN: it enters the room."""
        if self.state is not State.WAITING:
            return False
        self.state = State.OPEN
        return True

    def leave(self) -> bool:
        """OPEN or WAITING -> LEAVING: flush what is queued, then shut."""
        if self.state is not State.OPEN and self.state is not State.WAITING:
            return False
        self.state = State.LEAVING
        return True

    def shut(self) -> bool:
        """WAITING, OPEN or LEAVING -> SHUT: nothing more is sent; the caller shuts the
        sockets down."""
        if not self.sending and self.state is not State.WAITING:
            return False
        self.state = State.SHUT
        self.sendq.clear()
        return True

    def forget(self) -> bool:
        """Any state but GONE -> GONE: the caller closes the sockets, once."""
        if self.state is State.GONE:
            return False
        self.state = State.GONE
        self.sendq.clear()
        return True
