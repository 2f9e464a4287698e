"""Fixtures for the client's tests: a real server, and parties that are always ended.

Each factory remembers what it started and ends it at teardown (parties before the
servers they talk to), so a test needs no ``try``/``finally`` of its own. And the hook
that checks what a test `needs` (tests/needs.py) before it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from client_parties import Party, Server, client_argv
from live_server import MODES
from needs import missing
from tls_certs import make_certificate


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked `needs` with a reason is skipped for it (failed under CI=true)."""
    for mark in item.iter_markers("needs"):
        if mark.args and mark.args[0]:
            missing(str(mark.args[0]))


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """Start real chatbox servers (`Server`'s arguments); all are stopped and reaped."""
    started: list[Server] = []

    def start(mode: str | None = None, host: str = "127.0.0.1", *extra: str) -> Server:
        started.append(Server(mode, host, *extra))
        return started[-1]

    try:
        yield start
    finally:
        for srv in started:
            srv.stop()


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    """A real chatbox server on a free loopback port."""
    return start_server()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Party]]:
    """Start parties (`Party`'s arguments); all are ended and reaped at teardown."""
    started: list[Party] = []

    def start(argv: list[str], **popen: object) -> Party:
        started.append(Party(argv, **popen))
        return started[-1]

    try:
        yield start
    finally:
        for party in started:
            party.close()


@pytest.fixture
def listener(server: Server, spawn: Callable[..., Party]) -> Party:
    """A chatbox client in `server`'s room, welcomed (its name is ``.name``), reading."""
    party = spawn(client_argv(str(server.port)))
    party.join()
    return party


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Each concurrency mode of the server this machine has (fork, thread)."""
    return str(request.param)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 and localhost, made for this test."""
    return make_certificate(tmp_path)
