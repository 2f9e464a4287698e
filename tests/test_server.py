"""The chat server over real sockets on 127.0.0.1, in both concurrency modes."""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from live_server import (
    WAIT,
    Peer,
    ServerProcess,
    child_env,
    joined_peers,
    kernel_send_buffer,
    running_server,
    send_in_background,
    wait_until,
)

from chatbox import protocol


@pytest.fixture
def server(mode: str) -> Iterator[ServerProcess]:
    with running_server("0", "--host", "127.0.0.1", "--mode", mode) as srv:
        yield srv


def test_server_announces_the_real_port_on_its_first_line(server: ServerProcess) -> None:
    assert server.host == "127.0.0.1"
    assert server.port > 0
    peer = server.connect()
    assert peer.line() == "* welcome guest1; nobody else is here yet"


def test_server_relays_to_everyone_else_in_order(server: ServerProcess) -> None:
    alice, bob, carol = joined_peers(server, 3)
    alice.send(b"one\r\ntwo\n")
    assert bob.lines(2) == ["<guest1> one", "<guest1> two"]
    assert carol.lines(2) == ["<guest1> one", "<guest1> two"]
    bob.send(b"/who\n")
    assert bob.line() == "* here (3): guest1, guest2, guest3"
    # Alice got nothing back of her own lines: the first thing she sees is the next chat.
    carol.send(b"three\n")
    assert alice.line() == "<guest3> three"


def test_server_names_are_unique_case_insensitively(server: ServerProcess) -> None:
    alice, bob = joined_peers(server, 2)
    alice.send(b"/nick Alice\n")
    assert alice.line() == "* you are now known as Alice"
    assert bob.line() == "* guest1 is now known as Alice"
    bob.send(b"/nick aLiCe\n")
    assert bob.line() == "! name 'aLiCe' is taken"
    bob.send(b"/msg ALICE psst\n/me waves\n")
    assert alice.lines(2) == ["[private] <guest2> psst", "* <guest2> waves"]


def test_server_bad_input_gets_errors_and_keeps_the_connection(server: ServerProcess) -> None:
    alice, bob = joined_peers(server, 2)
    alice.send(b"x" * 5000 + b"\n\xff\x1b]0;pwned\x07\x00\n\n/frob\nstill here\n")
    assert alice.line() == "! line too long (max 4096 bytes)"
    assert bob.line() == "<guest1> \ufffd\ufffd]0;pwned\ufffd\ufffd"
    assert alice.line() == "! unknown command '/frob' (try /help)"
    assert bob.line() == "<guest1> still here"


def test_server_global_order_is_the_same_for_every_receiver(server: ServerProcess) -> None:
    count = 3000
    a, b, c, d = joined_peers(server, 4)
    senders = [
        send_in_background(a, b"".join(b"a%d\n" % i for i in range(count))),
        send_in_background(b, b"".join(b"b%d\n" % i for i in range(count))),
    ]
    seen_c = c.lines(2 * count)
    seen_d = d.lines(2 * count)
    for thread in senders:
        thread.join()
    assert seen_c == seen_d, "two receivers saw different orders"
    for who, tag in (("guest1", "a"), ("guest2", "b")):
        mine = [line for line in seen_c if line.startswith(f"<{who}> ")]
        assert mine == [f"<{who}> {tag}{i}" for i in range(count)]
    # And each sender got the other's lines, complete and in order.
    assert a.lines(count) == [f"<guest2> b{i}" for i in range(count)]
    assert b.lines(count) == [f"<guest1> a{i}" for i in range(count)]


def test_server_keeps_a_senders_order_between_single_lines_and_bursts(mode: str) -> None:
    # One line per send, while another client's bursts keep the hub busy: in thread
    # mode a line then goes either straight into the hub or up the channel, and the
    # two ways must not overtake each other. (Timing decides when they would: with
    # the order check of `Hub._take` left out, this failed in 3 of 8 runs.)
    count, bursts, burst = 2000, 20, 2000
    # No flood control: the bursts are 240,000 lines, more than its allowance.
    no_flood = ("--flood-lines", "0", "--flood-bytes", "0")
    with running_server("0", "--host", "127.0.0.1", "--mode", mode, *no_flood) as server:
        _check_order_between_singles_and_bursts(server, count, bursts, burst)


