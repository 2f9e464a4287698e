"""What TLS costs, measured against the plain server in the same run.

    python benchmarks/tls_cost.py [--mode fork|thread] [--rounds N] [--lines N]
                                  [--baseline-source DIR]

Starts the server plain and with TLS (a throwaway certificate made with openssl), and
for each measures a ping-pong round trip between two clients (p50 and p99 of --rounds
round trips) and the time for one client's --lines lines to reach another. Clients are
Python's ssl (TLS) or plain sockets, in this process. With ``--baseline-source DIR``
(a checkout of an older version) the older plain server is measured too, in the same
run, so a change to the plain path shows as a ratio. Bounded: a few thousand round
trips and lines.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WAIT = 30.0
HERE = Path(__file__).resolve().parents[1]  # this checkout


class Server:
    def __init__(self, argv: list[str], env: dict[str, str], tree: str | Path) -> None:
        # Run from the tree it is to be: `python -m` puts the working directory first on
        # the path, ahead of PYTHONPATH, so run from a checkout's root a baseline given
        # on PYTHONPATH alone would be this checkout.
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=tree,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening on "):
            self.stop()
            raise SystemExit(f"server did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def connect(port: int, context: ssl.SSLContext | None) -> tuple[socket.socket, object]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
    reader = sock.makefile("rb")
    reader.readline()  # the welcome
    return sock, reader


def measure(port: int, context: ssl.SSLContext | None, rounds: int, lines: int) -> dict[str, float]:
    a, ar = connect(port, context)
    b, br = connect(port, context)
    ar.readline()  # b joined
    times = []
    for i in range(rounds):
        t0 = time.perf_counter()
        a.sendall(b"ping %d\n" % i)
        br.readline()
        b.sendall(b"pong %d\n" % i)
        ar.readline()
        times.append(time.perf_counter() - t0)
    block = b"".join(b"line %06d of the throughput run\n" % i for i in range(lines))
    t0 = time.perf_counter()
    a.sendall(block)
    # Counted in whole chunks: the server, not this reader, should be what is measured.
    pending = br.peek() if hasattr(br, "peek") else b""
    seen = pending.count(b"\n")
    br.read(len(pending))
    while seen < lines:
        seen += b.recv(262144).count(b"\n")
    elapsed = time.perf_counter() - t0
    for sock in (a, b):
        sock.close()
    times.sort()
    return {
        "p50_ms": statistics.median(times) * 1000,
        "p99_ms": times[int(len(times) * 0.99) - 1] * 1000,
        "lines_per_s": lines / elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="fork", choices=["fork", "thread"])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--lines", type=int, default=50000)
    parser.add_argument("--baseline-source", metavar="DIR")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
        make = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"]
        make += ["ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert)]
        make += ["-days", "1", "-subj", "/CN=bench", "-addext", "subjectAltName=IP:127.0.0.1"]
        subprocess.run(make, check=True, capture_output=True)
        context = ssl.create_default_context(cafile=str(cert))
        base = [sys.executable, "-m", "chatbox.server", "0", "--host", "127.0.0.1"]
        base += ["--mode", args.mode, "--flood-lines", "0", "--flood-bytes", "0"]
        here = dict(os.environ)
        runs: list[tuple[str, list[str], dict[str, str], ssl.SSLContext | None, str | Path]] = []
        if args.baseline_source:
            old = dict(os.environ, PYTHONPATH=args.baseline_source)
            runs.append(("plain (baseline source)", base, old, None, args.baseline_source))
        runs.append(("plain", base, here, None, HERE))
        tls = [*base, "--tls-cert", str(cert), "--tls-key", str(key)]
        runs.append(("tls", tls, here, context, HERE))
        results: dict[str, dict[str, float]] = {}
        # Interleaved, so a machine that gets busier during the run hits all alike; the
        # best of the repeats, as the least disturbed.
        for _ in range(args.repeat):
            for name, argv, env, ctx, tree in runs:
                server = Server(argv, env, tree)
                try:
                    got = measure(server.port, ctx, args.rounds, args.lines)
                finally:
                    server.stop()
                best = results.setdefault(name, got)
                for key in ("p50_ms", "p99_ms"):
                    best[key] = min(best[key], got[key])
                best["lines_per_s"] = max(best["lines_per_s"], got["lines_per_s"])
    reference = results["plain"]
    print(
        f"mode {args.mode}, {args.rounds} round trips, {args.lines} lines (best of {args.repeat})"
    )
    for name, got in results.items():
        print(
            f"  {name:<24} p50 {got['p50_ms']:.3f} ms  p99 {got['p99_ms']:.3f} ms  "
            f"{got['lines_per_s']:,.0f} lines/s  "
            f"(p50 x{got['p50_ms'] / reference['p50_ms']:.2f}, "
            f"throughput x{got['lines_per_s'] / reference['lines_per_s']:.2f} of plain)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
