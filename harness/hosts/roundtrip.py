"""Round-trip time between two hosts of a network, measured with real TCP between them.

No ``ping``: it may not be installed, ICMP may be filtered, and what the chat traffic feels
is TCP anyway. A one-shot echo process runs on the server host, a timing process on the
client host; both are plain Python started through the hosts' own ``command`` wrappers, so
this works unchanged for every host kind (a namespace, an ssh host).
"""

from __future__ import annotations

import subprocess

from harness.hosts.base import Host

# Round trips timed (the median is reported): enough to smooth the first packet's ARP and
# slow start, few enough to cost nothing.
SAMPLES = 9
TIMEOUT_S = 30.0

# On the server host: accept one connection and echo until it closes. The first stdout
# line is the port it listens on.
ECHO_SOURCE = """
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen(1)
s.settimeout(30)
print(s.getsockname()[1], flush=True)
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


# The same echo, announcing itself as a server does ("listening on HOST:PORT"), for when
# it is started as a `harness.target.Daemon` behind the impairment proxy.
ANNOUNCING_ECHO_SOURCE = ECHO_SOURCE.replace(
    "print(s.getsockname()[1], flush=True)",
    "print('listening on %s:%d' % s.getsockname()[:2], flush=True)",
)


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


def measure_round_trip_ms(
    server: Host, client: Host, *, bind: str, connect: str, samples: int = SAMPLES
) -> float | None:
    """Median TCP round trip in ms from ``client`` to ``server``, or None if it failed.

    ``bind`` is the address the echo listens on (on the server host); ``connect`` is the
    address the client host reaches it at.

    Resource handling: the echo process is killed and reaped before returning, whatever
    happened; the timing process is run to completion with a timeout.
    Error handling: any failure (no python there, no route, timeout) returns None: a
    missing measurement must not fail a run, the report says "unknown".
    """
    try:
        echo = subprocess.Popen(
            server.command([server.python, "-c", ECHO_SOURCE, bind]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    except OSError:
        return None
    try:
        assert echo.stdout is not None
        port = echo.stdout.readline().strip()
        if not port.isdigit():
            return None
        return run_ping(ping_command(client, connect, int(port), samples))
    except OSError:
        return None
    finally:
        echo.kill()
        echo.wait()