def _check_order_between_singles_and_bursts(
    server: ServerProcess, count: int, bursts: int, burst: int
) -> None:
    a, b, c = joined_peers(server, 3)
    a.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for sender in (a, b):
        # The senders read what the other sends, as chat clients do: a sender that
        # never reads would become a slow reader and hold the room up.
        threading.Thread(target=sender.read_to_eof, daemon=True).start()
    for round_ in range(6):

        def singles(round_: int = round_) -> None:
            for i in range(count):
                a.send(b"a%d.%d\n" % (round_, i))

        def in_bursts(round_: int = round_) -> None:
            for k in range(bursts):
                b.send(b"".join(b"b%d.%d\n" % (round_, k * burst + i) for i in range(burst)))

        with ThreadPoolExecutor(2) as pool:
            sent = [pool.submit(singles), pool.submit(in_bursts)]
            seen = c.lines(count + bursts * burst)
            for future in sent:
                future.result()
        assert [line for line in seen if line.startswith("<guest1> ")] == [
            f"<guest1> a{round_}.{i}" for i in range(count)
        ]
        assert [line for line in seen if line.startswith("<guest2> ")] == [
            f"<guest2> b{round_}.{i}" for i in range(bursts * burst)
        ]


def chat_from(peer: Peer, sender: str, count: int) -> tuple[list[str], list[str]]:
    """Read until ``count`` chat lines from ``sender`` came; (those lines, all others)."""
    mine: list[str] = []
    others: list[str] = []
    while len(mine) < count:
        line = peer.line()
        (mine if line.startswith(f"<{sender}> ") else others).append(line)
    return mine, others


def test_server_never_stalls_for_a_client_that_does_not_read(mode: str) -> None:
    padding = b"." * 500
    # Each talker sends more than the kernel holds for a reader that stopped (plus
    # 2 MiB): the sleeper, sent both streams, is then owed more than one whole stream
    # beyond what its socket holds. A hard bound of one whole stream is thus reached by
    # the sleeper, and never by a talker (each is sent one stream only), however far
    # behind it reads on a busy machine. Flood control off: the bulk is the point.
    count = max(10_000, (kernel_send_buffer() + (2 << 20)) // len(padding) + 1)
    hard = count * (len(padding) + 20) + (256 << 10)
    with running_server(
        "0", "--host", "127.0.0.1", "--mode", mode, "--sendq", "65536",
        "--sendq-hard", str(hard), "--slow-timeout", "60",
        "--flood-lines", "0", "--flood-bytes", "0",
    ) as srv:  # fmt: skip
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", srv.port))
        sleeper = Peer(raw)
        sleeper.expect("* welcome")
        a, b = joined_peers(srv, 2)
        sleeper.expect("* guest2 joined")  # then it reads nothing any more
        threads = [
            send_in_background(a, b"".join(b"a%d %s\n" % (i, padding) for i in range(count))),
            send_in_background(b, b"".join(b"b%d %s\n" % (i, padding) for i in range(count))),
        ]
        # Both talkers read at full speed at once: a talker that paused would itself be
        # a slow reader.
        with ThreadPoolExecutor(2) as pool:
            reading_a = pool.submit(chat_from, a, "guest3", count)
            reading_b = pool.submit(chat_from, b, "guest2", count)
            got_a, notices_a = reading_a.result()
            got_b, notices_b = reading_b.result()
        for thread in threads:
            thread.join()
        assert got_a == [f"<guest3> b{i} {padding.decode()}" for i in range(count)]
        assert got_b == [f"<guest2> a{i} {padding.decode()}" for i in range(count)]
        # The sleeper was cut off alone, and both others were told why.
        a.send(b"/who\n")
        notices_a += a.expect("* here (2): guest2, guest3")
        b.send(b"/who\n")
        notices_b += b.expect("* here (2): guest2, guest3")
        assert "* guest1 left (too slow)" in notices_a
        assert "* guest1 left (too slow)" in notices_b
        raw.settimeout(20)
        sleeper.read_to_eof()  # and its connection ends: no reader left hanging


def test_server_tells_one_too_many_that_it_is_full(mode: str) -> None:
    with running_server("0", "--host", "127.0.0.1", "--mode", mode, "--max-clients", "2") as srv:
        inside = joined_peers(srv, 2)
        extra = srv.connect()
        assert extra.read_to_eof() == ["! server full (max 2 clients)"]
        inside[0].send(b"/who\n")
        assert inside[0].line() == "* here (2): guest1, guest2"


def test_server_shutdown_tells_everyone_and_reaps_its_workers(mode: str) -> None:
    srv = ServerProcess("0", "--host", "127.0.0.1", "--mode", mode)
    try:
        peers = joined_peers(srv, 3)
        # The server promises to be gone within 2 s; 5 leaves room for a loaded machine
        # while still failing on a server that waits for its clients.
        assert srv.terminate(timeout=5) == 0
        for peer in peers:
            assert peer.read_to_eof() == ["* server shutting down"]
        assert not os.path.exists(f"/proc/{srv.pid}")
    finally:
        srv.stop()


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT], ids=["SIGHUP", "SIGINT"])
def test_sighup_and_sigint_to_the_server_alone_shut_it_down_as_sigterm_does(
    mode: str, signum: signal.Signals
) -> None:
    """A terminal that closes (SIGHUP) or a Ctrl-C (SIGINT) sent to the hub alone: every
    client is told, and the server exits 0 (SIGHUP used to kill it without a word)."""
    srv = ServerProcess("0", "--host", "127.0.0.1", "--mode", mode)
    try:
        peers = joined_peers(srv, 3)
        srv.proc.send_signal(signum)
        assert srv.proc.wait(WAIT) == 0
        for peer in peers:
            assert peer.read_to_eof() == ["* server shutting down"]
    finally:
        srv.stop()


