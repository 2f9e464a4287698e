"""A real `python -m chatbox.server` process and raw-socket peers, for the server's tests.

Synchronisation is always on something the server says: its `listening on` line, a
line a peer waits for, or the process's exit. Never on time passing.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.daemon import Daemon, DaemonError, Readiness
from harness.processes import child_env, wait_until

__all__ = ["WAIT", "Peer", "ServerProcess", "child_env", "joined_peers", "running_server"]
__all__ += ["kernel_send_buffer", "private_memory", "send_in_background", "wait_until"]
__all__ += ["check_slowloris_cut", "readable", "silence_until_closed", "trickle_until_cut"]

# Generous bounds for waiting on an event; reaching one is a failure, not a pacing device.
WAIT = 20.0

# The server's two concurrency modes, for tests that run in each.
MODES = [
    pytest.param("fork", marks=pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")),
    "thread",
]


class ServerProcess:
    """A chat server started with ``args``; ``port`` is the port it announced.

    Started, waited for and ended as a `harness.daemon.Daemon`: its own process group,
    its ``listening on`` line, its whole stderr."""

    def __init__(self, *args: str, python_code: str | None = None) -> None:
        """``python_code``, if given, is run with ``args`` as its ``sys.argv[1:]``
        instead of ``-m chatbox.server`` (a server started under some condition)."""
        start = ["-m", "chatbox.server"] if python_code is None else ["-c", python_code]
        self.daemon = Daemon("server", [sys.executable, *start, *args])
        self.daemon.start()
        assert self.daemon.proc is not None
        self.proc = self.daemon.proc
        try:
            self.daemon.wait_ready(Readiness("line"), 0, lambda _: False, time.monotonic() + WAIT)
        except DaemonError as exc:
            self.stop()
            raise AssertionError(f"server did not announce itself: {exc}") from None
        assert self.daemon.announced is not None
        self.host, self.port = self.daemon.announced

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        """What the server logged so far."""
        return "".join(line + "\n" for line in self.daemon.stderr_lines())

    def terminate(self, timeout: float = WAIT) -> int:
        """SIGTERM, then its exit status once it has exited and its output has been read
        to the end: the lines it wrote last may still be in the pipe when it exits, and
        a test that reads `stderr` next must see them."""
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(timeout)
        self.daemon.join_drains()
        return status

    def stop(self) -> None:
        """End the server whatever state it is in (its whole group), and reap it."""
        self.daemon.stop()

    def children(self) -> list[int]:
        """Pids of the server's live (or zombie) child processes."""
        return _children(self.pid)

    def descendants(self) -> list[int]:
        """Every process below the server: its fork server and workers, in fork mode."""
        found: list[int] = []
        todo = [self.pid]
        while todo:
            kids = _children(todo.pop())
            found.extend(kids)
            todo.extend(kids)
        return found

    def workers(self) -> list[int]:
        """Pids of the processes serving clients (none in thread mode): every
        descendant but the fork server they are forked from."""
        return [pid for pid in self.descendants() if _comm(pid) != FORK_SERVER_COMM]

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def connect(self) -> Peer:
        return Peer(socket.create_connection(("127.0.0.1", self.port), timeout=WAIT))

    def connect_socket(self, sock: socket.socket) -> Peer:
        """A peer on a socket the caller has set up and connected (buffer sizes...)."""
        sock.settimeout(WAIT)
        return Peer(sock)


# What the fork server calls itself in /proc/PID/comm (and so in ps and top).
FORK_SERVER_COMM = "chatbox-forker"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.extend(int(kid) for kid in (task / "children").read_text().split())
    except OSError:  # it ended while we looked
        pass
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def private_memory(pid: int) -> int:
    """Bytes of memory mapped by ``pid`` alone (Private_Dirty: pages it copied or
    that every other process has let go of)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no Private_Dirty in /proc/{pid}/smaps_rollup")


@contextmanager
def running_server(*args: str, python_code: str | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(*args, python_code=python_code)
    try:
        yield server
    finally:
        server.stop()


class Peer:
    """A raw TCP client: send bytes, read lines (with a bound on how long to wait)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._file = sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str:
        raw = self._file.readline()
        if not raw:
            raise EOFError("connection closed")
        return raw.decode().rstrip("\n")

    def expect(self, wanted: str) -> list[str]:
        """Read lines until one starts with ``wanted``; return the lines before it."""
        seen: list[str] = []
        while True:
            line = self.line()
            if line.startswith(wanted):
                return seen
            seen.append(line)

    def lines(self, count: int) -> list[str]:
        return [self.line() for _ in range(count)]

    def read_to_eof(self) -> list[str]:
        lines = []
        while True:
            raw = self._file.readline()
            if not raw:
                return lines
            lines.append(raw.decode().rstrip("\n"))

    def close(self) -> None:
        self._file.close()
        self.sock.close()


