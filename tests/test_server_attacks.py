"""The server under attack, over real sockets: what a hostile client must not achieve.

Each test reproduces one way a single client (or a dying worker) could crash the hub,
stall the room or forge what the server says, through a real server process.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys

import pytest
from live_server import (
    Peer,
    ServerProcess,
    child_env,
    joined_peers,
    running_server,
    wait_until,
)

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")


def _dead(pid: int) -> bool:
    """Ended: a zombie, or already reaped (by the fork server, which runs on)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.fork
@needs_fork
def test_hub_survives_a_worker_dying_while_its_client_turns_writable() -> None:
    """A worker's end and its client's socket reported in one select batch: the hub
    must forget the client once, not flush a closed socket (EBADF, then ValueError)."""
    args = ("--sendq", "67108864", "--flood-lines", "0", "--flood-bytes", "0")
    with running_server("0", "--host", "127.0.0.1", "--mode", "fork", *args) as srv:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", srv.port))
        victim = Peer(raw)
        victim.expect("* welcome")
        wait_until(lambda: len(srv.workers()) == 1, "the victim's worker")
        (worker,) = srv.workers()
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
            wait_until(lambda: _dead(worker), "the worker dead")
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            victim.close()
        finally:
            os.kill(srv.pid, signal.SIGCONT)
        assert talker.line() == "* guest1 left (connection lost)"
        talker.send(b"/who\n")
        assert talker.line() == "* here (1): guest2"
        assert srv.proc.poll() is None
        assert "Traceback" not in srv.stderr()


# Run as root, the server first imports everything it will need (the interpreter lives
# where only root can read), then takes a limit of 4 tasks for its user and becomes
# that user: root ignores RLIMIT_NPROC, any other uid does not. The uid is one no other
# test uses (the netns tests run as nobody, 65534, at the same time under xdist). The
# hub and its log writer are two tasks, so two worker threads can start and the third
# cannot - a pids limit as in containers.
LIMITED_UID = 64999
_NPROC_SERVER = f"""
import encodings.idna, gettext, locale, os, resource, shutil, sys
import chatbox.server.__main__ as server
resource.setrlimit(resource.RLIMIT_NPROC, (4, 4))
os.setgroups([])
os.setgid({LIMITED_UID})
os.setuid({LIMITED_UID})
sys.exit(server.main(sys.argv[1:]))
"""


@pytest.mark.skipif(
    not hasattr(os, "getuid") or os.getuid() != 0,
    reason="needs root to become a user with no other processes",
)
def test_thread_mode_refuses_one_client_when_no_thread_can_start() -> None:
    """A task limit reached: the one client that cannot get a thread is told so and
    closed; the hub and everyone already here go on."""
    if any(_owner(pid) == LIMITED_UID for pid in _pids()):
        pytest.skip(f"uid {LIMITED_UID} already runs processes here; its task count is not ours")
    with running_server(
        "0", "--host", "127.0.0.1", "--mode", "thread", python_code=_NPROC_SERVER
    ) as srv:
        alice, bob = joined_peers(srv, 2)
        extra = srv.connect()
        assert extra.read_to_eof() == ["! server busy, try again later"]
        alice.send(b"/who\n")
        assert alice.line() == "* here (2): guest1, guest2"
        alice.send(b"still here\n")
        assert bob.line() == "<guest1> still here"
        # Logged by the server's log-writer thread, a moment after the refusal.
        wait_until(lambda: "cannot start a worker" in srv.stderr(), "the refusal to be logged")
        assert "Traceback" not in srv.stderr()


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


MODES = [pytest.param("fork", marks=needs_fork), "thread"]


@pytest.mark.parametrize("mode", MODES)
def test_no_user_can_forge_a_server_notice(mode: str) -> None:
    """An action is told apart from a notice on the wire, and names a notice starts
    with cannot be taken, so nothing a user types reads as the server speaking."""
    with running_server("0", "--host", "127.0.0.1", "--mode", mode) as srv:
        mallory, bob = joined_peers(srv, 2)
        mallory.send(b"/nick server\n/nick You\n")
        assert mallory.lines(2) == ["! name 'server' is reserved", "! name 'You' is reserved"]
        mallory.send(b"/me left (quit)\n/me is now known as carol\n/me shutting down\n")
        assert bob.lines(3) == [
            "* <guest1> left (quit)",
            "* <guest1> is now known as carol",
            "* <guest1> shutting down",
        ]
        mallory.send(b"/who\n")
        assert mallory.line() == "* here (2): guest1, guest2"
        mallory.send(b"/quit\n")
        assert bob.line() == "* guest1 left (quit)"  # the real one


@pytest.mark.parametrize("mode", MODES)
def test_max_line_admits_exactly_max_line_bytes(mode: str) -> None:
    with running_server("0", "--host", "127.0.0.1", "--mode", mode, "--max-line", "10") as srv:
        alice, bob = joined_peers(srv, 2)
        # Each alone, answered before the next is sent, so each is one read by itself:
        # a short block is where the decoder takes its fast path.
        alice.send(b"x" * 11 + b"\n")
        assert alice.line() == "! line too long (max 10 bytes)"
        alice.send(b"y" * 10 + b"\r\n")
        assert bob.line() == "<guest1> " + "y" * 10
        alice.send(b"z" * 11 + b"\r\n")
        assert alice.line() == "! line too long (max 10 bytes)"
        alice.send(b"/who\n")
        assert alice.line() == "* here (2): guest1, guest2"


