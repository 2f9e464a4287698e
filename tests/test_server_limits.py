"""The server's per-client limits, over real sockets: one abuser pays for its abuse alone.

A flooder's excess lines are delayed for it alone and, if it keeps on, it is cut off;
a storm of commands cannot queue replies past the asker's --sendq.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from live_server import (
    MODES,
    TRICKLED,
    WAIT,
    Peer,
    check_slowloris_cut,
    child_env,
    joined_peers,
    running_server,
    send_in_background,
    silence_until_closed,
    trickle_wakeups,
    wait_until,
)
from needs import needs

from harness.drain import read_ready

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
# Bytes the trickling client sends one at a time.
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
        "0", "--host", "127.0.0.1", "--mode", mode, "--sendq", "16384", "--slow-timeout", "60",
        "--flood-lines", "0", "--flood-bytes", "0",  # the storm is of replies, not of lines
    ) as srv:  # fmt: skip
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


@pytest.mark.parametrize("mode", MODES)
def test_an_idle_client_is_closed_and_a_bare_newline_keeps_one_alive(mode: str) -> None:
    with running_server("0", "--host", "127.0.0.1", "--mode", mode, "--idle-timeout", "2") as srv:
        quiet, talker = joined_peers(srv, 2)
        assert silence_until_closed(quiet, [talker]) == ["! disconnected: idle"]
        assert talker.line() == "* guest1 left (idle)"
        talker.send(b"/who\n")
        assert talker.line() == "* here (1): guest2"


@pytest.mark.parametrize("mode", MODES)
def test_a_line_that_is_never_finished_is_timed_out(mode: str) -> None:
    """Slowloris: a byte every 100 ms, never a newline, from 20 connections at once."""
    args = ("--line-timeout", "1", "--idle-timeout", "0")
    with running_server("0", "--host", "127.0.0.1", "--mode", mode, *args) as srv:
        (witness,) = joined_peers(srv, 1)
        loris = [srv.connect() for _ in range(20)]
        for peer in loris:
            peer.expect("* welcome")
        check_slowloris_cut(witness, loris)


def test_a_line_sent_in_pieces_within_the_line_timeout_goes_through() -> None:
    with running_server("0", "--host", "127.0.0.1", "--line-timeout", "30") as srv:
        alice, bob = joined_peers(srv, 2)
        for piece in (b"one ", b"line ", b"in pieces\n"):
            alice.send(piece)
        assert bob.line() == "<guest1> one line in pieces"


KEEPALIVE = ("--keepalive", "0.5")


def test_chatbox_client_keeps_an_idle_connection_alive() -> None:
    """The client, silent for twice the server's idle timeout, is still there: it sends
    a bare newline when it has sent nothing for its --keepalive interval."""
    with running_server("0", "--host", "127.0.0.1", "--idle-timeout", "1.5") as srv:
        client = subprocess.Popen(
            [sys.executable, "-m", "chatbox.client", str(srv.port), "127.0.0.1", *KEEPALIVE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
        )
        try:
            assert client.stdout is not None and client.stdin is not None
            assert client.stdout.readline().startswith(b"* welcome guest1")
            # Two raw connections in turn, each until the server finds it idle: the
            # client has been silent longer than both.
            for _ in range(2):
                (raw,) = joined_peers(srv, 1)
                assert silence_until_closed(raw) == ["! disconnected: idle"]
            (witness,) = joined_peers(srv, 1)
            witness.send(b"/who\n")
            assert witness.line() == "* here (2): guest1, guest4"
            client.stdin.close()
            assert client.wait(WAIT) == 0
        finally:
            if client.poll() is None:
                client.kill()
            client.wait()


def _stopped_reader(srv_port: int) -> Peer:
    """A client with a tiny receive buffer that reads its welcome and then stops."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", srv_port))
    peer = Peer(raw)
    peer.expect("* welcome")
    return peer


