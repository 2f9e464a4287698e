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

Besides the server's CPU it reports the load generator's own (this process: if it
were the bottleneck, the figure would measure the client, not the server), and it
checks what a member already in the room heard: a watcher joins before the storm and
must hear of every one of the N joiners exactly once, in a few coalesced notices. A
run where it did not is marked INVALID.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from profile_server import summarise  # the same directory

from chatbox import protocol
from chatbox.server.forkserver import FORK_SERVER_COMM
from harness.bench.cli import raise_fd_limit
from harness.bench.cpu import descendants, process_cpu_seconds
from harness.bench.loadgen import Swarm
from harness.bench.servers import RunningServer, builtin_specs, cpu_seconds

DEADLINE_S = 120.0
CHECKED = ("fork", "thread")  # servers whose join notices the watcher checks
END = b"storm-end"  # sent once all are in: what the watcher reads up to


class Watcher:
    """A member in the room before the storm: what it hears of the joiners."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.data = b""
        self._read_until(b"* welcome")

    def _read_until(self, needle: bytes) -> None:
        while needle not in self.data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the watcher's connection")
            self.data += chunk

    def heard(self, joiners: int) -> tuple[int, str]:
        """(join notices, verdict) once `END` from the storm's first client (guest2)
        reached it: every join came before, so every notice of one did."""
        self._read_until(b"<guest2> " + END)
        text = self.data[: self.data.index(b"<guest2> " + END)].decode("utf-8", "replace")
        names: list[str] = []
        counted = notices = 0
        for line in text.splitlines():
            match = protocol.JOINED_LINE.match(line)
            if match:
                listed, others = protocol.notice_names(match)
                names += listed
                counted += others
                notices += 1
        if len(set(names)) != len(names):
            return notices, "INVALID: a joiner was announced twice"
        if len(names) + counted != joiners:
            return notices, f"INVALID: {len(names) + counted} of {joiners} joiners announced"
        return notices, "ok"

    def close(self) -> None:
        self.sock.close()


@dataclass
class Result:
    seconds: float
    # When the last client had heard anything from the server (its welcome): the
    # server had it in the room by then. ``seconds`` is later by the wait for the next
    # sync broadcast (up to the load generator's SYNC_WAIT_MAX) and that broadcast.
    welcomed: float
    hub: float  # CPU of the server process alone
    tree: float  # CPU of all its processes (workers live or reaped, fork server)
    forker: float  # CPU of its fork server alone (0 where it has none)
    loadgen: float  # CPU of this process, the load generator
    notices: int  # join notices the watcher heard
    verdict: str


def storm(spec_name: str, count: int, pythonpath: str | None, spy_out: Path | None) -> Result:
    """One storm of ``count`` clients on a fresh server."""
    spec = builtin_specs()[spec_name]
    if pythonpath:
        spec = replace(
            spec, template=f"env -C {pythonpath} PYTHONPATH={pythonpath} {spec.template}"
        )
    with RunningServer(spec) as server, Swarm(server.host, server.port) as swarm:
        # Only this project's server names its guests and coalesces their notices.
        watcher = Watcher(server.host, server.port) if spec_name in CHECKED else None
        try:
            spy = None
            if spy_out is not None:
                spy = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                     str(server.pid), "--rate", "500", "--format", "raw", "--output",
                     str(spy_out), "--nonblocking", "--gil"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(1.0)  # py-spy says nothing when it has attached: give it a moment
            forker = _fork_server(server.pid)
            hub0, tree0 = cpu_seconds(server.pid)[0], server.cpu_seconds()
            forker0 = (process_cpu_seconds(forker) or 0.0) if forker else 0.0
            own0 = _own_cpu()
            start = time.perf_counter()
            done = swarm.grow(count, time.monotonic() + DEADLINE_S, spec.backlog)
            hub, tree = cpu_seconds(server.pid)[0] - hub0, server.cpu_seconds() - tree0
            forker_cpu = (process_cpu_seconds(forker) or 0.0) - forker0 if forker else 0.0
            loadgen = _own_cpu() - own0
            swarm.send_now(swarm.clients[0], END + b"\n")
            swarm.pump(lambda: not swarm.sending, time.monotonic() + DEADLINE_S)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(30)
            notices, verdict = watcher.heard(count) if watcher else (0, "not checked")
        finally:
            if watcher:
                watcher.close()
        welcomed = max(c.first_at or done for c in swarm.clients) - start
        return Result(done - start, welcomed, hub, tree, forker_cpu, loadgen, notices, verdict)


def _fork_server(hub: int) -> int:
    """The hub's fork server (fork mode), or 0."""
    for pid in descendants([hub])[1:]:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as comm:
            if comm.read().strip() == FORK_SERVER_COMM:
                return pid
    return 0


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
            result = storm(name, int(count), pythonpath or None, args.py_spy)
            forking = ""
            if result.forker:
                workers = result.tree - result.hub - result.forker
                forking = (
                    f" - per worker: {1e3 * result.forker / int(count):.2f} ms in the fork "
                    f"server, {1e3 * workers / int(count):.2f} ms in the worker"
                )
            print(
                f"{run:28} clients at once: {result.seconds:.2f} s "
                f"(the last welcomed at {result.welcomed:.2f} s; CPU: server process "
                f"{result.hub:.2f} s, all its processes "
                f"{result.tree:.2f} s{forking}, load generator {result.loadgen:.2f} s; "
                f"{result.notices} join notices to a member; {result.verdict}; "
                f"load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
            if args.py_spy and args.py_spy.exists():
                print(summarise(args.py_spy))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
