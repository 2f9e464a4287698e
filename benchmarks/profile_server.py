"""Where a server spends its time per relayed line: CPU accounting plus py-spy stacks.

    python benchmarks/profile_server.py fork fanout10 [--py-spy OUT.txt]

Starts the named server (as the bench does), runs one workload at full size, and reads
the CPU time (user + system, from /proc/PID/stat) of the server process and of every
worker process before and after, so the cost per line is known for the hub and for the
workers separately. With ``--py-spy`` it also samples the server process (the hub; in
thread mode only the thread holding the GIL) with py-spy and prints the functions
that hold most samples.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatbox.server.forkserver import FORK_SERVER_COMM
from harness.bench.servers import RunningServer, builtin_specs, cpu_seconds, prepare
from harness.bench.workloads import Sizes, run_on


def wait_workers_reaped(server: RunningServer, deadline: float) -> None:
    # No event tells us the last worker was reaped: poll, bounded. A forking server
    # keeps its fork server (a child of the hub) to the end.
    def workers() -> list[int]:
        return [pid for pid in server.pids()[1:] if _comm(pid) != FORK_SERVER_COMM]

    while workers() and time.monotonic() < deadline:
        time.sleep(0.05)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def summarise(raw: Path, top: int = 15) -> str:
    """The leaf functions and the inclusive functions with most samples, from py-spy's
    raw (collapsed stacks) output."""
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for row in raw.read_text().splitlines():
        stack, _, count = row.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] for f in stack.split(";")]
        if frames:
            leaf[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples", "self (leaf) samples:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in leaf.most_common(top)]
    lines.append("inclusive samples:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("server", choices=sorted(builtin_specs()))
    parser.add_argument("workload")
    parser.add_argument("--py-spy", type=Path, metavar="OUT", help="sample with py-spy into OUT")
    parser.add_argument("--ramp", type=int, help="ramp target for the connections workload")
    parser.add_argument("--lines", type=int, help="lines per client in duplex and fan-out")
    parser.add_argument("--rounds", type=int, help="round trips measured in ping-pong")
    parser.add_argument(
        "--subprocesses", action="store_true", help="sample the workers too (fork mode)"
    )
    args = parser.parse_args()
    # The C reference is built in here; the folder goes when the run ends.
    with tempfile.TemporaryDirectory(prefix="chatbox-profile-") as build:
        return profile(args, Path(build))


def profile(args: argparse.Namespace, build: Path) -> int:
    spec, why = prepare(builtin_specs()[args.server], build)
    if why:
        print(f"{args.server}: {why}", file=sys.stderr)
        return 1
    sizes = Sizes(ramp=args.ramp)
    if args.lines:
        sizes = Sizes(
            ramp=args.ramp,
            duplex_lines=args.lines,
            fanout10_lines=args.lines,
            fanout100_lines=args.lines,
        )
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    with RunningServer(spec) as server:
        hub_own0, _ = cpu_seconds(server.pid)
        tree0 = server.cpu_seconds()
        spy = None
        if args.py_spy:
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(server.pid), "--rate", "500", "--format",
                 "raw", "--output", str(args.py_spy), "--nonblocking", "--gil"]
                + (["--subprocesses"] if args.subprocesses else []),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
        result = run_on(args.workload, server, sizes)
        wait_workers_reaped(server, time.monotonic() + 10)
        hub_own1, _ = cpu_seconds(server.pid)
        tree1 = server.cpu_seconds()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
    hub = hub_own1 - hub_own0
    # Everything else the server's processes used: its workers (and fork server).
    workers = (tree1 - tree0) - hub
    lines_in = result.get("clients", 0) * result.get("lines_per_client", 0)
    delivered = result.get("deliveries", 0)
    if args.workload == "pingpong":
        # Each round trip is two relayed lines, each delivered once (warm-up included:
        # the CPU here is the whole workload's).
        lines_in = delivered = 2 * (result.get("rounds", 0) + Sizes().warmup)
    print(
        f"{args.server} {args.workload}: valid={result.get('valid')} "
        f"deliveries/s={result.get('deliveries_per_s')} seconds={result.get('seconds_measured')}"
    )
    print(
        f"  CPU: server process {hub:.2f} s, worker processes {workers:.2f} s"
        " (thread mode: all in the server process)"
    )
    if delivered:
        print(
            f"  per line received: server process {1e6 * hub / lines_in:.2f} us, "
            f"workers {1e6 * workers / lines_in:.2f} us"
        )
        print(
            f"  per delivery:      server process {1e6 * hub / delivered:.3f} us, "
            f"workers {1e6 * workers / delivered:.3f} us"
        )
    if args.py_spy and args.py_spy.exists():
        print(summarise(args.py_spy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