def _admitted(srv_port: int) -> bool:
    peer = Peer(socket.create_connection(("127.0.0.1", srv_port), timeout=WAIT))
    try:
        return peer.line().startswith("* welcome")
    finally:
        peer.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_client_that_quits_and_leaves_its_connection_open_gives_its_slot_back(
    mode: str,
) -> None:
    """It says /quit and then neither sends nor closes (nc left running): the server
    ends the connection, and its worker - waiting to read it - ends too and gives the
    only slot back. A worker that slept on in its read held the slot until the idle
    timeout (here an hour)."""
    args = ("--max-clients", "1", "--idle-timeout", "3600")
    with running_server("0", "--host", "127.0.0.1", "--mode", mode, *args) as srv:
        (quitter,) = joined_peers(srv, 1)
        quitter.send(b"/quit\n")
        quitter.read_to_eof()  # the server's end of the stream: our side stays open
        wait_until(lambda: _admitted(srv.port), "the quitter's slot to be given back")
        quitter.close()
        assert "Traceback" not in srv.stderr()


# A queue far under --sendq (never "too slow"), far over what the kernel's buffers hold.
STUCK = ("--sendq", "67108864", "--flood-bytes", "0", "--flood-lines", "0")
BULK = b"".join(b"%d %s\n" % (i, b"." * 1000) for i in range(8000))


@pytest.mark.parametrize("mode", MODES)
def test_a_client_that_quits_and_stops_reading_gives_its_slot_back(mode: str) -> None:
    """Its output waits, unread, under --sendq: without a limit on a queue that does not
    move it held its slot forever (and the server stayed full)."""
    args = ("--max-clients", "2", "--stall-timeout", "1", *STUCK)
    with running_server("0", "--host", "127.0.0.1", "--mode", mode, *args) as srv:
        victim = _stopped_reader(srv.port)
        (talker,) = joined_peers(srv, 1)
        talker.send(BULK)
        talker.send(b"/who\n")
        talker.expect("* here (2)")  # the bulk is all queued for the victim by now
        victim.send(b"/quit\n")
        talker.expect("* guest1 left (quit)")
        wait_until(lambda: _admitted(srv.port), "the quitter's slot to be given back")
        assert "Traceback" not in srv.stderr()


@pytest.mark.parametrize("mode", MODES)
def test_a_reader_whose_queue_does_not_move_is_cut_off_under_sendq(mode: str) -> None:
    args = ("--stall-timeout", "1", *STUCK)
    with running_server("0", "--host", "127.0.0.1", "--mode", mode, *args) as srv:
        victim = _stopped_reader(srv.port)
        (talker,) = joined_peers(srv, 1)
        talker.send(BULK)
        assert talker.expect("* guest1 left (too slow)") == []
        talker.send(b"/who\n")
        assert talker.line() == "* here (1): guest2"
        victim.close()


class _Trickle:
    """Reads its socket a KiB every 100 ms (a slowloris reader) until it ends. (A byte
    every 100 ms would be no test: the kernel's own silly-window avoidance keeps the
    window shut until about half its 4 KiB buffer is free, so the server's socket takes
    nothing and the queue visibly does not move.)"""

    def __init__(self, peer: Peer) -> None:
        self._sock = peer.sock
        self._stop = threading.Event()
        self.taken = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._sock.settimeout(WAIT)
        deadline = time.monotonic() + 3 * WAIT  # bounded, whatever the server does
        while not self._stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                try:
                    got = len(self._sock.recv(1024))
                except OSError:
                    return
                if not got:
                    return
                self.taken += got
            self._stop.wait(0.1)  # the trickle's pace, not a synchronisation

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)


