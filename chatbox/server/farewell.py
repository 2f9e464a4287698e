"""Farewells: sockets the hub is done with, closed so that their last line arrives.

Closing a TCP socket that still has unread input makes the kernel send a reset instead
of an orderly end, and a reset makes the peer's kernel discard whatever the peer had
not read yet - such as the one line that told it why it was turned away
(``! server full``). So a refused connection is not simply closed: its last words are
sent, our direction is shut down (FIN, after those words), and what the peer still
sends is read and thrown away until the peer closes too or a short deadline passes.
Only then is the socket closed, with nothing unread, so no reset is sent.

The hub owns the selector; a farewell registers its socket there (with no data, like
the hub's own sockets) and the hub hands readable ones back to `readable`, so draining
never blocks anything: it is a few non-blocking reads per loop turn.
"""

from __future__ import annotations

import collections
import contextlib
import selectors
import socket
import time

# How long a peer gets to read the last words and close: a person's client does so at
# once; one that keeps sending is cut off with whatever it has not read.
LINGER = 1.0

# Farewells in progress at once. Each holds a descriptor for up to LINGER (the server
# budgets descriptors for them); past this many (a storm of refused connections), the
# rest are closed at once, reset or not.
MAX_FAREWELLS = 32

# Per readable event: enough to drain a full socket buffer a few times over.
DRAIN_SIZE = 65536
DRAIN_READS = 4


class Farewells:
    """Sockets being closed gracefully, each until its peer closes or `LINGER` passes.

    Resource handling: every socket handed to `add` is closed by this object - at once
    if it cannot linger, else by `readable`, `expire` or `close_all`.
    """

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        # Deadlines are now + LINGER, so insertion order is deadline order.
        self._lingering: collections.OrderedDict[socket.socket, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._lingering)

    def __contains__(self, sock: object) -> bool:
        return sock in self._lingering

    def add(self, sock: socket.socket, last_words: bytes = b"") -> None:
        """Send ``last_words`` (best effort: a fresh socket has room), end our side,
        and drain the peer until it closes. ``sock`` must be non-blocking."""
        with contextlib.suppress(OSError):
            if last_words:
                sock.send(last_words)
            sock.shutdown(socket.SHUT_WR)
        if len(self._lingering) >= MAX_FAREWELLS:
            sock.close()
            return
        try:
            self._selector.register(sock, selectors.EVENT_READ, None)
        except (OSError, ValueError):  # already closed by the peer's reset, or gone
            sock.close()
            return
        self._lingering[sock] = time.monotonic() + LINGER

    def readable(self, sock: socket.socket) -> None:
        """Throw away what arrived; close once the peer has closed (or reset)."""
        for _ in range(DRAIN_READS):
            try:
                if not sock.recv(DRAIN_SIZE):
                    break
            except BlockingIOError:
                return
            except OSError:
                break
        else:
            return  # still sending: it gets until its deadline
        self._close(sock)

    def next_deadline(self) -> float | None:
        """When the oldest farewell times out (monotonic), if any is in progress."""
        for deadline in self._lingering.values():
            return deadline
        return None

    def expire(self) -> None:
        """Close every farewell whose time is up."""
        now = time.monotonic()
        while self._lingering:
            sock, deadline = next(iter(self._lingering.items()))
            if deadline > now:
                return
            self._close(sock)

    def close_all(self) -> None:
        while self._lingering:
            self._close(next(iter(self._lingering)))

    def _close(self, sock: socket.socket) -> None:
        del self._lingering[sock]
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        sock.close()
