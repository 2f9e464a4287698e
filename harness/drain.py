"""Reading many connections at once until the server has ended each: what a test or a
benchmark does with hundreds of clients that it only watches (slowloris connections
waiting to be cut, a full room waiting for the shutdown notice).

One call is one round: wait (bounded) until some of the connections are readable, then
take what each of those has. The caller loops, doing its own part between rounds
(trickling a byte into each, playing ping-pong), until none is left open or its
deadline passes.
"""

from __future__ import annotations

import select
import socket
import ssl

RECV_SIZE = 65536


def read_ready(
    open_: set[socket.socket], timeout: float, most: int | None = None
) -> dict[socket.socket, bytes]:
    """What each of ``open_`` (non-blocking sockets, TLS ones too) that is readable
    within ``timeout`` seconds had. A connection that reached its end (closed, or
    reset: either way the server is done with it) leaves ``open_``; what it had last
    may be ``b""``. ``most``: watch at most that many at once (select() takes only so
    many descriptors); the others wait for a later round."""
    ready, _, _ = select.select(list(open_)[:most], [], [], timeout)
    got: dict[socket.socket, bytes] = {}
    for sock in ready:
        data, ended = _take(sock)
        if ended:
            open_.discard(sock)
        elif not data:
            continue  # a TLS record not complete yet
        got[sock] = data
    return got


def _take(sock: socket.socket) -> tuple[bytes, bool]:
    """What ``sock`` has now, and whether it has reached its end."""
    data = b""
    try:
        while True:
            chunk = sock.recv(RECV_SIZE)
            if not chunk:
                return data, True
            data += chunk
            # TLS: what was decrypted with this record no poll sees; take it now.
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return data, False
    except BlockingIOError:  # (ssl.SSLWantReadError is one)
        return data, False
    except OSError:
        return data, True