class _Chatter:
    """Says a line every 100 ms, so the hub keeps trying to send to everyone; reads all
    it is sent (it is no stalled reader itself)."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            while self._peer.sock.recv(65536):
                pass

    def _run(self) -> None:
        deadline = time.monotonic() + 3 * WAIT
        count = 0
        while not self._stop.wait(0.1) and time.monotonic() < deadline:
            count += 1
            with contextlib.suppress(OSError):
                self._peer.send(b"tick %d\n" % count)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)

    def close(self) -> None:
        self._peer.sock.shutdown(socket.SHUT_WR)  # the server closes: the drain ends
        self._reader.join(WAIT)


@pytest.mark.parametrize("mode", MODES)
def test_a_reader_that_takes_a_byte_at_a_time_is_cut_off_as_stalled(mode: str) -> None:
    """A trickle is not progress: a reader taking 10 KiB/s from a queue of megabytes
    (it would take it a quarter of an hour) is cut off by --stall-timeout, though its
    socket takes a few KiB every fraction of a second."""
    args = ("--stall-timeout", "2", *STUCK)
    with running_server("0", "--host", "127.0.0.1", "--mode", mode, *args) as srv:
        victim = _stopped_reader(srv.port)
        talker, chatter = joined_peers(srv, 2)
        victim_trickle = _Trickle(victim)
        ticks = _Chatter(chatter)
        try:
            talker.send(BULK)
            # A generous bound (ten stall timeouts), not a measure: the chatter's ticks
            # keep arriving, so without it a reader never cut would pass once the
            # trickle gives up.
            deadline = time.monotonic() + WAIT
            while talker.line() != "* guest1 left (too slow)":
                assert time.monotonic() < deadline, "the trickling reader was never cut off"
        finally:
            ticks.stop()
            victim_trickle.stop()
        assert victim_trickle.taken > 0, "the trickle took nothing: the test shows nothing"
        talker.send(b"/who\n")
        assert talker.expect("* here (2)") is not None  # the chatter stays: it reads
        ticks.close()
        victim.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_reader_that_keeps_up_with_a_big_queue_is_not_stalled(mode: str) -> None:
    """An honest reader whose queue is megabytes deep, reading all it can, takes far
    longer than --stall-timeout to catch up: it is never cut off while it does."""
    args = ("--stall-timeout", "2", *STUCK)
    with running_server("0", "--host", "127.0.0.1", "--mode", mode, *args) as srv:
        reader = _stopped_reader(srv.port)
        (talker,) = joined_peers(srv, 1)
        talker.send(BULK)
        reader.expect("* guest2 joined")
        for i in range(8000):
            assert reader.line().startswith(f"<guest2> {i} ")
        reader.send(b"/who\n")
        assert reader.line() == "* here (2): guest1, guest2"
        reader.close()


@pytest.mark.parametrize("mode", MODES)
@needs(None if shutil.which("ss") else "ss (iproute2) to read the server's socket timers")
def test_client_sockets_have_tcp_keepalive(mode: str) -> None:
    """A peer that vanished without a word is found by keepalive probes, even while
    the server has nothing to send it: the server's socket runs a keepalive timer."""
    with running_server("0", "--host", "127.0.0.1", "--mode", mode) as srv:
        (peer,) = joined_peers(srv, 1)
        local_port = peer.sock.getsockname()[1]
        out = subprocess.run(
            ["ss", "-tnoH", "state", "established", f"( dport = :{local_port} )"],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=True,
        ).stdout
        assert f":{srv.port}" in out, out
        assert "timer:(keepalive," in out, out


def test_at_the_default_flood_limits_a_long_paste_is_paced_never_cut_off() -> None:
    """3,000 lines at once (three times the burst): all arrive, in order, and the paster
    is still there; a line the other sends meanwhile is not held up behind the paste."""
    with running_server("0", "--host", "127.0.0.1") as srv:
        paster, bob = joined_peers(srv, 2)
        paster.send(b"".join(b"pasted line %04d %s\n" % (i, b"x" * 60) for i in range(3000)))
        assert bob.line().startswith("<guest1> pasted line 0000 ")
        bob.send(b"meanwhile\n")
        assert paster.expect("<guest2> meanwhile") == []
        for i in range(1, 3000):
            assert bob.line() == f"<guest1> pasted line {i:04d} {'x' * 60}"
        paster.send(b"/who\n")
        assert paster.line() == "* here (2): guest1, guest2"


