"""One stopped reader costs the room nothing: it is dealt with alone, never by pausing
everyone's input.

A stopped reader's queue goes over --sendq, then either stays over it for
--slow-timeout or reaches --sendq-hard, and only then is it cut off. Meanwhile the
others go on talking. Each test here orders events, never times them: with a
--slow-timeout far longer than any wait, a server that paused the room for the slow
reader would deliver nothing until the cut-off.
"""

from __future__ import annotations

import socket

import pytest
from live_server import MODES, WAIT, Peer, joined_peers, kernel_send_buffer, running_server

SENDQ = 16384
LINE = 1000  # bytes of text per bulk line


# Enough for the stopped reader that, whatever the kernel buffers, its queue in the
# hub goes over --sendq several times over.
BULK_LINES = (kernel_send_buffer() + 8 * SENDQ) // LINE + 1000


def _private_bulk(to: str, count: int) -> bytes:
    """``count`` private lines of about 1 KB for ``to``: they fill its queue alone, so no
    honest reader here ever has a queue to keep up with."""
    return b"".join(b"/msg %s %d %s\n" % (to.encode(), i, b"." * LINE) for i in range(count))


def _stopped_reader(port: int) -> Peer:
    """A client with a tiny receive buffer that reads its welcome and then stops."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", port))
    raw.settimeout(WAIT)
    peer = Peer(raw)
    peer.expect("* welcome")
    return peer


def _server(mode: str, *extra: str) -> list[str]:
    # Flood control off: the bulk is a test of the queues, not of the flood allowance.
    return [
        "0", "--host", "127.0.0.1", "--mode", mode, "--sendq", str(SENDQ),
        "--flood-lines", "0", "--flood-bytes", "0", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_a_stopped_reader_over_its_sendq_does_not_hold_the_room_up(mode: str) -> None:
    """Megabytes for a reader that stopped, far past --sendq: the two others still talk,
    and the stopped one is still in the room (its grace of 60 s has not run out). A
    server that paused everyone's input while a queue was over its bound delivered
    nothing more until it cut the stopped reader off."""
    hard = str(8 * BULK_LINES * LINE)  # never reached here
    args = _server(mode, "--slow-timeout", "60", "--sendq-hard", hard)
    with running_server(*args) as srv:
        victim = _stopped_reader(srv.port)
        alice, bob = joined_peers(srv, 2)
        alice.send(_private_bulk("guest1", BULK_LINES))
        alice.send(b"/who\n")  # after the bulk: its reply says the bulk was handled
        assert alice.line() == "* here (3): guest1, guest2, guest3"
        bob.send(b"hello\n")
        assert alice.line() == "<guest3> hello"
        bob.send(b"/who\n")
        assert bob.line() == "* here (3): guest1, guest2, guest3"
        victim.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_stopped_reader_past_the_hard_bound_is_cut_off_at_once(mode: str) -> None:
    """Its grace (--slow-timeout 60) has not run out, but its queue reached
    --sendq-hard: it is cut off alone, the others are told, and they go on."""
    args = _server(mode, "--slow-timeout", "60", "--sendq-hard", str(4 * SENDQ))
    with running_server(*args) as srv:
        victim = _stopped_reader(srv.port)
        alice, bob = joined_peers(srv, 2)
        alice.send(_private_bulk("guest1", BULK_LINES))
        assert bob.line() == "* guest1 left (too slow)"
        bob.send(b"hello\n")
        alice.expect("<guest3> hello")  # (after an error or more for /msg to one gone)
        alice.send(b"/who\n")
        alice.expect("* here (2): guest2, guest3")
        victim.read_to_eof()  # and its connection ends (the notice is best effort)
