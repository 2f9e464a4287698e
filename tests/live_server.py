"""A real `python -m chatbox.server` process and raw-socket peers, for the server's tests.

Synchronisation is always on something the server says: its `listening on` line, a
line a peer waits for, or the process's exit. Never on time passing.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (\S+):(\d+)$")

# Generous bounds for waiting on an event; reaching one is a failure, not a pacing device.
WAIT = 20.0


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class ServerProcess:
    """A chat server started with ``args``; ``port`` is the port it announced."""

    def __init__(self, *args: str, python_code: str | None = None) -> None:
        """``python_code``, if given, is run with ``args`` as its ``sys.argv[1:]``
        instead of ``-m chatbox.server`` (a server started under some condition)."""
        start = ["-m", "chatbox.server"] if python_code is None else ["-c", python_code]
        # A file, not a pipe: a pipe nobody reads fills up and blocks the server's logging.
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, *start, *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=child_env(),
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().strip()
        match = LISTENING.match(first)
        if not match:
            said = self.stderr()
            self.stop()
            raise AssertionError(f"server did not announce itself: {first!r} {said}")
        self.host = match.group(1)
        self.port = int(match.group(2))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        """What the server logged so far."""
        self._stderr.seek(0)
        return self._stderr.read()

    def terminate(self, timeout: float = WAIT) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """End the server whatever state it is in, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def children(self) -> list[int]:
        """Pids of the server's live (or zombie) child processes."""
        found: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            text = (task / "children").read_text().split()
            found.extend(int(pid) for pid in text)
        return found

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def connect(self) -> Peer:
        return Peer(socket.create_connection(("127.0.0.1", self.port), timeout=WAIT))


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


def send_in_background(peer: Peer, data: bytes) -> threading.Thread:
    thread = threading.Thread(target=peer.send, args=(data,), daemon=True)
    thread.start()
    return thread


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Re-check a condition the kernel offers no event for (fd counts, zombies)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