@pytest.mark.parametrize("mode", MODES)
def test_a_nearly_full_server_closes_its_oldest_silent_connection(mode: str) -> None:
    """At 90% of --max-clients, a connection that has sent nothing at all since it came,
    for --silent-timeout, is closed (oldest first, until the server is below 90%); one
    that sent only a keepalive (a bare newline, as chatbox-client does) is not."""
    args = ("--max-clients", "10", "--silent-timeout", "3")
    with running_server("0", "--host", "127.0.0.1", "--mode", mode, *args) as srv:
        (keeper,) = joined_peers(srv, 1)
        keeper.send(b"\n")  # the oldest, but not silent
        silent = joined_peers(srv, 7)
        talker = srv.connect()
        talker.expect("* welcome guest9")
        talker.send(b"/who\n")
        talker.expect("* here (9)")  # 90% full: the oldest silent one has to go
        assert silent[0].read_to_eof()[-1:] == ["! disconnected: idle"]
        assert talker.expect("* guest2 left (idle)") == []
        talker.send(b"/who\n")
        here = talker.expect("* here (8)")
        assert here == []
        keeper.send(b"still here\n")
        assert talker.line() == "<guest1> still here"


@pytest.mark.parametrize("mode", MODES)
def test_a_hundred_slowloris_connections_are_cut_while_an_honest_pair_chats(mode: str) -> None:
    """100 connections, each a byte every 100 ms and never a newline: every one is cut
    by the line timeout, while two honest clients go on chatting, nothing lost.
    (The figure for 500: benchmarks/slowloris.py, docs/performance.md.)"""
    args = ("--line-timeout", "2", "--idle-timeout", "0")
    with running_server("0", "--host", "127.0.0.1", "--mode", mode, *args) as srv:
        alice, bob = joined_peers(srv, 2)
        loris = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(100)]

        def bob_here_line() -> str:
            bob.send(b"/who\n")
            while not (line := bob.line()).startswith("* here ("):
                pass
            return line

        wait_until(lambda: bob_here_line().startswith("* here (102)"), "every one to be in")
        heard: dict[socket.socket, bytearray] = {sock: bytearray() for sock in loris}
        for sock in loris:
            sock.setblocking(False)
        open_ = set(loris)
        sent = 0
        deadline = time.monotonic() + 3 * WAIT
        try:
            while open_ and time.monotonic() < deadline:
                for sock in list(open_):
                    with contextlib.suppress(OSError):
                        sock.send(b"x")
                alice.send(b"ping %d\n" % sent)
                sent += 1
                for sock, data in read_ready(open_, 0.1).items():
                    heard[sock] += data
            assert not open_, f"{len(open_)} of 100 were never timed out"
            for sock in loris:
                last = heard[sock].rstrip(b"\n").rsplit(b"\n", 1)[-1]
                assert last == b"! disconnected: unfinished line", bytes(heard[sock][-200:])
            got = [line for line in bob.expect(f"<guest1> ping {sent - 1}") if "ping" in line]
            assert got == [f"<guest1> ping {i}" for i in range(sent - 1)]
            bob.send(b"/who\n")
            bob.expect("* here (2): guest1, guest2")
        finally:
            for sock in loris:
                sock.close()


@pytest.mark.fork
@needs_fork
def test_a_trickling_client_is_read_a_few_times_a_second_not_once_a_byte() -> None:
    """Slowloris's cost to the room is the server's wake-ups for it: 500 connections at a
    byte every 100 ms woke their workers 5,000 times a second (in thread mode each one a
    turn of the one interpreter lock the room's relaying needs too). A client that
    trickles a line a few bytes at a time is read a few times a second; its line, once
    finished, still arrives whole."""
    with running_server("0", "--host", "127.0.0.1", "--mode", "fork") as srv:
        (bob,) = joined_peers(srv, 1)
        # (A fresh worker bears the fork server's name until it has renamed itself.)
        wait_until(lambda: len(srv.workers()) == 1, "bob's worker")
        before = set(srv.workers())
        trickler = srv.connect()
        # Each byte its own segment, as a slowloris sends them (its bytes are 100 ms
        # apart, past the peer's delayed ACK, so Nagle never joins them).
        trickler.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        trickler.expect("* welcome")
        bob.expect("* guest2 joined")
        woken = trickle_wakeups(srv, before, trickler, bob, "guest2")
        assert woken < TRICKLED // 4, f"woken {woken} times for {TRICKLED} bytes"
