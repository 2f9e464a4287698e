"""Where the client goes when its server dies: the next server, then round again.

`--resume` and `--fallback IP:PORT` give the client a list of servers: the one on the
command line first, then each fallback. When a connection ends without a `/quit` of
ours, the session asks a `Reconnector` for a new one: it tries the next server in the
list (cycling), waiting between attempts with a backoff that doubles up to
`BACKOFF_MAX`, and gives up after `ATTEMPTS` attempts in a row failed. The first attempt
is at once: a cluster's other node is most likely up.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

ATTEMPTS = 10
BACKOFF_MIN = 0.25
BACKOFF_MAX = 4.0


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address | None:
    """``IP:PORT``, ``NAME:PORT`` or ``[IPv6]:PORT`` as an `Address`; None if it is not."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 address needs its brackets: where would its port start?
    if not host or any(c.isspace() for c in host):
        return None
    return Address(host, int(port))


class Reconnector:
    """Connections to the next server of a list, with bounded, backed-off attempts.

    ``open_socket`` makes a connection ready for the session (TLS, the password) or
    raises one of ``errors`` (or an OSError) whose text says why not; ``stop`` set
    makes `next` give up at once (the user quit meanwhile)."""

    def __init__(
        self,
        servers: list[Address],
        open_socket: Callable[[Address], tuple[socket.socket, bytes]],
        errors: tuple[type[Exception], ...],
        attempts: int = ATTEMPTS,
    ) -> None:
        self.servers = servers
        self._open = open_socket
        self._errors: tuple[type[Exception], ...] = (OSError, *errors)
        self._attempts = attempts
        self._index = 0  # the server of the current connection
        # Attempts since the session last settled on a server: a server that accepts and
        # hangs up at once (full, refusing us) counts as a failed attempt too.
        self._tries = 0
        self._backoff = BACKOFF_MIN
        self.stop = threading.Event()

    def settled(self) -> None:
        """The new connection works (the server marked our place): start counting anew."""
        self._tries = 0
        self._backoff = BACKOFF_MIN

    def next(self) -> tuple[socket.socket, bytes, Address] | str:
        """A new connection (socket, what the server said while logging in, where);
        or, having given up, why the last attempt failed."""
        why = "no server answered"
        while self._tries < self._attempts and not self.stop.is_set():
            # Round the list once at once, then wait before each attempt.
            if self._tries >= len(self.servers):
                if self.stop.wait(self._backoff):
                    break
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            self._tries += 1
            self._index = (self._index + 1) % len(self.servers)
            address = self.servers[self._index]
            try:
                sock, received = self._open(address)
            except self._errors as exc:
                why = str(exc)
            else:
                return sock, received, address
        return why
