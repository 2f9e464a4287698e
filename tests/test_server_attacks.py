"""The server under attack, over real sockets: what a hostile client must not achieve.

Each test reproduces one way a single client (or a dying worker) could crash the hub,
stall the room or forge what the server says, through a real server process.
"""

from __future__ import annotations

import os
import signal
import socket
import struct

import pytest
from live_server import Peer, joined_peers, running_server, wait_until

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.fork
@needs_fork
def test_hub_survives_a_worker_dying_while_its_client_turns_writable() -> None:
    """A worker's end and its client's socket reported in one select batch: the hub
    must forget the client once, not flush a closed socket (EBADF, then ValueError)."""
    with running_server("0", "--host", "127.0.0.1", "--mode", "fork", "--sendq", "67108864") as srv:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", srv.port))
        victim = Peer(raw)
        victim.expect("* welcome")
        wait_until(lambda: len(srv.children()) == 1, "the victim's worker")
        (worker,) = srv.children()
        (talker,) = joined_peers(srv, 1)
        # More than any socket buffers hold: the rest waits in the hub, which then
        # watches the victim's socket for room to write.
        talker.send(b"".join(b"%d %s\n" % (i, b"." * 1000) for i in range(8000)))
        talker.send(b"/who\n")
        talker.expect("* here (2)")
        os.kill(srv.pid, signal.SIGSTOP)
        try:
            # While the hub sleeps: its worker dies first (its channel ends), then the
            # client resets (its socket turns writable, with an error): one batch.
            os.kill(worker, signal.SIGKILL)
            wait_until(lambda: _state(worker) == "Z", "the worker dead")
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            victim.close()
        finally:
            os.kill(srv.pid, signal.SIGCONT)
        talker.send(b"/who\n")
        assert talker.expect("* here (1)") == ["* guest1 left (connection lost)"]
        assert srv.proc.poll() is None
        assert "Traceback" not in srv.stderr()
