"""One TLS connection driven by hand over a non-blocking socket: both sides use it.

The server's worker waits on its client, its channel and the hub's output at once, and
the client's bridge on the server and the session's socket: both need TLS without a
socket of its own that blocks or hides buffered data from `poll`. So TLS runs on memory
BIOs (`ssl.SSLContext.wrap_bio`, as asyncio does): whatever the socket brings is fed in,
whatever TLS wants to send collects in `outbox` and is sent when the socket has room.
The caller's loop decides when to wait for what; the socket itself is never wrapped, so
its owner keeps it as it was (in thread mode the hub holds the same socket object).

`wait` is the one poll these loops need: `select.poll` where it exists (no descriptor of
its own, no FD_SETSIZE limit), `select.select` elsewhere.
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Sequence

# One recv takes up to this much ciphertext: a few TLS records' worth.
RECV_SIZE = 65536
# Plaintext taken from the session at once is cut into pieces of one record's size.
RECORD_SIZE = 16384
# What is kept of the first bytes received, for a peer that answers a handshake in plain
# text (a server refusing a connection before any TLS: "! server full").
HEAD_SIZE = 512


class TlsStream:
    """A TLS connection over ``sock`` (non-blocking): handshake, data both ways, close.

    Error handling: a failed handshake raises `ssl.SSLError` from `handshake`; after
    the handshake nothing raises for what the peer does: its end (close_notify, a
    plain EOF, a reset, a TLS error) sets `ended` (and `reset` for a reset or error).
    `flush` raises `OSError` when the socket cannot be sent to.
    """

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self.outbox = bytearray()  # TLS bytes for the socket, waiting for room
        self.handshaken = False
        self.ended = False  # the peer's stream has ended: nothing more will be read
        self.reset = False  # ... and not by an orderly close
        self.eof = False  # the socket itself has reached its end
        self.head = b""  # the first bytes received (up to HEAD_SIZE), as they came
        self.took = 0  # how many bytes the last pull took from the socket

    def handshake(self) -> bool:
        """Advance the handshake with what has arrived; True once it is complete."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        finally:
            self._take_outgoing()
        self.handshaken = True
        return True

    def pull(self) -> None:
        """Feed what the socket has now (one recv) into TLS."""
        self.took = 0
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.eof = self.ended = self.reset = True
            self._incoming.write_eof()
            return
        self.took = len(data)
        if data:
            if len(self.head) < HEAD_SIZE:
                self.head += data[: HEAD_SIZE - len(self.head)]
            self._incoming.write(data)
        else:
            self.eof = True
            self._incoming.write_eof()

    def receive(self) -> bytes:
        """Pull from the socket and return the application data that completes."""
        self.pull()
        chunks: list[bytes] = []
        while not self.ended:
            try:
                chunk = self.obj.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: an orderly end
                self.ended = True
            except ssl.SSLEOFError:  # the socket ended without close_notify
                self.ended = True
            except ssl.SSLError:
                self.ended = self.reset = True
            else:
                if not chunk:
                    self.ended = True
                chunks.append(chunk)
        if self.eof and not self.ended and self._incoming.pending == 0:
            self.ended = True
        self._take_outgoing()
        return b"".join(chunks)

    @property
    def partial(self) -> bool:
        """Whether part of a TLS record has come and waits for the rest."""
        return self._incoming.pending > 0

    def send(self, data: bytes) -> None:
        """Encrypt ``data`` into `outbox` (memory BIOs take it all at once)."""
        view = memoryview(data)
        try:
            for start in range(0, len(view), RECORD_SIZE):
                self.obj.write(view[start : start + RECORD_SIZE])
        except ssl.SSLError:
            # The connection is broken (the peer's alert, a failed state), or the peer
            # has already closed it in order (close_notify: then it is no reset): what
            # we would have sent cannot reach it any more.
            if not self.ended:
                self.reset = True
            self.ended = True
        self._take_outgoing()

    def flush(self) -> bool:
        """Send `outbox` as far as the socket takes it now; True if it is empty."""
        while self.outbox:
            try:
                sent = self.sock.send(self.outbox)
            except (BlockingIOError, InterruptedError):
                return False
            del self.outbox[:sent]
        return True

    def close(self) -> None:
        """Say close_notify (into `outbox`); the peer's answer is not waited for."""
        try:
            self.obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError, ValueError):
            pass
        self._take_outgoing()

    def _take_outgoing(self) -> None:
        if self._outgoing.pending:
            self.outbox += self._outgoing.read()


def wait(
    readers: Sequence[socket.socket], writers: Sequence[socket.socket], timeout: float | None
) -> tuple[set[int], set[int]]:
    """Descriptors of ``readers`` readable and of ``writers`` writable (errors and
    hang-ups count as both); two empty sets when ``timeout`` seconds passed first."""
    if not hasattr(select, "poll"):
        readable, writable, _ = select.select(readers, writers, [], timeout)
        return {s.fileno() for s in readable}, {s.fileno() for s in writable}
    poll = select.poll()
    interest: dict[int, int] = {}
    for sock in readers:
        interest[sock.fileno()] = select.POLLIN
    for sock in writers:
        interest[sock.fileno()] = interest.get(sock.fileno(), 0) | select.POLLOUT
    for fd, events in interest.items():
        poll.register(fd, events)
    wait_ms = None if timeout is None else max(0, int(timeout * 1000) + 1)
    ready_in: set[int] = set()
    ready_out: set[int] = set()
    trouble = select.POLLERR | select.POLLHUP | select.POLLNVAL
    for fd, events in poll.poll(wait_ms):
        if events & (select.POLLIN | trouble):
            ready_in.add(fd)
        if events & (select.POLLOUT | trouble):
            ready_out.add(fd)
    return ready_in, ready_out
