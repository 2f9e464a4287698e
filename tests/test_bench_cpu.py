"""The bench's server CPU: a fork-mode server's hub, fork server and every worker, alive
or ended, each counted exactly once and finely enough for a window of milliseconds.

The tree under test (tests/cpu_tree.py) is shaped like a fork-mode server - the
workers are the root's grandchildren - and its workers measure the CPU they burn, so
the test knows what the bench should find.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.bench.servers import RunningServer, ServerSpec

TREE = Path(__file__).with_name("cpu_tree.py")
WORKERS = 8


@pytest.fixture
def tree() -> Iterator[tuple[RunningServer, socket.socket]]:
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(TREE))} {WORKERS}"
    spec = ServerSpec("tree", command, WORKERS, announces=True)
    with RunningServer(spec) as server, socket.create_connection(server.endpoints[0], 60) as sock:
        # One round first: the workers' first steps after the fork (copy-on-write
        # faults) are theirs, but not what they measure burning.
        ask(sock, "burn 0")
        yield server, sock


def ask(sock: socket.socket, line: str) -> list[int]:
    sock.sendall(line.encode() + b"\n")
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, f"the tree closed the connection after {line!r}"
        answer += chunk
    return [int(field) for field in answer.split()[1:]]


def wait_reaped(pid: int) -> None:
    """Until ``pid`` is gone from /proc: ended and reaped by its parent."""
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"worker {pid} was never reaped"
        time.sleep(0.01)


def test_live_workers_are_counted_to_the_millisecond(
    tree: tuple[RunningServer, socket.socket],
) -> None:
    # Each worker's whole life stays under one clock tick (10 ms): a count in ticks per
    # process sees none of it.
    server, sock = tree
    before = server.cpu_seconds()
    (burned_ns,) = ask(sock, "burn 3")
    measured = server.cpu_seconds() - before
    burned = burned_ns / 1e9
    assert abs(measured - burned) <= 0.002 + 0.1 * burned, (measured, burned)


def test_ended_workers_are_counted_once(tree: tuple[RunningServer, socket.socket]) -> None:
    # Workers that end and are reaped by the fork server inside the window: their CPU
    # moves from their own count to their parent's, and must not be lost or doubled.
    server, sock = tree
    before = server.cpu_seconds()
    burned = 0.0
    for _ in range(3):
        spent_ns, pid = ask(sock, "end 40")
        wait_reaped(pid)
        burned += spent_ns / 1e9
    (live_ns,) = ask(sock, "burn 2")
    burned += live_ns / 1e9
    measured = server.cpu_seconds() - before
    # Ended processes are counted by their parent in clock ticks: one tick either way.
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert abs(measured - burned) <= tick + 0.002 + 0.05 * burned, (measured, burned)