def test_server_shutdown_does_not_wait_for_a_client_that_never_reads(mode: str) -> None:
    no_flood_limit = ("--flood-lines", "0", "--flood-bytes", "0")
    srv = ServerProcess("0", "--host", "127.0.0.1", "--mode", mode, *no_flood_limit)
    try:
        sleeper, talker = joined_peers(srv, 2)
        sleeper.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        talker.send(b"".join(b"filling the sleeper's buffers %d\n" % i for i in range(20000)))
        talker.send(b"/who\n")
        talker.expect("* here")
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(5) == 0
    finally:
        srv.stop()


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs /proc")
def test_server_leaks_no_descriptor_after_500_connections(server: ServerProcess) -> None:
    watcher = joined_peers(server, 1)[0]
    before = server.open_fds()
    for i in range(500):
        peer = server.connect()
        if i % 2:
            peer.send(b"/quit\n")
            peer.read_to_eof()
        peer.close()
    watcher.send(b"/who\n")
    wait_until(lambda: server.open_fds() == before, "fd count back to where it started")
    wait_until(lambda: len(server.workers()) <= 1, "departed workers reaped")


@pytest.mark.fork
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_forked_worker_owns_only_its_own_descriptors() -> None:
    with running_server("0", "--host", "127.0.0.1", "--mode", "fork") as srv:
        peers = joined_peers(srv, 3)
        peers[0].send(b"/who\n")
        peers[0].expect("* here (3)")
        wait_until(lambda: len(srv.workers()) == 3, "three workers")

        def held() -> dict[int, list[str]]:
            return {pid: os.listdir(f"/proc/{pid}/fd") for pid in srv.workers()}

        # A worker closes what it inherited first thing, but the hub serves its client
        # (welcome, relaying) without waiting for that, so on a loaded machine a fresh
        # worker may not have run yet: wait for the closing, then check what is left.
        # stdin, stdout, stderr, its client, its channel: nothing of the others.
        try:
            wait_until(lambda: all(len(fds) == 5 for fds in held().values()), "workers")
        except AssertionError:
            raise AssertionError(f"workers hold more than their own: {held()}") from None


@pytest.mark.fork
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_departed_workers_are_reaped_never_zombies() -> None:
    with running_server("0", "--host", "127.0.0.1", "--mode", "fork") as srv:
        stay = joined_peers(srv, 1)[0]
        for _ in range(10):
            peer = srv.connect()
            peer.expect("* welcome")
            peer.close()
        stay.send(b"/who\n")
        stay.expect("* here")

        def zombies() -> list[int]:
            found = []
            for pid in srv.workers():
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        found.append(pid)
            return found

        wait_until(lambda: len(srv.workers()) == 1 and not zombies(), "only one live worker")


def _abuser_code(port: int, seed: int) -> str:
    # Bounded: 400 random chunks, then it waits to be killed (if it is still alive).
    return f"""
import random, socket, sys
rng = random.Random({seed})
s = socket.create_connection(("127.0.0.1", {port}))
s.recv(100)
print("connected", flush=True)
for _ in range(400):
    s.sendall(rng.randbytes(rng.randrange(1, 3000)))
sys.stdin.read()
"""


