"""Slowloris at scale: N connections, each sending one byte every 100 ms and never a
newline, against the line timeout, while an honest pair plays ping-pong.

    python benchmarks/slowloris.py [--modes fork,thread] [--loris 500] [--line-timeout 5]
                                   [--per-address 10] [--pings 100] [--tls] [--json OUT]

For each server mode a fresh server is started with ``--line-timeout`` and no idle
timeout. Two honest clients join and play ping-pong one message at a time (A says
``pN``; when B has it, B says ``qN``; the figure is A's round trip; one every 50 ms),
in four phases:

- ``quiet``: alone, ``--pings`` round trips;
- ``decoy``: while a side process makes the same attack, for the line timeout, against
  a sink (a process that only accepts, reads and drops, in one selector loop): what
  the attacker's own work and the least any server does for its bytes cost the pair on
  this machine, so that the server's share can be told from the machine's;
- ``lurkers``: while the side process holds as many connections in the room, for the
  line timeout, sending nothing (from 127.3.0.1, ...): what a room of that size costs
  (each honest line goes to every one of them, each one's worker is started), which
  any crowd of readers costs too; the attack's own share is what it costs beyond this;
- ``attack``: while the side process opens ``--loris`` connections to the server,
  ``--per-address`` from each of the addresses 127.2.0.1, 127.2.0.2, ... (at the
  default 10, within the per-address limits: those do not stop this attack, the line
  timeout must; at 500, all from one address, they should) and trickles a byte into
  each every 100 ms, until every connection has ended.

It reports how many connected (an address the server blocked has its SYNs dropped by
the kernel: those never do), how many were refused with a line (``! too many
connections``, ``! connecting too fast``), how many were cut and told `! disconnected:
unfinished line`, the longest time from a connection's first byte to its cut (the
promise: the line timeout plus a little), how many the room held at once, and the
honest pair's p50/p99 in each phase. ``--tls``: the server, the pair and every loris
speak TLS (a certificate made with openssl for the run), each byte its own TLS record
(the decoy stays plain text: the sink speaks no TLS).

Bounded: the decoy lasts the line timeout; the attack ends when every connection is
cut or after 3 x the line timeout + 30 s, and each phase's ping-pong with it; each
server, sink and side process is ended by pid and reaped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from room_load import end_side, percentile, start_server, start_side

CHECKOUT = Path(__file__).resolve().parents[1]
PER_ADDRESS = 10  # connections from one address: the default burst of --connect-burst
PING_TIMEOUT = 10.0
# The honest pair's pace: a round trip, then this long (a chat, not a flood of its own).
PACE = 0.05
PHASES = ("quiet", "decoy", "lurkers", "attack")
# Where each phase's connections come from: the lurkers' addresses are not the
# attack's, so that the attack starts with every address's connect rate unspent.
ATTACK_NETWORK = "127.2.0.0"
LURKER_NETWORK = "127.3.0.0"

# argv: port, count, per address, line timeout, CA file or "", the checkout, seconds (0:
# until every connection is cut), pace (a byte every this many seconds; 0: none at all,
# lurkers), the network the addresses are taken from (a.b.0.0: a.b.0.1, a.b.0.2, ...).
# Connects without waiting on any one connection (an address the server blocked has
# its SYNs dropped: such a connect never completes, and is given up after CONNECT_WAIT).
# Prints "going" once every connection that got in has its first byte, then one JSON
# line when all are closed (or at its deadline).
LORIS = r"""
import json, selectors, signal, socket, sys, time
port, count, per = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
line_timeout, ca, seconds = float(sys.argv[4]), sys.argv[5], float(sys.argv[7])
pace = float(sys.argv[8])
import ipaddress
base = int(ipaddress.IPv4Address(sys.argv[9]))
sys.path.insert(0, sys.argv[6])
from harness.drain import read_ready
CONNECT_WAIT = 5.0
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
context = None
if ca:
    import ssl
    context = ssl.create_default_context(cafile=ca)
