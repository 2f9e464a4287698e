"""pytest fixtures for multi-process chat tests (entry point ``pytest11: chatbox_harness``).

Installed with the package, so any test can ask for:

- ``chatbox_room``: a running chat server (``--chatbox-server-cmd``, default this
  project's) on loopback, with a fresh free port; call ``room.party(name)`` to start
  client processes in ptys (``--chatbox-client-cmd``), ``room.join(...)`` to start
  several and wait until they are all in the room, ``room.say`` / ``room.heard`` to talk
  with tokens, and ``room.assert_delivered()`` to run the harness's checks.
- ``chatbox_server``: just the running server (``.connect_address``, ``.client_port``).

Everything is ended and reaped at teardown, also when the test fails. Nothing is
fixed: ports are free ones, party names are the test's own, so it is xdist-safe.

A session that built ``--hosts netns`` networks in its own process ends with a leak
check: a network namespace still named ``cbx<pid>-...`` (this process's prefix, so each
xdist worker checks only its own) is an error of the last test, naming each one.

Example::

    def test_two_people_chat(chatbox_room):
        alice, bob = chatbox_room.join("alice", "bob")
        token = chatbox_room.say(alice, "hello bob")
        assert chatbox_room.heard(bob, token)
        chatbox_room.assert_delivered()
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from harness.checks import FAIL, CheckResult, run_checks
from harness.party import Party
from harness.scenarios.base import Context, Options
from harness.session import Run
from harness.target import DEFAULT_CLIENT, DEFAULT_SERVER, Target, is_ours
from harness.tokens import Token

ROOM_TIMEOUT = 60.0  # upper bound for one test's room; a hang fails instead of stalling


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chatbox-harness", "chatbox harness fixtures")
    group.addoption(
        "--chatbox-server-cmd",
        default=DEFAULT_SERVER,
        help="server command template for the chatbox_room/chatbox_server fixtures",
    )
    group.addoption(
        "--chatbox-client-cmd",
        default=DEFAULT_CLIENT,
        help="client command template for parties started by chatbox_room",
    )


class Room:
    """A running server and the parties a test starts in it.

    Resource handling: `close` ends every party, then the server; the fixtures call it.
    """

    def __init__(self, server_cmd: str, client_cmd: str, *, timeout: float = ROOM_TIMEOUT) -> None:
        self.options = Options(
            timeout=timeout, client_template=client_cmd, ours=is_ours(server_cmd), settle=2.0
        )
        self.run = Run("pytest", self.options, server_cmd)
        self.record = self.run.record

    def start(self) -> Room:
        try:
            self.run.open()
        except BaseException:
            self.run.close()
            raise
        return self

    @property
    def context(self) -> Context:
        return self.run.context

    @property
    def target(self) -> Target:
        assert self.run.target is not None, "the room is not started"
        return self.run.target

    def party(self, name: str) -> Party:
        """Start one client process (not yet proven to be in the room)."""
        return self.context.party(name)

    def join(self, *names: str) -> list[Party]:
        """Start a party per name and wait until they can all hear each other."""
        parties = [self.party(n) for n in names]
        if len(parties) > 1:
            assert self.context.sync_all(parties), "parties never heard each other"
        return parties

    def say(self, party: Party, text: str | None = None) -> Token:
        """``party`` types a line carrying a fresh token (and ``text``, if given)."""
        token = self.context.token(party.name, text)
        assert party.send(token, self.context.deadline), f"{party.name} could not type"
        return token

    def heard(self, party: Party, token: Token, timeout: float = 10.0) -> bool:
        """Wait until ``party`` has received ``token``."""
        return party.wait_tokens({token.key}, time.monotonic() + timeout)

    def expect(self, receiver: str, senders: list[str]) -> None:
        """Declare that ``receiver`` must get every line ``senders`` say."""
        self.context.expect(receiver, senders)

    def checks(self) -> list[CheckResult]:
        """Wait for outstanding deliveries (bounded), then run every check."""
        self.context.settle()
        self.record.duration = self.context.clock()
        self.run.server_died("during the test")
        return run_checks(self.record)

    def assert_delivered(self) -> None:
        """Fail the test with the harness's report if any check fails."""
        failed = [c for c in self.checks() if c.status == FAIL]
        if failed:
            lines = []
            for c in failed:
                lines.append(f"{c.name}: {c.detail}")
                lines.extend(c.context)
            raise AssertionError("\n".join(lines))

    def close(self) -> None:
        self.run.close()


@pytest.fixture
def chatbox_room(request: pytest.FixtureRequest) -> Iterator[Room]:
    """A running chat server and a factory for client parties in it."""
    room = Room(
        request.config.getoption("--chatbox-server-cmd"),
        request.config.getoption("--chatbox-client-cmd"),
    )
    try:
        yield room.start()
    finally:
        room.close()


@pytest.fixture
def chatbox_server(chatbox_room: Room) -> Target:
    """The running server of `chatbox_room` (``connect_address``, ``client_port``)."""
    return chatbox_room.target


@pytest.fixture(scope="session", autouse=True)
def _chatbox_no_leaked_namespaces() -> Iterator[None]:
    """Fail loudly if this test process leaves ``ip netns`` namespaces of its own behind.

    Cheap: nothing is run unless this process built a named netns network. Robust under
    xdist: the prefix holds this process's pid, so another worker's live networks never
    count.
    """
    yield
    netns = sys.modules.get("harness.hosts.netns")
    if netns is None or netns.NetnsNetwork.named_built == 0:
        return
    from harness.hosts.namespaces import list_named

    left = list_named(netns.process_prefix())
    if left:
        pytest.fail(
            f"network namespaces left behind by this test session: {', '.join(left)} "
            f"(remove with: ip netns delete NAME)",
            pytrace=False,
        )