def test_server_survives_garbage_resets_half_closes_and_killed_clients(
    server: ServerProcess,
) -> None:
    count = 3000
    alice, bob = joined_peers(server, 2)
    rng = random.Random(1234)
    abusers = []
    with ThreadPoolExecutor(2) as pool:
        # Both talkers read all along, as a real client does: garbage relayed to them
        # must not make them slow readers.
        bob_reads = pool.submit(chat_from, bob, "guest1", count)
        alice_reads = pool.submit(chat_from, alice, "guest2", 1)
        try:
            for seed in range(3):
                proc = subprocess.Popen(
                    [sys.executable, "-c", _abuser_code(server.port, seed)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=child_env(),
                )
                abusers.append(proc)
            sender = send_in_background(alice, b"".join(b"a%d\n" % i for i in range(count)))
            for proc in abusers:
                assert proc.stdout is not None
                assert proc.stdout.readline() == b"connected\n"
            for i in range(30):
                sock = socket.create_connection(("127.0.0.1", server.port))
                sock.sendall(rng.randbytes(rng.randrange(1, 9000)))
                if i % 3 == 0:
                    sock.shutdown(socket.SHUT_WR)  # half-close, then go
                elif i % 3 == 1:
                    linger = struct.pack("ii", 1, 0)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                sock.close()  # with SO_LINGER 0: a reset
            for proc in abusers:
                proc.kill()  # kill -9, most likely mid-stream
                proc.wait()
            sender.join()
            got, _ = bob_reads.result()
            assert got == [f"<guest1> a{i}" for i in range(count)]
            bob.send(b"still fine\n")
            assert alice_reads.result()[0] == ["<guest2> still fine"]
        finally:
            for proc in abusers:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                for stream in (proc.stdin, proc.stdout):
                    if stream is not None:
                        stream.close()


def test_server_listens_on_ipv6_loopback(mode: str) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 is not configured")
    with running_server("0", "--host", "::1", "--mode", mode) as srv:
        assert srv.host == "::"[:0] + "::1"
        peer = Peer(socket.create_connection(("::1", srv.port), timeout=20))
        assert peer.line().startswith("* welcome guest1")


CLI_ERRORS = [
    (["99999"], 2, "port out of range"),
    (["--mode", "spoon"], 2, "invalid choice"),
    (["0", "--max-line", "0"], 2, "must be at least 1"),
    (["0", "--host", "no.such.host.invalid"], 2, "cannot use address"),
]


@pytest.mark.parametrize(("args", "code", "message"), CLI_ERRORS)
def test_server_usage_errors_are_one_clear_line(args: list[str], code: int, message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "chatbox.server", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=30,
    )
    assert proc.returncode == code
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_server_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "chatbox.server", str(port), "--host", "127.0.0.1"],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=30,
        )
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_server_says_when_the_descriptor_limit_is_too_low() -> None:
    # A hard limit of 200 descriptors cannot serve 1000 clients: the server must say so,
    # serve as many as it can, and still work.
    script = (
        "import resource, runpy, sys; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200)); "
        "sys.argv = ['chatbox-server', '0', '--host', '127.0.0.1', '--max-clients', '1000']; "
        "runpy.run_module('chatbox.server', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("listening on 127.0.0.1:")
        port = int(first.rsplit(":", 1)[1])
        peer = Peer(socket.create_connection(("127.0.0.1", port), timeout=20))
        assert peer.line() == "* welcome guest1; nobody else is here yet"
        peer.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "the descriptor limit (RLIMIT_NOFILE 200) allows only 52 of --max-clients 1000" in err


STORM = 200


def test_server_storm_of_joins_gives_few_notice_lines_and_accounts_for_every_joiner(
    mode: str,
) -> None:
    """200 clients arrive while the hub is stopped (SIGSTOP: they wait in the listen
    backlog), so the hub takes them in a few turns. Everyone already in the room learns
    of all 200 in a few coalesced lines, never 200 lines each."""
    with running_server(
        "0", "--host", "127.0.0.1", "--mode", mode, "--max-clients", str(STORM + 10)
    ) as server:
        [watcher] = joined_peers(server, 1)
        os.kill(server.pid, signal.SIGSTOP)
        try:
            peers = [server.connect() for _ in range(STORM)]
        finally:
            os.kill(server.pid, signal.SIGCONT)
        names: list[str] = []
        counted = 0
        notices = 0
        while len(names) + counted < STORM:
            match = protocol.JOINED_LINE.match(watcher.line())
            assert match, "only join notices come before the storm is announced"
            listed, others = protocol.notice_names(match)
            names += listed
            counted += others
            notices += 1
        # The hub takes at most 64 connections a turn: 200 need 4 turns.
        assert notices <= 8, f"{notices} join notices for {STORM} joiners"
        assert len(set(names)) == len(names)
        assert len(names) + counted == STORM
        watcher.send(b"sync\n")
        for peer in peers:
            before = peer.expect("<guest1> sync")
            joins = [line for line in before if protocol.JOINED_LINE.match(line)]
            assert before[0].startswith("* welcome")
            assert len(joins) <= 8, f"a newcomer got {len(joins)} join notices"
        for peer in peers:
            peer.close()
        left = 0
        while left < STORM:
            match = protocol.LEFT_LINE.match(watcher.line())
            assert match
            listed, others = protocol.notice_names(match)
            left += len(listed) + others
        assert left == STORM
