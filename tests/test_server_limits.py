"""The server's per-client limits, over real sockets: one abuser pays for its abuse alone.

A flooder's excess lines are delayed for it alone and, if it keeps on, it is cut off;
a storm of commands cannot queue replies past the asker's --sendq.
"""

from __future__ import annotations

import os
import socket

import pytest
from live_server import Peer, joined_peers, running_server, send_in_background

MODES = [
    pytest.param("fork", marks=pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")),
    "thread",
]

# 100 lines a second, 20 at once: small enough that a test's flood takes a second.
SLOW_FLOOD = ["--flood-lines", "100", "--flood-burst", "0.2", "--flood-bytes", "0"]


@pytest.mark.parametrize("mode", MODES)
def test_a_flooders_excess_is_delayed_for_it_alone(mode: str) -> None:
    """An honest line sent after a flood reaches the room before the flood has, and
    the flood itself arrives whole and in order."""
    with running_server(
        "0", "--host", "127.0.0.1", "--mode", mode, *SLOW_FLOOD, "--flood-timeout", "60"
    ) as srv:
        flooder, alice, bob = joined_peers(srv, 3)
        flooder.send(b"".join(b"flood %d\n" % i for i in range(120)))
        assert bob.line() == "<guest1> flood 0"
        alice.send(b"hello\n")
        got = bob.expect("<guest2> hello")
        assert len(got) < 119, "the whole flood went out before the honest line"
        got += bob.expect("<guest1> flood 119")
        assert got == [f"<guest1> flood {i}" for i in range(1, 119)]


@pytest.mark.parametrize("mode", MODES)
def test_a_client_that_keeps_flooding_is_disconnected(mode: str) -> None:
    with running_server(
        "0", "--host", "127.0.0.1", "--mode", mode, *SLOW_FLOOD, "--flood-timeout", "1"
    ) as srv:
        flooder, bob = joined_peers(srv, 2)
        flooder.send(b"".join(b"flood %d\n" % i for i in range(1000)))  # 10 s' worth
        assert flooder.read_to_eof()[-1:] == ["! disconnected: flooding"]
        bob.expect("* guest1 left (flooding)")
        bob.send(b"/who\n")
        assert bob.line() == "* here (1): guest2"


@pytest.mark.parametrize("mode", MODES)
def test_a_who_storm_queues_no_reply_past_the_askers_sendq(mode: str) -> None:
    """5,000 /who from a client that does not read, in a room of long names (MBs of
    replies): the room goes on (no reader over its bound stalls it), the asker is not
    cut off (its replies wait, unbuilt), and when it reads, every reply arrives."""
    with running_server(
        "0", "--host", "127.0.0.1", "--mode", mode, "--sendq", "16384", "--slow-timeout", "60"
    ) as srv:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", srv.port))
        asker = Peer(raw)
        asker.expect("* welcome")
        alice, bob = joined_peers(srv, 2)
        asker.expect("* guest3 joined")
        names = ["a" * 24, "b" * 24]
        for peer, name in zip((alice, bob), names, strict=True):
            peer.send(f"/nick {name}\n".encode())
            peer.expect("* you are now")
        reply = f"* here (3): guest1, {names[0]}, {names[1]}"
        storm = send_in_background(asker, b"/who\n" * 5000)
        storm.join(20)
        bob.send(b"still talking\n")
        assert alice.expect(f"<{names[1]}> still talking") is not None
        replies = 0
        while replies < 5000:
            line = asker.line()
            if not line.startswith("* here"):
                continue  # the renames and the chat, as the room went on
            assert line == reply, line
            replies += 1
        asker.send(b"/quit\n")
        alice.expect("* guest1 left (quit)")
