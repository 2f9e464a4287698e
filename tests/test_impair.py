"""The impairment proxy, each toxic over real sockets on 127.0.0.1: what TCP promises
(order, integrity, orderly close) survives delay, jitter, bandwidth and slicing, and a
reset is delivered as a reset. Timing is asserted only as generous lower bounds."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from netns_fixture import WAIT_S, announced, chat_server, child_env

from harness.daemon import Daemon
from harness.hosts.loopback import LoopbackHost
from harness.impair import SpecError, Toxics, parse_address, parse_spec

IMPAIR = [sys.executable, "-m", "harness.impair"]


@dataclass
class Echo:
    """A real TCP echo server in a thread; remembers how its peers' bytes arrived."""

    port: int = 0
    recv_sizes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reset_next: bool = False  # answer the next connection's first bytes with a reset


@contextlib.contextmanager
def echo_server() -> Iterator[Echo]:
    echo = Echo()
    listener = socket.create_server(("127.0.0.1", 0))
    echo.port = listener.getsockname()[1]
    threads: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    echo.recv_sizes.append(len(data))
                    if echo.reset_next:
                        conn.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        return
                    conn.sendall(data)
            except OSError as exc:
                echo.errors.append(type(exc).__name__)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            t = threading.Thread(target=serve, args=(conn,), daemon=True)
            threads.append(t)
            t.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield echo
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        acceptor.join(WAIT_S)
        for t in threads:
            t.join(WAIT_S)


@contextlib.contextmanager
def proxy(target_port: int, spec: str) -> Iterator[tuple[Daemon, int]]:
    """`python -m harness.impair` in front of 127.0.0.1:target_port, started the way the
    harness starts it; yields (daemon, port). Ended and reaped on exit."""
    with announced([*IMPAIR, "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{target_port}",
                    "--spec", spec], "impairment proxy") as (daemon, port):  # fmt: skip
        assert daemon.announce_line == f"listening on 127.0.0.1:{port}"
        yield daemon, port


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(sock: socket.socket, payload: bytes) -> bytes:
    """Send everything, half-close, and read until the echo's orderly close."""
    sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
    sender.start()
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    sender.join(WAIT_S)
    return b"".join(chunks)


def numbered(count: int) -> bytes:
    """Lines that prove order and integrity: a sequence number and a digest of it."""
    return b"".join(
        b"%06d %s\n" % (i, hashlib.sha256(b"%d" % i).hexdigest().encode()) for i in range(count)
    )


SPECS_THAT_KEEP_THE_STREAM = [
    "",
    "delay=5ms",
    "delay=5ms,jitter=5ms",
    "slice=7",
    "delay=2ms,jitter=2ms,slice=1",
    "bandwidth=8mbit,slice=3",
]


@pytest.mark.parametrize("spec", SPECS_THAT_KEEP_THE_STREAM)
def test_impair_keeps_order_and_integrity_and_the_orderly_close(spec: str) -> None:
    """Where TCP promises delivery, every byte arrives, once, in order, then EOF."""
    payload = numbered(300 if "slice=1" in spec else 3000)
    with echo_server() as echo, proxy(echo.port, spec) as (_, port), connect(port) as sock:
        assert exchange(sock, payload) == payload


def test_impair_delay_adds_latency_both_ways() -> None:
    """delay=50ms each way: a round trip through the proxy takes at least 100 ms."""
    with echo_server() as echo, proxy(echo.port, "delay=50ms") as (_, port), connect(port) as s:
        for _ in range(3):
            start = time.monotonic()
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            assert time.monotonic() - start >= 0.1


def test_impair_slice_hands_the_receiver_pieces() -> None:
    """slice=1: a message written at once reaches the receiver in many small reads."""
    payload = b"y" * 2000
    # A receiver the machine's load keeps waiting finds all the pieces at once in its
    # buffer: a few messages in turn, and more reads than messages in all.
    # (Each message on a connection of its own: an exchange half-closes its socket.)
    rounds = 5
    with echo_server() as echo, proxy(echo.port, "slice=1") as (_, port):
        for _ in range(rounds):
            with connect(port) as s:
                assert exchange(s, payload) == payload
            if len(echo.recv_sizes) > rounds:
                break
    assert len(echo.recv_sizes) > rounds
    assert sum(echo.recv_sizes) % len(payload) == 0


def test_impair_bandwidth_throttles() -> None:
    """bandwidth=80kbit is 10 kB/s: 5 kB cannot cross in less than half a second."""
    payload = b"z" * 5000
    with (
        echo_server() as echo,
        proxy(echo.port, "bandwidth=80kbit") as (_, port),
        connect(port) as sock,
    ):
        start = time.monotonic()
        assert exchange(sock, payload) == payload
        assert time.monotonic() - start >= 0.45


