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
import itertools
import os
import socket
from collections import deque
from dataclasses import dataclass, field

from chatbox.server.admission import Ticket
from chatbox.server.channel import ChannelEvent, ChannelReader
from chatbox.server.flood import FloodBucket
from chatbox.server.handover import Handover
from chatbox.server.worker import DONTWAIT


def _iov_max() -> int:
    try:
        value = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        value = -1
    return value if value > 0 else 16  # POSIX's minimum, where the system does not say


# Buffers one sendmsg may take: the system's limit (1024 on Linux), past which the call
# fails with EMSGSIZE instead of sending less.
IOV_MAX = min(_iov_max(), 1024)


class SendQ:
    """A client's outbound queue: the blocks posted to it, not copies of them.

    A fan-out posts one ``bytes`` block to every recipient; each queue keeps a reference
    to that same block, so queuing costs no copy at all, and a send hands the kernel the
    blocks as they are (``sendmsg``, one call for up to `IOV_MAX` of them). What the
    kernel did not take stays where it is: the queue only moves its ``offset`` into the
    first block (a partial send used to delete the sent bytes from the front of a
    bytearray, copying the rest). ``len`` is the bytes still to send - what the
    slow-reader bounds are judged by.
    """

    __slots__ = ("_blocks", "_offset", "size")

    def __init__(self) -> None:
        self._blocks: deque[bytes] = deque()
        self._offset = 0  # bytes of the first block already sent
        # Bytes still to send, over all blocks (read it, never set it: the hub's hot
        # path reads the attribute rather than pay for a call to ``len``).
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, block: bytes) -> None:
        """Queue ``block`` (immutable bytes: it is shared, never copied)."""
        if block:
            self._blocks.append(block)
            self.size += len(block)

    def clear(self) -> None:
        self._blocks.clear()
        self._offset = 0
        self.size = 0

    def send(self, sock: socket.socket) -> int:
        """One non-blocking send of as much as ``sock`` takes (`DONTWAIT`: whatever the
        socket's own flag, which a plain worker clears); returns the bytes sent
        (which leave the queue). Raises what the socket raises (BlockingIOError...)."""
        blocks = self._blocks
        if len(blocks) == 1:
            first = blocks[0]
            sent = sock.send(memoryview(first)[self._offset :] if self._offset else first, DONTWAIT)
        else:
            buffers: list[bytes | memoryview] = list(itertools.islice(blocks, IOV_MAX))
            if self._offset:
                buffers[0] = memoryview(buffers[0])[self._offset :]
            sent = sock.sendmsg(buffers, (), DONTWAIT)
        if sent == self.size:  # the common case: the socket took it all
            blocks.clear()
            self._offset = self.size = 0
        else:
            self._consume(sent)
        return sent

    def _consume(self, sent: int) -> None:
        self.size -= sent
        blocks = self._blocks
        left = sent + self._offset
        while blocks and left >= len(blocks[0]):
            left -= len(blocks.popleft())
        self._offset = left


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
    sendq: SendQ = field(default_factory=SendQ)
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
        self.owed = self.sendq.size

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
