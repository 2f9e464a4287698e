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

On a TLS port the last words must be said inside TLS: a TLS client that gets a plain
line where it expects a handshake sees garbage or a handshake error. So with a TLS
context the farewell first completes a handshake of its own, on memory BIOs in the same
non-blocking turns (`chatbox.tls_stream`), then sends the words, close_notify and FIN,
then drains as above; a client that spoke plain text first is told in plain text. A
handshake costs the hub about 0.4 ms of CPU (a P-256 key; more with RSA), so at most
`TLS_REFUSALS_PER_SECOND` are done (a storm of refused connections cannot take the
hub's time); past that a refused TLS connection is closed without a word. The same
`LINGER` bounds the whole.
"""

from __future__ import annotations

import collections
import contextlib
import selectors
import socket
import ssl
import time

from chatbox.server.tls import TLS_HANDSHAKE_RECORD
from chatbox.server.worker import DONTWAIT
from chatbox.tls_stream import TlsStream

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

# Refusals said inside TLS, a second on average and at once: each is a handshake's worth
# of the hub's CPU. Enough for people; a storm beyond it is closed without a word.
TLS_REFUSALS_PER_SECOND = 20.0
TLS_REFUSALS_BURST = 20.0


class Farewells:
    """Sockets being closed gracefully, each until its peer closes or `LINGER` passes.

    Resource handling: every socket handed to `add` is closed by this object - at once
    if it cannot linger, else by `readable`, `expire` or `close_all`.
    """

    def __init__(self, selector: selectors.BaseSelector, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: the server's context, when the port speaks TLS."""
        self._selector = selector
        # Deadlines are now + LINGER, so insertion order is deadline order.
        self._lingering: collections.OrderedDict[socket.socket, float] = collections.OrderedDict()
        self._tls = tls
        # TLS farewells still in their handshake: the stream, and the words to say.
        self._handshaking: dict[socket.socket, tuple[TlsStream, bytes]] = {}
        self._tokens = TLS_REFUSALS_BURST
        self._refilled_at = time.monotonic()

    def __len__(self) -> int:
        return len(self._lingering)

    def __contains__(self, sock: object) -> bool:
        return sock in self._lingering

    def add(self, sock: socket.socket, last_words: bytes = b"") -> None:
        """Send ``last_words`` (best effort: a fresh socket has room), end our side,
        and drain the peer until it closes. ``sock`` must be non-blocking. On a TLS
        port the words wait for a handshake (if the budget allows one; else none)."""
        now = time.monotonic()
        full = len(self._lingering) >= MAX_FAREWELLS
        handshake = self._tls is not None and bool(last_words) and not full and self._afford(now)
        if self._tls is not None and not handshake:
            last_words = b""  # a plain line would only garble a TLS client's handshake
        if not handshake:
            with contextlib.suppress(OSError):
                if last_words:
                    sock.send(last_words, DONTWAIT)
                sock.shutdown(socket.SHUT_WR)
        if full:
            sock.close()
            return
        try:
            self._selector.register(sock, selectors.EVENT_READ, None)
        except (OSError, ValueError):  # already closed by the peer's reset, or gone
            sock.close()
            return
        self._lingering[sock] = now + LINGER
        if handshake:
            assert self._tls is not None
            self._handshaking[sock] = (TlsStream(sock, self._tls, server_side=True), last_words)

    def _afford(self, now: float) -> bool:
        """Whether one more TLS refusal fits the budget (and take it)."""
        self._tokens = min(
            TLS_REFUSALS_BURST, self._tokens + (now - self._refilled_at) * TLS_REFUSALS_PER_SECOND
        )
        self._refilled_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def readable(self, sock: socket.socket) -> None:
        """Throw away what arrived; close once the peer has closed (or reset). In a
        TLS farewell's handshake: take the handshake a step further instead."""
        pending = self._handshaking.get(sock)
        if pending is not None:
            self._handshake(sock, *pending)
            return
        for _ in range(DRAIN_READS):
            try:
                if not sock.recv(DRAIN_SIZE, DONTWAIT):
                    break
            except BlockingIOError:
                return
            except OSError:
                break
        else:
            return  # still sending: it gets until its deadline
        self._close(sock)

    def _handshake(self, sock: socket.socket, stream: TlsStream, last_words: bytes) -> None:
        """One step of a TLS farewell: once the handshake is done, the words go out
        inside TLS, then close_notify and FIN, and the socket drains as any other."""
        stream.pull()
        if stream.head and stream.head[0] != TLS_HANDSHAKE_RECORD:
            # It speaks plain text (a person with nc): tell it in plain text.
            del self._handshaking[sock]
            with contextlib.suppress(OSError):
                sock.send(last_words, DONTWAIT)
                sock.shutdown(socket.SHUT_WR)
            return
        if stream.eof:
            self._close(sock)
            return
        try:
            done = stream.handshake()
        except ssl.SSLError:
            done = None  # its alert still goes out below, then the socket is closed
        if done:
            stream.send(last_words)
            stream.close()
        with contextlib.suppress(OSError):
            stream.flush()  # a fresh socket has room for a handshake flight and a line
            if done:
                sock.shutdown(socket.SHUT_WR)
        if done is None:
            self._close(sock)
        elif done:
            del self._handshaking[sock]

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
        self._handshaking.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        sock.close()
