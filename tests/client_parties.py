"""Real processes for the client's tests: a chatbox server, parties in the chat, and a
socket server that does what a test tells it (misbehave on purpose, never close).

No fixtures here (tests/conftest.py has them, so that every party and server a test
starts is ended and reaped); test_client.py and test_client_tty.py import these.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import chatbox
from harness import processes
from harness.daemon import Daemon, DaemonError, Readiness

# Every wait in these tests is for an event (a line, an exit); this only bounds a failure.
TIMEOUT = 20.0
SOURCE_ROOT = str(Path(chatbox.__file__).resolve().parent.parent)
# The server's first line to a newcomer; group 1 is the name it was given.
WELCOME = r"^\* welcome (\S+?);"


def child_env(**extra: str) -> dict[str, str]:
    """The harness's environment for children, with colours allowed: the client's own
    colour rules are under test."""
    return processes.child_env({"NO_COLOR": None, **extra})


def client_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "chatbox.client", *args]


class Server:
    """A real chatbox server on a free loopback port, started as the harness starts one."""

    def __init__(self, mode: str | None = None, host: str = "127.0.0.1", *extra: str) -> None:
        argv = [sys.executable, "-m", "chatbox.server", "0", "--host", host, *extra]
        if mode is not None:
            argv += ["--mode", mode]
        self.daemon = Daemon("server", argv)
        self.daemon.start()
        try:
            deadline = time.monotonic() + TIMEOUT
            self.port = self.daemon.wait_ready(Readiness("line"), 0, lambda _: False, deadline)
        except DaemonError as exc:
            self.stop()
            raise AssertionError(f"server did not start: {exc}") from None

    def stop(self) -> None:
        """SIGTERM to its group, SIGKILL if it does not go; reaped either way."""
        self.daemon.stop()


class Party:
    """A process in the chat whose stdout is read line by line as it arrives.

    Resource handling: `close` ends and reaps the process; use it in a `finally`.
    """

    def __init__(self, argv: Sequence[str], **popen: object) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
            **popen,  # type: ignore[call-overload]
        )
        self.lines: list[str] = []
        self.name: str | None = None  # the name the server gave it, once `join` has read it
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def expect(self, pattern: str) -> re.Match[str]:
        """Wait for a line matching PATTERN (a regex, matched from the line's start)."""
        regex = re.compile(pattern)
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    match = regex.match(line)
                    if match is not None:
                        return match
                seen = len(self.lines)
                if self._eof:
                    raise AssertionError(f"no line matching {pattern!r}; got {self.lines!r}")
                if not self._cond.wait(TIMEOUT):
                    raise AssertionError(f"timeout waiting for {pattern!r}; got {self.lines!r}")

    def join(self) -> str:
        """Wait for the server's welcome; the name it gave this party (also `.name`)."""
        self.name = self.expect(WELCOME).group(1)
        return self.name

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self) -> tuple[int, str]:
        """Exit status and stderr, once the process has ended (bounded by TIMEOUT)."""
        assert self.proc.stderr is not None
        status = self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        return status, self.proc.stderr.read().decode("utf-8", "replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass


def welcomed_as(output: str) -> str:
    """The name a finished client was given, from the welcome line in its OUTPUT."""
    match = re.match(WELCOME, output)
    assert match is not None, f"no welcome in {output!r}"
    return match.group(1)


def run_client(
    *args: str, stdin: bytes = b"", wrapper: Sequence[str] = (), timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a client to its end (WRAPPER is a command to run it under); it never tracebacks."""
    proc = subprocess.run(
        [*wrapper, *client_argv(*args)],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


class OneShotServer:
    """A listening socket in the test that accepts one client and does what it is told.

    Resource handling: `close` closes both sockets; use the instance as a context manager.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None

    def accept(self) -> socket.socket:
        self.listener.settimeout(TIMEOUT)
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(TIMEOUT)
        return self.conn

    def read_until_eof(self) -> bytes:
        assert self.conn is not None
        chunks = []
        while chunk := self.conn.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)

    def __enter__(self) -> OneShotServer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()
