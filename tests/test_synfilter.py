"""The listener's SYN filter on real sockets: a blocked address cannot even complete a
handshake, everyone else can, and its established connections go on working."""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import sys
from collections.abc import Iterator

import pytest

from chatbox.server.synfilter import MAX_BLOCKED, SynFilter

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux socket filters")

WAIT = 30.0
# How long a blocked connect is watched for an answer: the kernel would answer a SYN it
# let through within microseconds on loopback; its first retransmission is 1 s later.
NO_ANSWER = 0.5


def _v4(text: str) -> tuple[int, int]:
    return (4, int(ipaddress.IPv4Address(text)))


@contextlib.contextmanager
def _listener(family: int, host: str) -> Iterator[socket.socket]:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, 0))
        sock.listen(64)
        yield sock
    finally:
        sock.close()


def _connects(listener: socket.socket, source: str, family: int = socket.AF_INET) -> bool:
    """Whether a connection from ``source`` completes its handshake (not answered within
    NO_ANSWER: it does not)."""
    target = listener.getsockname()[:2]
    if family == socket.AF_INET and ":" in target[0]:
        target = ("127.0.0.1", target[1])
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((source, 0))
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(target)
        _, writable, _ = select.select([], [sock], [], NO_ANSWER)
        if not writable:
            return False
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        listener.settimeout(WAIT)
        listener.accept()[0].close()
        return True


def test_a_blocked_address_gets_no_handshake_and_others_do() -> None:
    with _listener(socket.AF_INET, "127.0.0.1") as listener:
        syn = SynFilter(listener)
        syn.drop([_v4("127.0.0.2"), _v4("127.0.0.4")])
        assert not _connects(listener, "127.0.0.2")
        assert not _connects(listener, "127.0.0.4")
        assert _connects(listener, "127.0.0.3")
        syn.drop([_v4("127.0.0.4")])
        assert _connects(listener, "127.0.0.2")  # no longer blocked
        syn.drop([])
        assert _connects(listener, "127.0.0.4")


def test_an_established_connection_of_a_blocked_address_goes_on() -> None:
    with _listener(socket.AF_INET, "127.0.0.1") as listener:
        syn = SynFilter(listener)
        syn.drop([_v4("127.0.0.9")])  # a filter is on before the connection: inherited
        client = socket.create_connection(
            listener.getsockname(), timeout=WAIT, source_address=("127.0.0.2", 0)
        )
        listener.settimeout(WAIT)
        served, _ = listener.accept()
        with client, served:
            syn.drop([_v4("127.0.0.2")])
            served.settimeout(WAIT)
            client.sendall(b"ping\n")
            assert served.recv(64) == b"ping\n"
            served.sendall(b"pong\n")
            assert client.recv(64) == b"pong\n"
            assert not _connects(listener, "127.0.0.2")


def test_a_dual_stack_listener_blocks_ipv4_and_ipv6_addresses() -> None:
    with _listener(socket.AF_INET6, "::") as listener:
        syn = SynFilter(listener)
        syn.drop([_v4("127.0.0.2")])
        assert not _connects(listener, "127.0.0.2")
        assert _connects(listener, "127.0.0.3")
        assert _connects(listener, "::1", socket.AF_INET6)
        syn.drop([_v4("127.0.0.2"), (6, int(ipaddress.IPv6Address("::1")) >> 64)])
        assert not _connects(listener, "::1", socket.AF_INET6)
        assert _connects(listener, "127.0.0.3")


def test_the_most_addresses_fit_in_one_filter() -> None:
    with _listener(socket.AF_INET, "127.0.0.1") as listener:
        syn = SynFilter(listener)
        keys = [_v4(f"127.0.{i // 250 + 10}.{i % 250 + 1}") for i in range(MAX_BLOCKED - 1)]
        syn.drop([*keys, _v4("127.0.0.2")])
        assert syn.enabled
        assert not _connects(listener, "127.0.0.2")
        assert not _connects(listener, "127.0.10.1")
        assert _connects(listener, "127.0.0.3")