@pytest.mark.parametrize("mode", MODES)
def test_private_message_to_yourself_is_refused_not_delivered(mode: str) -> None:
    with running_server("0", "--host", "127.0.0.1", "--mode", mode) as srv:
        alice, bob = joined_peers(srv, 2)
        alice.send(b"/msg GUEST1 note to self\n/msg guest2 psst\n")
        assert alice.line() == "! that is you: /msg sends to someone else"
        assert bob.line() == "[private] <guest1> psst"


@pytest.mark.parametrize("mode", MODES)
def test_server_full_reaches_a_client_that_already_sent_data(mode: str) -> None:
    """Closing a socket with unread input resets it, and a reset discards what the
    client had not read yet: the refusal must be a graceful close."""
    with running_server("0", "--host", "127.0.0.1", "--mode", mode, "--max-clients", "1") as srv:
        (inside,) = joined_peers(srv, 1)
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
            sock.sendall(b"hello, anyone?\n" * 1000)
            # Wait for the server's end of the stream (FIN) or a reset, unread.
            waiter = select.poll()
            waiter.register(sock, select.POLLRDHUP)
            assert waiter.poll(20_000)
            assert Peer(sock).read_to_eof() == ["! server full (max 1 clients)"]
            sock.close()
        inside.send(b"/who\n")
        assert inside.line() == "* here (1): guest1"


# The characters that make text read otherwise than it is: line and paragraph
# separators, bidirectional embeddings, overrides and isolates, zero-width characters.
INVISIBLE = "\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
ZERO_WIDTH = "\u200b\u200c\u200d\u200e\u200f\u2060\ufeff"


@pytest.mark.parametrize("mode", MODES)
def test_invisible_and_reordering_characters_are_never_relayed_or_logged(mode: str) -> None:
    with running_server("0", "--host", "127.0.0.1", "--mode", mode, "--log-level", "info") as srv:
        alice, bob = joined_peers(srv, 2)
        text = "a" + INVISIBLE + "b" + ZERO_WIDTH + "c"
        alice.send(f"{text}\n/me {text}\n/quit {text}\n".encode())
        shown = "a" + "\ufffd" * len(INVISIBLE) + "b" + "\ufffd" * len(ZERO_WIDTH) + "c"
        assert bob.lines(3) == [
            f"<guest1> {shown}",
            f"* <guest1> {shown}",
            f"* guest1 left ({shown})",
        ]
        bob.send(b"/quit\n")
        bob.read_to_eof()
        wait_until(lambda: "guest2 left" in srv.stderr(), "the server to log the leaves")
        logged = srv.stderr()
        assert shown in logged
        assert not any(char in logged for char in INVISIBLE + ZERO_WIDTH)


def _connections(port: int, count: int) -> None:
    """Open ``count`` connections, each closed at once: every one makes the server
    log (a refusal if it is full, else a join and a leave)."""
    for _ in range(count):
        socket.create_connection(("127.0.0.1", port), timeout=20).close()


SERVER_ARGS = ("0", "--host", "127.0.0.1", "--log-level", "info")
RENAMES = 3000


@pytest.mark.parametrize("mode", MODES)
def test_logging_to_a_pipe_nobody_reads_never_blocks_the_room(mode: str) -> None:
    """An unread stderr pipe fills at 64 KiB; log lines a client triggers past that
    (here a rename, at info level) must be dropped and counted, not block the hub."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatbox.server", *SERVER_ARGS, "--mode", mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        port = int(proc.stdout.readline().decode().rsplit(":", 1)[1])
        alice = _peer(port)
        alice.expect("* welcome")
        bob = _peer(port)
        bob.expect("* welcome")
        # A log line per rename, from one connection: 3000 are several times what the
        # pipe and the backlog hold. (A join and a leave per connection took 2000
        # connections, more than a forking server under load serves within WAIT.)
        alice.send(b"".join(b"/nick n%d\n" % i for i in range(RENAMES)))
        # Taken in order: once the last rename is answered, every one was logged.
        alice.expect(f"* you are now known as n{RENAMES - 1}")
        for i in range(3):
            alice.send(b"still relayed %d\n" % i)
            bob.expect(f"<n{RENAMES - 1}> still relayed {i}")
        proc.send_signal(signal.SIGTERM)
        logged = proc.stderr.read().decode()  # read at last: the pipe drains, the end comes
        assert proc.wait(20) == 0
        assert "log lines were dropped" in logged
        assert "Traceback" not in logged
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_repeated_warnings_are_rate_limited() -> None:
    srv = ServerProcess("0", "--host", "127.0.0.1", "--max-clients", "1")
    try:
        joined_peers(srv, 1)
        _connections(srv.port, 300)
        # One more, read to its end: once it is told, the hub has taken (and logged)
        # every connection before it; they may still wait in the listen queue otherwise.
        last = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
        told = b""
        while chunk := last.recv(4096):
            told += chunk
        last.close()
        assert b"server full" in told, told
        assert srv.terminate() == 0
        logged = srv.stderr().splitlines()
        refusals = [line for line in logged if "server full" in line]
        assert 1 <= len(refusals) < 50, refusals[-3:]
        assert any("more like this were not logged" in line for line in logged), logged[-5:]
    finally:
        srv.stop()


def _peer(port: int) -> Peer:
    return Peer(socket.create_connection(("127.0.0.1", port), timeout=20))
