"""A real `redis-server` for the cluster's tests: own port, own temporary folder, reaped.

Never a shared instance and never a stand-in: each test that asks gets a fresh server,
started with persistence off, waited for until it answers PING, and ended (its process
killed and reaped) at teardown. Without the binary the test is skipped (failed under CI).
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from needs import missing

from harness.daemon import free_port

STARTUP = 20.0


class RedisServer:
    """A running redis-server on 127.0.0.1:``port``; ``url`` is what `--cluster` takes."""

    @staticmethod
    def require() -> str:
        """The redis-server binary; the test is skipped (failed under CI) without it or
        without redis-py."""
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server is not installed (Debian: apt-get install redis-server)")
        if importlib.util.find_spec("redis") is None:
            missing("redis-py is not installed (pip install 'chatbox[cluster]')")
        return binary

    def __init__(self, folder: Path) -> None:
        binary = self.require()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(folder)]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + STARTUP
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"redis-server did not answer on port {self.port}")
            # No event tells that it listens: polling its port, briefly, is the only way.
            time.sleep(0.05)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self) -> None:
        """Stop answering (SIGSTOP) while the port stays bound: an unreachable Redis."""
        self.proc.send_signal(19)

    def resume(self) -> None:
        self.proc.send_signal(18)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()
