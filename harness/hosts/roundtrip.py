"""Round-trip time between two hosts of a network, measured with real TCP between them.

No ``ping``: it may not be installed, ICMP may be filtered, and what the chat traffic feels
is TCP anyway. A one-shot echo process runs on the server host, a timing process on the
client host; both are plain Python started through the hosts' own ``command`` wrappers, so
this works unchanged for every host kind (a namespace, an ssh host). With the impairment
proxy in the path, `proxy_round_trip_ms` times the path the chat traffic takes through it.
"""

from __future__ import annotations

import subprocess
import time

from harness.daemon import Daemon, DaemonError, Readiness
from harness.hosts.base import Host, Network

# Round trips timed (the median is reported): enough to smooth the first packet's ARP and
# slow start, few enough to cost nothing.
SAMPLES = 9
TIMEOUT_S = 30.0

# On the server host: accept one connection and echo until it closes. The first stdout
# line announces it as a server does ("listening on HOST:PORT").
ECHO_SOURCE = """
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen(1)
s.settimeout(30)
print('listening on %s:%d' % s.getsockname()[:2], flush=True)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    b = c.recv(64)
    if not b:
        break
    c.sendall(b)
"""

# On the client host: time one-byte round trips over one connection; print the median ms.
PING_SOURCE = """
import socket, statistics, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    c.sendall(b"x")
    if c.recv(1) != b"x":
        sys.exit("echo broke")
    times.append((time.perf_counter() - t) * 1000)
c.close()
print(statistics.median(times[1:] or times))
"""


def ping_command(client: Host, connect: str, port: int, samples: int = SAMPLES) -> list[str]:
    """The local argv that times ``samples`` one-byte round trips from ``client`` to
    ``connect:port`` and prints the median in ms (the echo must already listen there)."""
    return client.command([client.python, "-c", PING_SOURCE, connect, str(port), str(samples)])


def run_ping(argv: list[str]) -> float | None:
    """Run a `ping_command`; its median in ms, or None if it failed (bounded in time)."""
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            return None
        return round(float(done.stdout.strip().splitlines()[-1]), 3)
    except (subprocess.TimeoutExpired, ValueError, IndexError, OSError):
        return None


def start_echo(server: Host, bind: str) -> Daemon:
    """The echo on ``server``, listening; its port is ``announced[1]``.

    Resource handling: the caller stops it. Error handling: `DaemonError`."""
    echo = Daemon("rtt-echo", server.command([server.python, "-c", ECHO_SOURCE, bind]))
    echo.start()
    try:
        echo.wait_ready(Readiness("line"), 0, lambda _: False, time.monotonic() + TIMEOUT_S)
    except BaseException:
        echo.stop()
        raise
    return echo


def measure_round_trip_ms(
    server: Host, client: Host, *, bind: str, connect: str, samples: int = SAMPLES
) -> float | None:
    """Median TCP round trip in ms from ``client`` to ``server``, or None if it failed.

    ``bind`` is the address the echo listens on (on the server host); ``connect`` is the
    address the client host reaches it at.

    Resource handling: the echo process is ended and reaped before returning, whatever
    happened; the timing process is run to completion with a timeout.
    Error handling: any failure (no python there, no route, timeout) returns None: a
    missing measurement must not fail a run, the report says "unknown".
    """
    try:
        echo = start_echo(server, bind)
    except DaemonError:
        return None
    try:
        assert echo.announced is not None
        return run_ping(ping_command(client, connect, echo.announced[1], samples))
    finally:
        echo.stop()


def proxy_round_trip_ms(network: Network, spec: str) -> float | None:
    """Median TCP round trip (ms) through the impairment proxy's path, or None.

    What is measured: one-byte round trips from client host 0 through a second proxy
    with the same toxics, on the server host, to a TCP echo there - the path the chat
    traffic takes, minus the chat server (which relays to others, not back).

    Resource handling: the echo and the second proxy are daemons, ended and reaped before
    returning. Error handling: any failure returns None (the report then says "not
    measured"); a run never fails for want of it.
    """
    from harness.impair import launch

    host = network.server
    listen = network.listen_address
    try:
        echo = start_echo(host, listen)
    except DaemonError:
        return None
    try:
        assert echo.announced is not None
        deadline = time.monotonic() + TIMEOUT_S
        proxy = launch(host, listen, echo.announced[1], spec, "rtt-impair", deadline)
        try:
            assert proxy.announced is not None
            client = network.client_host(0)
            return run_ping(ping_command(client, network.connect_address, proxy.announced[1]))
        finally:
            proxy.stop()
    except DaemonError:
        return None
    finally:
        echo.stop()
