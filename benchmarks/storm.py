"""How long a connection storm takes: N clients connect at once, until a broadcast
reaches every one of them.

    python benchmarks/storm.py fork:1000 thread:5000 asyncio:5000 [--repeat 3]
    python benchmarks/storm.py /old/checkout@fork:1000 fork:1000

Each NAME:COUNT starts the bench's server NAME (harness.bench.servers) and opens COUNT
connections at once (in handshake batches of the load generator's size), then sends
sync broadcasts from the first client until all the others got one (`Swarm.grow`). The
figure is the wall time from the first connect to the last client holding a sync line,
so it covers accepting, starting a worker, the welcome and every join notice the
server sends on the way. ``DIR@`` runs the same server from another checkout
(DIR on PYTHONPATH): before and after in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from profile_server import summarise  # the same directory

from harness.bench.cli import raise_fd_limit
from harness.bench.loadgen import Swarm
from harness.bench.servers import RunningServer, builtin_specs, cpu_seconds

DEADLINE_S = 120.0


def storm(
    spec_name: str, count: int, pythonpath: str | None, spy_out: Path | None
) -> tuple[float, float, float]:
    """Wall time of the storm, and the CPU time over it of the server process alone
    and of all its processes (its workers, live or reaped, and fork server included)."""
    spec = builtin_specs()[spec_name]
    if pythonpath:
        spec = replace(
            spec, template=f"env -C {pythonpath} PYTHONPATH={pythonpath} {spec.template}"
        )
    with RunningServer(spec) as server, Swarm(server.host, server.port) as swarm:
        spy = None
        if spy_out is not None:
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                 str(server.pid), "--rate", "500", "--format", "raw", "--output",
                 str(spy_out), "--nonblocking", "--gil"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)  # py-spy says nothing when it has attached: give it a moment
        hub0, tree0 = cpu_seconds(server.pid)[0], server.cpu_seconds()
        start = time.perf_counter()
        done = swarm.grow(count, time.monotonic() + DEADLINE_S, spec.backlog)
        hub, tree = cpu_seconds(server.pid)[0] - hub0, server.cpu_seconds() - tree0
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
        return done - start, hub, tree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="[DIR@]SERVER:COUNT")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--py-spy", type=Path, metavar="OUT", help="sample the server into OUT")
    args = parser.parse_args()
    raise_fd_limit(max(int(run.rsplit(":", 1)[1]) for run in args.runs) + 10)
    for _ in range(args.repeat):
        for run in args.runs:
            pythonpath, _, rest = run.rpartition("@")
            name, count = rest.rsplit(":", 1)
            seconds, hub, tree = storm(name, int(count), pythonpath or None, args.py_spy)
            print(
                f"{run:28} clients at once: {seconds:.2f} s "
                f"(CPU: server process {hub:.2f} s, all its processes {tree:.2f} s)",
                flush=True,
            )
            if args.py_spy and args.py_spy.exists():
                print(summarise(args.py_spy))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
