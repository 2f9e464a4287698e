"""The load generator: many raw client sockets driven from one `selectors` loop.

No chat client process is involved: each simulated client is a plain TCP socket, so
what is measured is the server, not a client's terminal handling. One loop in the
bench process drives them all (reading every socket that has data, writing to every
socket that has something left to send), which keeps the generator's own cost per
line small: while the clock runs it only moves bytes and counts token markers in C;
the ledger checks the captured bytes after the clock stops.

Every loop here is bounded twice: by a deadline, and by an idle limit (no byte moved
for that long means the server has stopped delivering, and waiting longer would only
hide a loss).
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import selectors
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence

from harness.bench.ledger import MARKER

RECV_SIZE = 262144
# One send call offers at most this much: big enough that a fast sender batches,
# small enough that one client cannot monopolise the loop turn.
SEND_CHUNK = 65536
# Handshakes in flight at once: a connection storm larger than this would measure the
# kernel's SYN handling more than the server.
CONNECT_BATCH = 100
# The longest wait for a sync line before sending the next: bounds how far a measured
# connect time can overshoot, while resending rarely enough that sync lines (each one a
# broadcast to every client) add little load.
SYNC_WAIT_MAX = 0.32
# A sync line starts with this; it carries no ledger marker, so it never counts as load.
SYNC = b"sync-"

# Kernel receive timestamps (SO_TIMESTAMPNS): the moment a line reached the client's
# socket, not the later moment this one loop got round to reading that socket. With a
# thousand sockets to read after one broadcast, the difference is tens of milliseconds
# of the load generator's own time. Python does not name the option; 35 is its number
# in Linux's generic ABI (x86, arm, riscv). Elsewhere the loop's own clock is used.
SO_TIMESTAMPNS = 35
KERNEL_STAMPS = sys.platform == "linux" and platform.machine() in (
    "x86_64",
    "aarch64",
    "arm64",
    "i686",
    "i386",
    "armv7l",
    "riscv64",
)
_TIMESPEC = struct.Struct("qq")


class LoadError(Exception):
    """The server did not let the load generator do its job; the message says why."""


class Client:
    """One simulated chat client: a non-blocking socket and what it sent and got."""

    __slots__ = (
        "capture",
        "chunks",
        "closed",
        "done_at",
        "first_at",
        "first_bytes",
        "index",
        "markers",
        "needle",
        "outbox",
        "seen_at",
        "sent",
        "sock",
        "tail",
        "want",
    )

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.outbox = memoryview(b"")
        self.sent = 0
        self.capture = False  # keep every received byte for the ledger
        self.chunks: list[bytes] = []
        self.markers = 0
        self.want = 0  # markers that make this client complete
        self.done_at: float | None = None
        self.needle: bytes | None = None  # a token to watch for, and when it came
        self.seen_at: float | None = None
        self.tail = b""  # the end of the last chunk, for a needle split across two
        self.closed = False
        self.first_bytes = b""  # what a server said first: "server full" and the like
        self.first_at: float | None = None  # when it came (its welcome, in a chat server)

    @property
    def sending(self) -> bool:
        return self.sent < len(self.outbox)

    def received(self) -> bytes:
        return b"".join(self.chunks)


class Swarm:
    """A set of clients connected to one server, and the loop that drives them.

    Resource handling: use as a context manager; leaving it closes every socket.
    Error handling: connection failures become `LoadError` with the first reason seen;
    a client the server closes is marked ``closed`` (and its first words kept), which
    the workloads report.
    """

    def __init__(
        self, host: str, port: int, spread: Sequence[tuple[str, int]] | None = None
    ) -> None:
        self.host = host
        self.port = port
        # A cluster: client number i connects to spread[i % len(spread)] instead.
        self.spread = list(spread or [(host, port)])
        self.clients: list[Client] = []
        self._selector = selectors.DefaultSelector()
        self.closed = 0  # clients the server has closed
        # Counted as they happen, so that a loop's end test costs nothing per turn.
        self.completed = 0  # clients holding all the markers they expect
        self.seen = 0  # clients that have seen their needle
        self.sending = 0  # clients with bytes left to send
        self._syncs = 0
        # Kernel stamps are wall-clock time; everything else here is perf_counter.
        self._wall_offset = time.time() - time.perf_counter()

    def expect(self, clients: Iterable[Client], markers: int) -> None:
        """Capture from here on; each of ``clients`` is complete at ``markers`` markers."""
        self.completed = 0
        for client in clients:
            client.chunks = []
            client.markers = 0
            client.want = markers
            client.done_at = None
            client.capture = True

    def watch(self, clients: Iterable[Client], needle: bytes) -> None:
        """Note when each of ``clients`` receives ``needle``."""
        self.seen = 0
        for client in clients:
            client.needle = needle
            client.seen_at = None
            client.tail = b""

    def __enter__(self) -> Swarm:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(client.sock)
            client.sock.close()
        self.clients = []
        self._selector.close()

    # --- connecting ---------------------------------------------------------------------

    def grow(self, total: int, deadline: float, backlog: int | None = None) -> float:
        """Open connections until there are ``total`` clients and prove they are all in
        the room. Returns when the last one joined, as `time.perf_counter`.

        Handshakes are opened `CONNECT_BATCH` at a time. For a server with a small
        accept ``backlog``, each batch of that size is also proved in the room before
        the next is opened: beyond its backlog the kernel drops handshakes, and the
        wait would measure SYN-ACK retransmission timers instead of the server.
        """
        batch = backlog or CONNECT_BATCH
        fresh: list[Client] = []
        while len(self.clients) < total:
            fresh += self._connect(min(batch, total - len(self.clients)), deadline)
            if backlog:
                self.settle(deadline, [c for c in fresh if c.index != 0])
                fresh = []
        return self.settle(deadline, [c for c in fresh if c.index != 0])

    def _connect(self, count: int, deadline: float) -> list[Client]:
        """Open ``count`` connections at once; wait for their TCP handshakes."""
        pending: dict[socket.socket, Client] = {}
        fresh = []
        for _ in range(count):
            number = len(self.clients) + 1
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                raise LoadError(f"cannot open client socket {number}: {exc.strerror}") from None
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if KERNEL_STAMPS:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            code = sock.connect_ex(self.spread[(number - 1) % len(self.spread)])
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                raise LoadError(f"connection {number}: {os.strerror(code)}")
            client = Client(len(self.clients), sock)
            self.clients.append(client)
            fresh.append(client)
            pending[sock] = client
            self._selector.register(sock, selectors.EVENT_WRITE, client)
        while pending:
            if time.monotonic() > deadline:
                raise LoadError(f"{len(pending)} connections still pending at the deadline")
            for key, events in self._selector.select(1.0):
                client = key.data
                if events & selectors.EVENT_WRITE and client.sock in pending:
                    code = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        raise LoadError(f"connection {client.index + 1}: {os.strerror(code)}")
                    del pending[client.sock]
                    self._selector.modify(client.sock, selectors.EVENT_READ, client)
                elif events & selectors.EVENT_READ:
                    self._read(client, time.perf_counter())
        return fresh

    def settle(self, deadline: float, watchers: list[Client] | None = None) -> float:
        """Prove clients are in the room: client 0 broadcasts sync lines until each of
        ``watchers`` (default: all others) has received one. Returns when the last one
        did, as `time.perf_counter`.

        A client that was not yet in the room misses a sync line and waits for the next,
        so the wait for each line grows (0.02 s, 0.04 s, ... up to `SYNC_WAIT_MAX`) until
        the deadline. The time returned is when the last line arrived, so it overshoots
        the moment the last client joined by at most one wait.
        """
        if watchers is None:
            watchers = self.clients[1:]
        if not watchers:
            return time.perf_counter()
        self._syncs += 1
        prefix = SYNC + b"%d-%d-" % (os.getpid(), self._syncs)
        self.watch(watchers, prefix)
        sender = self.clients[0]
        wait, attempt = 0.02, 0
        while True:
            attempt += 1
            self.send_now(sender, prefix + b"%d\n" % attempt)
            until = min(deadline, time.monotonic() + wait)
            if self.pump(lambda: self.seen >= len(watchers), until):
                break
            self._check_closed()
            if time.monotonic() >= deadline:
                missing = sum(1 for c in watchers if c.seen_at is None)
                raise LoadError(f"{missing} of {len(self.clients)} clients never joined the room")
            wait = min(wait * 2, SYNC_WAIT_MAX)
        for client in watchers:
            client.needle = None
        return max(c.seen_at or 0.0 for c in watchers)

    def _check_closed(self) -> None:
        if self.closed:
            first = next((c for c in self.clients if c.closed), None)
            said = first.first_bytes.decode("utf-8", "replace").strip() if first else ""
            said = f" (it said: {said.splitlines()[0][:80]})" if said else ""
            raise LoadError(f"the server closed {self.closed} connections{said}")

    # --- moving bytes -------------------------------------------------------------------

    def send_now(self, client: Client, data: bytes) -> None:
        """Send ``data`` after whatever the client is still sending: as much as the
        socket takes right now, the rest from the loop."""
        if client.closed:
            return
        if client.sending:
            client.outbox = memoryview(bytes(client.outbox[client.sent :]) + data)
            client.sent = 0
            return
        client.outbox = memoryview(data)
        client.sent = 0
        self.sending += 1
        self._selector.modify(client.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)
        self._write(client)

    def load(self, outboxes: dict[int, bytes]) -> None:
        """Give clients whole streams to send as fast as the server takes them."""
        for index, data in outboxes.items():
            self.send_now(self.clients[index], data)

    def pump(self, done: Callable[[], bool], deadline: float, idle: float = 10.0) -> bool:
        """Move bytes until ``done()`` holds, the deadline passes, or nothing moved for
        ``idle`` seconds. Returns whether ``done()`` held."""
        last_progress = time.monotonic()
        select = self._selector.select
        while not done():
            now = time.monotonic()
            if now >= deadline or now - last_progress > idle:
                return False
            events = select(min(deadline - now, 0.5))
            if not events:
                continue
            last_progress = time.monotonic()
            stamp = time.perf_counter()
            for key, mask in events:
                client = key.data
                if mask & selectors.EVENT_READ:
                    self._read(client, stamp)
                if mask & selectors.EVENT_WRITE:
                    self._write(client)
        return True

    def _read(self, client: Client, stamp: float) -> None:
        try:
            if KERNEL_STAMPS:
                data, ancillary, _, _ = client.sock.recvmsg(RECV_SIZE, 64)
                for level, kind, value in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                        stamp = seconds + nanoseconds * 1e-9 - self._wall_offset
            else:
                data = client.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._lost(client)
            return
        if len(client.first_bytes) < 200:
            if client.first_at is None:
                client.first_at = stamp
            client.first_bytes += data[:200]
        if client.capture:
            client.chunks.append(data)
            client.markers += data.count(MARKER)
            if client.markers >= client.want and client.done_at is None:
                client.done_at = stamp
                self.completed += 1
        if client.needle is not None and client.seen_at is None:
            if client.needle in client.tail + data:
                client.seen_at = stamp
                self.seen += 1
            else:
                client.tail = data[-len(client.needle) - 16 :]

    def _write(self, client: Client) -> None:
        if client.closed:
            return
        if not client.sending:
            self._selector.modify(client.sock, selectors.EVENT_READ, client)
            return
        try:
            sent = client.sock.send(client.outbox[client.sent : client.sent + SEND_CHUNK])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost(client)
            return
        client.sent += sent
        if not client.sending:
            self.sending -= 1
            self._selector.modify(client.sock, selectors.EVENT_READ, client)

    def _lost(self, client: Client) -> None:
        if client.closed:
            return
        client.closed = True
        self.closed += 1
        if client.sending:
            client.sent = len(client.outbox)
            self.sending -= 1
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(client.sock)

    def complete(self, count: int) -> Callable[[], bool]:
        """A ``done`` for `pump`: ``count`` clients have all they expect, and all is sent."""
        return lambda: self.completed >= count and not self.sending