def test_impair_reset_after_counts_both_directions_then_resets() -> None:
    """reset-after=20: 10 bytes up and 10 echoed back, then the client sees a reset."""
    with echo_server() as echo, proxy(echo.port, "reset-after=20") as (proc, port):
        with connect(port) as sock:
            sock.sendall(b"0123456789")
            got = b""
            with pytest.raises(ConnectionResetError):
                while len(got) < 100:
                    data = sock.recv(100)
                    assert data, "an orderly close where a reset was due"
                    got += data
            assert got == b"0123456789"
        assert proc.stop() == "exit 0"  # SIGTERM: the proxy ends cleanly
    assert any("after 20 bytes" in line for line in proc.stderr_lines())


def test_impair_reset_after_zero_resets_at_once() -> None:
    # The reset may come so soon that it is the connect that reports it (it did on a
    # loaded machine): either way the client sees a reset, never data or a clean close.
    with (
        echo_server() as echo,
        proxy(echo.port, "reset-after=0") as (_, port),
        pytest.raises(ConnectionResetError),
        connect(port) as s,
    ):
        s.sendall(b"hello")
        while s.recv(100):
            pass


def test_impair_passes_a_target_reset_on_as_a_reset() -> None:
    """A reset by the server must reach the client as a reset, not as an orderly close."""
    with echo_server() as echo, proxy(echo.port, "delay=1ms") as (_, port), connect(port) as s:
        echo.reset_next = True
        s.sendall(b"provoke")
        with pytest.raises(ConnectionResetError):
            while s.recv(100):
                pass


def test_impair_slice_1_chat_lines_stay_whole() -> None:
    """The real chat server behind slice=1: lines still arrive whole, in order."""
    with (
        chat_server(LoopbackHost(), "127.0.0.1") as (_, server_port),
        proxy(server_port, "slice=1,delay=1ms,jitter=1ms") as (_, port),
        connect(port) as alice,
    ):
        a = alice.makefile("rb")
        assert a.readline().startswith(b"* welcome")
        with connect(port) as bob:
            b = bob.makefile("rb")
            assert b.readline().startswith(b"* welcome")
            assert a.readline().endswith(b" joined\n")
            lines = [b"line %d from alice" % i for i in range(20)]
            alice.sendall(b"".join(x + b"\n" for x in lines))
            for line in lines:
                assert b.readline() == b"<guest1> " + line + b"\n"


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("delay=fast", "delay='fast'"),
        ("lag=5ms", "unknown toxic 'lag'"),
        ("slice=0", "slice='0'"),
        ("bandwidth=10", "bandwidth='10'"),
        ("reset-after=-1", "reset-after='-1'"),
        ("delay", "delay needs a value"),
        ("delay=1ms,delay=2ms", "given twice"),
    ],
)
def test_impair_bad_spec_is_one_line_and_exit_2(spec: str, why: str) -> None:
    done = subprocess.run(
        [*IMPAIR, "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--spec", spec],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=WAIT_S,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("impair: bad --spec") and why in done.stderr


@pytest.mark.parametrize("args", [["--listen", "nowhere"], ["--target", "1.2.3.4:70000"], []])
def test_impair_bad_arguments_are_one_line_and_exit_2(args: list[str]) -> None:
    argv = {"--listen": "127.0.0.1:0", "--target": "127.0.0.1:9"}
    if args:
        argv[args[0]] = args[1]
    flat = [x for kv in argv.items() for x in kv] if args else []
    done = subprocess.run(
        [*IMPAIR, *flat],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=WAIT_S,
        check=False,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("impair: ")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_impair_ends_cleanly_on_a_signal_with_connections_open(sig: int) -> None:
    with echo_server() as echo, proxy(echo.port, "delay=1ms") as (proc, port), connect(port) as s:
        s.sendall(b"ping")
        assert s.recv(4) == b"ping"
        assert proc.proc is not None
        os.kill(proc.pid, sig)
        assert proc.proc.wait(timeout=WAIT_S) == 0
        proc.stop()  # reaped already; the stderr is read to its end
        assert not any("Traceback" in line for line in proc.stderr_lines())


PARSED = [
    ("", Toxics()),
    ("delay=50ms", Toxics(delay=0.05)),
    ("delay=1s,jitter=250us", Toxics(delay=1.0, jitter=0.00025)),
    ("bandwidth=64kbit", Toxics(rate=8000.0)),
    ("bandwidth=2kbps", Toxics(rate=2000.0)),
    ("slice=1, reset-after=0", Toxics(slice=1, reset_after=0)),
]


@pytest.mark.parametrize(("spec", "toxics"), PARSED)
def test_parse_spec_reads_every_toxic(spec: str, toxics: Toxics) -> None:
    assert parse_spec(spec) == toxics


def test_parse_spec_round_trips_through_describe() -> None:
    toxics = parse_spec("delay=50ms,jitter=10ms,bandwidth=64kbit,slice=1,reset-after=9")
    assert parse_spec(toxics.describe()) == toxics


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:80", ("::1", 80)), ("h:1", ("h", 1))],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, "--listen") == expected


def test_parse_address_refuses_garbage() -> None:
    with pytest.raises(SpecError, match="expected HOST:PORT"):
        parse_address("127.0.0.1", "--listen")
