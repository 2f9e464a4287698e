"""Slowloris at scale: N connections, each sending one byte every 100 ms and never a
newline, against the line timeout, while an honest pair plays ping-pong.

    python benchmarks/slowloris.py [--modes fork,thread] [--loris 500] [--line-timeout 5]
                                   [--pings 100] [--tls] [--json OUT]

For each server mode a fresh server is started with ``--line-timeout`` and no idle
timeout. Two honest clients join and play ping-pong one message at a time (A says
``pN``; when B has it, B says ``qN``; the figure is A's round trip; one every 50 ms),
first alone (``quiet``, ``--pings`` round trips), then while a side process opens
``--loris`` connections, 10 from each of the addresses 127.0.2.1, 127.0.2.2, ...
(within the per-address limits: those do not stop this attack; the line timeout must),
and trickles a byte into each every 100 ms
(``attack``). It reports how many were cut and told `! disconnected: unfinished line`,
the longest time from a connection's first byte to its cut (the promise: the line
timeout plus a little), how many the room held at once, and the honest pair's p50/p99
in both phases. ``--tls``: the server, the pair and every loris speak TLS (a
certificate made with openssl for the run), each byte its own TLS record.

Bounded: the attack ends when every connection is cut or after 3 x the line timeout +
30 s, and the attack's ping-pong with it; each server
and the side process are ended by pid and reaped.
"""

from __future__ import annotations

import argparse
import json
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

# argv: port, count, per address, line timeout, CA file or "", the checkout. Prints
# "going" once every connection is open and has its first byte, then one JSON line when
# all are cut (or its deadline).
LORIS = r"""
import json, signal, socket, sys, time
port, count, per = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
line_timeout, ca = float(sys.argv[4]), sys.argv[5]
sys.path.insert(0, sys.argv[6])
from harness.drain import read_ready
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
context = None
if ca:
    import ssl
    context = ssl.create_default_context(cafile=ca)
socks, first, heard = [], {}, {}
for i in range(count):
    s = socket.socket()
    s.bind((f"127.0.2.{i // per + 1}", 0))
    s.connect(("127.0.0.1", port))
    if context is not None:
        s = context.wrap_socket(s, server_hostname="127.0.0.1")
    s.setblocking(False)
    socks.append(s)
for s in socks:
    s.send(b"x")
    first[s] = time.monotonic()
    heard[s] = bytearray()
print("going", flush=True)
open_, cut_after = set(socks), []
deadline = time.monotonic() + 3 * line_timeout + 30
next_byte = time.monotonic() + 0.1
while open_ and not stop and time.monotonic() < deadline:
    for s, data in read_ready(open_, max(0.0, next_byte - time.monotonic())).items():
        heard[s] += data
        if s not in open_:
            cut_after.append(time.monotonic() - first[s])
    if time.monotonic() >= next_byte:
        next_byte += 0.1
        for s in open_:
            try:
                s.send(b"x")
            except OSError:
                pass
notice = b"! disconnected: unfinished line"
told = sum(bytes(h).rstrip(b"\n").endswith(notice) for h in heard.values())
cut_after.sort()
median = cut_after[len(cut_after) // 2] if cut_after else float("nan")
print(json.dumps({"cut": len(cut_after), "told": told, "left_open": len(open_),
                  "max_cut_after": max(cut_after, default=float("nan")),
                  "median_cut_after": median}), flush=True)
for s in socks:
    s.close()
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
        side_args = [str(port), str(args.loris), str(PER_ADDRESS), str(args.line_timeout), ca]
        side_args.append(str(CHECKOUT))
        loris = start_side(LORIS, side_args)
        attack: list[float] = []
        peak = 0
        try:
            # Until the side process has seen every connection cut (or its deadline).
            while loris.poll() is None:
                attack.append(pair.round_trip())
                if len(attack) % 20 == 1:
                    peak = max(peak, pair.here())
                time.sleep(PACE)
        finally:
            report = json.loads(end_side(loris).strip().splitlines()[-1])
        after = pair.here()
        pair.round_trip()  # still chatting
        pair.close()
        result: dict[str, object] = {"mode": mode, "tls": context is not None, **report}
        result["loris"] = args.loris
        result |= {"peak_here": peak, "here_after": after}
        result |= {
            "quiet_p50_ms": 1000 * statistics.median(quiet),
            "quiet_p99_ms": 1000 * percentile(quiet, 0.99),
            "attack_p50_ms": 1000 * statistics.median(attack) if attack else float("nan"),
            "attack_p99_ms": 1000 * percentile(attack, 0.99),
        }
        return result
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="fork,thread")
    parser.add_argument("--loris", type=int, default=500)
    parser.add_argument("--line-timeout", type=float, default=5.0)
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
            f"{mode}{' over TLS' if args.tls else ''}: {result['cut']}/{args.loris} cut, "
            f"{result['told']} told, "
            f"{result['left_open']} left open; first byte to cut: median "
            f"{result['median_cut_after']:.2f} s, max {result['max_cut_after']:.2f} s "
            f"(line timeout {args.line_timeout:g} s); room held {result['peak_here']} at "
            f"peak, {result['here_after']} after; honest round trip p50 "
            f"{result['quiet_p50_ms']:.2f} -> {result['attack_p50_ms']:.2f} ms, p99 "
            f"{result['quiet_p99_ms']:.2f} -> {result['attack_p99_ms']:.2f} ms",
            flush=True,
        )
    print(f"load average: {os.getloadavg()[0]:.1f}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