pending = selectors.DefaultSelector()
for i in range(count):
    s = socket.socket()
    s.bind((str(ipaddress.IPv4Address(base + i // per + 1)), 0))
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    pending.register(s, selectors.EVENT_WRITE)
socks, unconnected = [], 0
wait_until = time.monotonic() + CONNECT_WAIT
while pending.get_map() and time.monotonic() < wait_until:
    for key, _ in pending.select(max(0.0, wait_until - time.monotonic())):
        s = key.fileobj
        pending.unregister(s)
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            unconnected += 1
            s.close()
        else:
            socks.append(s)
for key in list(pending.get_map().values()):
    unconnected += 1  # its SYNs dropped (the address is blocked)
    key.fileobj.close()
pending.close()
if context is not None:
    wrapped = []
    for s in socks:
        s.settimeout(CONNECT_WAIT)
        try:
            wrapped.append(context.wrap_socket(s, server_hostname="127.0.0.1"))
        except OSError:
            unconnected += 1
            s.close()
    socks = wrapped
first, heard = {}, {}
for s in socks:
    s.setblocking(False)
    try:
        if pace:
            s.send(b"x")
    except OSError:
        pass
    first[s] = time.monotonic()
    heard[s] = bytearray()
print("going", flush=True)
open_, closed_after = set(socks), {}
deadline = time.monotonic() + (seconds or 3 * line_timeout + 30)
next_byte = time.monotonic() + (pace or 3600)
while open_ and not stop and time.monotonic() < deadline:
    for s, data in read_ready(open_, max(0.0, next_byte - time.monotonic())).items():
        heard[s] += data
        if s not in open_:
            closed_after[s] = time.monotonic() - first[s]
    if time.monotonic() >= next_byte:
        next_byte += pace
        for s in open_:
            try:
                s.send(b"x")
            except OSError:
                pass
notice = b"! disconnected: unfinished line"
told = [s for s, h in heard.items() if bytes(h).rstrip(b"\n").endswith(notice)]
refused = sum(s not in told and b"! " in h for s, h in heard.items())
cut_after = sorted(closed_after[s] for s in told if s in closed_after)
median = cut_after[len(cut_after) // 2] if cut_after else float("nan")
print(json.dumps({"connected": len(socks), "unconnected": unconnected, "cut": len(cut_after),
                  "told": len(told), "refused": refused,
                  "closed": len(closed_after), "left_open": len(open_),
                  "max_cut_after": max(cut_after, default=float("nan")),
                  "median_cut_after": median}), flush=True)
for s in socks:
    s.close()
"""

# A stand-in for a server that does the least anything can for the same bytes: accepts,
# reads and drops, in one process with one selector. Prints its port, then serves until
# SIGTERM. The attack against it (``decoy``) is the attacker's own cost to the machine.
SINK = r"""
import selectors, signal, socket
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
listener.setblocking(False)
selector = selectors.DefaultSelector()
selector.register(listener, selectors.EVENT_READ)
print("going", listener.getsockname()[1], flush=True)
while not stop:
    for key, _ in selector.select(0.5):
        if key.fileobj is listener:
            try:
                sock, _ = listener.accept()
            except OSError:
                continue
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            continue
        try:
            data = key.fileobj.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not data:
            selector.unregister(key.fileobj)
            key.fileobj.close()
"""


def connect(port: int, context: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=PING_TIMEOUT)
    if context is None:
        return sock
    return context.wrap_socket(sock, server_hostname="127.0.0.1")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 made with the real openssl."""
    cert, key = directory / "server.crt", directory / "server.key"
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    argv += ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=bench"]
    argv += ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return cert, key


class Pair:
    """Two honest clients playing ping-pong."""

    def __init__(self, port: int, context: ssl.SSLContext | None) -> None:
        self.a = connect(port, context)
        self.b = connect(port, context)
        self.a_file = self.a.makefile("rb")
        self.b_file = self.b.makefile("rb")
        self._until(self.a_file, b"* welcome")
        self._until(self.b_file, b"* welcome")
        self.count = 0

    @staticmethod
    def _until(file: object, start: bytes) -> bytes:
        while True:
            line: bytes = file.readline()  # type: ignore[attr-defined]
            if not line:
                raise EOFError("an honest client was disconnected")
            if line.startswith(start) or start in line:
                return line

    def round_trip(self) -> float:
        n = self.count
        self.count += 1
        started = time.perf_counter()
        self.a.sendall(b"p%d\n" % n)
        self._until(self.b_file, b"> p%d\n" % n)
        self.b.sendall(b"q%d\n" % n)
        self._until(self.a_file, b"> q%d\n" % n)
        return time.perf_counter() - started

    def here(self) -> int:
        self.a.sendall(b"/who\n")
        line = self._until(self.a_file, b"* here (")
        return int(line.split(b"(", 1)[1].split(b")", 1)[0])

    def close(self) -> None:
        for f in (self.a_file, self.b_file):
            f.close()
        self.a.close()
        self.b.close()


def start_sink() -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline().split()[1])


def pings_while(pair: Pair, side: subprocess.Popen[str], peak: list[int]) -> list[float]:
    """Round trips, one every `PACE`, until ``side`` has ended; the room's size is
    looked at every 20th (into ``peak``)."""
    times: list[float] = []
    while side.poll() is None:
        times.append(pair.round_trip())
        if len(times) % 20 == 1:
            peak.append(pair.here())
        time.sleep(PACE)
    return times


def wait_for_room(pair: Pair, size: int) -> None:
    """Until the room is back to ``size`` (the lurkers' leaving taken in)."""
    deadline = time.monotonic() + 60
    while pair.here() > size and time.monotonic() < deadline:
        time.sleep(0.2)  # polling the room's count, bounded by the deadline


def loris_args(
    port: int,
    args: argparse.Namespace,
    ca: str,
    seconds: float,
    pace: float = 0.1,
    network: str = ATTACK_NETWORK,
) -> list[str]:
    return [
        *(str(port), str(args.loris), str(args.per_address), str(args.line_timeout), ca),
        *(str(CHECKOUT), str(seconds), str(pace), network),
    ]


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, object]:
    extra = ("--line-timeout", str(args.line_timeout), "--idle-timeout", "0")
    extra += ("--max-clients", str(args.loris + 64))
    context = None
    ca = ""
    if args.tls is not None:
        cert, key = args.tls
        extra += ("--tls-cert", str(cert), "--tls-key", str(key))
        context = ssl.create_default_context(cafile=str(cert))
        ca = str(cert)
    server = start_server(mode, extra)
    try:
        assert server.announced is not None
        port = server.announced[1]
        pair = Pair(port, context)
        quiet = []
        for _ in range(args.pings):
            quiet.append(pair.round_trip())
            time.sleep(PACE)
        # The decoy: the same attack against a sink, for as long as the line timeout
        # (about as long as the attack lasts), plain text even with --tls.
        sink, sink_port = start_sink()
        try:
            loris = start_side(LORIS, loris_args(sink_port, args, "", args.line_timeout))
            try:
                decoy = pings_while(pair, loris, [])
            finally:
                end_side(loris)
        finally:
            end_side(sink)
        # Lurkers: as many connections in the room, for as long, sending nothing: what
        # the room's size costs (every honest line goes to each of them, each one's
        # worker is started), which any crowd of readers costs too.
        lurk_args = loris_args(port, args, ca, args.line_timeout, 0, LURKER_NETWORK)
        lurkers = start_side(LORIS, lurk_args)
        try:
            crowd = pings_while(pair, lurkers, [])
        finally:
            end_side(lurkers)
        wait_for_room(pair, 2)
        loris = start_side(LORIS, loris_args(port, args, ca, 0))
        peak: list[int] = []
        try:
            # Until the side process has seen every connection end (or its deadline).
            attack = pings_while(pair, loris, peak)
        finally:
            report = json.loads(end_side(loris).strip().splitlines()[-1])
        after = pair.here()
        pair.round_trip()  # still chatting
        pair.close()
        result: dict[str, object] = {"mode": mode, "tls": context is not None, **report}
        result["loris"] = args.loris
        result |= {"peak_here": max(peak, default=0), "here_after": after}
        phases = (("quiet", quiet), ("decoy", decoy), ("lurkers", crowd), ("attack", attack))
        for name, times in phases:
            result[f"{name}_p50_ms"] = 1000 * statistics.median(times) if times else math.nan
            result[f"{name}_p99_ms"] = 1000 * percentile(times, 0.99)
        return result
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="fork,thread")
    parser.add_argument("--loris", type=int, default=500)
    parser.add_argument("--line-timeout", type=float, default=5.0)
    parser.add_argument(
        "--per-address",
        type=int,
        default=PER_ADDRESS,
        help=f"connections from each address (default {PER_ADDRESS}: within the limits)",
    )
    parser.add_argument("--pings", type=int, default=100)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tls", action="store_true", help="every connection over TLS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="slowloris-") as tmp:
        args.tls = make_certificate(Path(tmp)) if args.tls else None
        return run(args)


def run(args: argparse.Namespace) -> int:
    results = []
    for mode in args.modes.split(","):
        result = run_mode(mode, args)
        results.append(result)
        print(
            f"{mode}{' over TLS' if args.tls else ''}, {args.per_address} an address: "
            f"{result['connected']}/{args.loris} connected ({result['unconnected']} never: "
            f"dropped by the kernel), {result['refused']} refused, {result['cut']} cut and "
            f"{result['told']} told, {result['left_open']} left open; first byte to cut: "
            f"median {result['median_cut_after']:.2f} s, max {result['max_cut_after']:.2f} s "
            f"(line timeout {args.line_timeout:g} s); room held {result['peak_here']} at "
            f"peak, {result['here_after']} after",
            flush=True,
        )
        p50 = {n: float(str(result[f"{n}_p50_ms"])) for n in PHASES}
        p99 = {n: float(str(result[f"{n}_p99_ms"])) for n in PHASES}
        print(
            f"{mode}: honest round trip p50 / p99 ms: "
            + ", ".join(f"{n} {p50[n]:.2f} / {p99[n]:.2f}" for n in PHASES)
            + f"; attack p99 against quiet {p99['attack'] / p99['quiet']:.2f}x, decoy "
            f"{p99['attack'] / p99['decoy']:.2f}x, lurkers {p99['attack'] / p99['lurkers']:.2f}x"
            f" (load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    print(f"load average: {os.getloadavg()[0]:.1f}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