def wakeups(pid: int) -> int:
    """How often the process has gone to sleep and been woken since it started."""
    status = Path(f"/proc/{pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("voluntary_ctxt_switches:")]
    return int(line.split()[1])


TRICKLED = 100  # the bytes of a line a trickling client sends one at a time


def trickle_wakeups(
    server: ServerProcess, before: set[int], trickler: Peer, listener: Peer, name: str
) -> int:
    """How often the trickler's worker (fork mode: the one worker not in ``before``)
    was woken while ``name`` sent a line of TRICKLED bytes one at a time, 20 ms apart,
    as a slowloris does; ``listener`` must get that line whole."""
    wait_until(lambda: len(set(server.workers()) - before) == 1, "the trickler's worker")
    (worker,) = set(server.workers()) - before
    woken = wakeups(worker)
    for _ in range(TRICKLED):
        trickler.send(b"x")
        time.sleep(0.02)  # the attacker's pace, for 2 s
    trickler.send(b"\n")
    assert listener.line() == f"<{name}> " + "x" * TRICKLED
    return wakeups(worker) - woken


def joined_peers(server: ServerProcess, count: int) -> list[Peer]:
    """``count`` peers, each having read its welcome and everyone's later joins."""
    peers: list[Peer] = []
    for _ in range(count):
        peer = server.connect()
        peer.expect("* welcome")
        for earlier in peers:
            earlier.expect("* ")
        peers.append(peer)
    return peers


def kernel_send_buffer() -> int:
    """The most a TCP socket's send buffer grows to: what the kernel may hold for a
    reader that stopped, beyond the server's own queue for it."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


def send_in_background(peer: Peer, data: bytes) -> threading.Thread:
    thread = threading.Thread(target=peer.send, args=(data,), daemon=True)
    thread.start()
    return thread


def readable(peers: Sequence[Peer], timeout: float) -> list[Peer]:
    """Those of ``peers`` with something to read (data or the end) within ``timeout``:
    over TLS, data already decrypted counts, which no poll of the socket sees."""
    pending = [p for p in peers if isinstance(p.sock, ssl.SSLSocket) and p.sock.pending()]
    if pending:
        return pending
    ready, _, _ = select.select([p.sock for p in peers], [], [], timeout)
    return [p for p in peers if p.sock in ready]


def silence_until_closed(peer: Peer, keep_alive: Sequence[Peer] = ()) -> list[str]:
    """Wait (bounded) for the server to end ``peer``'s connection while each of
    ``keep_alive`` sends a bare newline every 0.3 s; what ``peer`` read."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for other in keep_alive:
            other.send(b"\n")
        if readable([peer], 0.3):
            return peer.read_to_eof()
    raise AssertionError("the server never closed the idle connection")


def trickle_until_cut(peers: Sequence[Peer], pace: float = 0.1) -> dict[int, list[str]]:
    """Slowloris: a byte (never a newline) into each of ``peers`` not cut yet, every
    ``pace`` seconds or so, until the server has cut them all (bounded by `WAIT`). For
    each one cut, by its index, the error lines (``! ...``) it read before its end."""
    ended: dict[int, list[str]] = {}
    deadline = time.monotonic() + WAIT
    while len(ended) < len(peers) and time.monotonic() < deadline:
        waiting = [peer for index, peer in enumerate(peers) if index not in ended]
        for peer in waiting:
            peer.send(b"x")
        for peer in readable(waiting, pace):
            lines = peer.read_to_eof()
            # (Before it, they may hear of each other leaving.)
            ended[peers.index(peer)] = [line for line in lines if line.startswith("!")]
    return ended


def check_slowloris_cut(witness: Peer, loris: Sequence[Peer]) -> None:
    """Each of ``loris`` (welcomed, in a room where ``witness`` was first) trickles
    bytes and never a newline: the line timeout must cut every one, each told why, and
    leave the witness alone in the room."""
    witness.send(b"/who\n")
    witness.expect(f"* here ({len(loris) + 1})")
    ended = trickle_until_cut(loris)
    assert len(ended) == len(loris), f"{len(loris) - len(ended)} were never timed out"
    assert all(lines == ["! disconnected: unfinished line"] for lines in ended.values()), ended
    witness.send(b"/who\n")
    witness.expect("* here (1): guest1")
