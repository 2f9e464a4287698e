"""Connection churn: what one address opening and resetting connections as fast as it
can costs everyone else, with the per-address limits on and off, in one run.

    python benchmarks/churn.py [--modes fork,thread] [--settings limits,no-limits]
                               [--chatters 10] [--pings 300] [--seconds 12] [--repeat 3]
                               [--alternate 1] [--churner blocking|nonblocking]
                               [--churner-nice N] [--source LABEL=DIR ...] [--json OUT]

For each checkout (this one, and each ``--source``), server mode and setting
(``limits``: the defaults, ``no-limits``: ``--max-per-ip 0 --connect-rate 0``, how the
server behaved before admission), a fresh server is started and ``--chatters`` honest
clients join, each from an address of its own (127.0.1.1, 127.0.1.2, ...). They play
ping-pong one message at a time (A says ``pN``; when B has it, B says ``qN``; the
figure is A's round trip) beside a side process: first a hog (it only spins: the
churner is a busy process too, and on a small machine that alone costs the others),
then a ``decoy`` (the churner below, aimed at a port of this benchmark's own whose
kernel filter drops every SYN it sends: what its own traffic costs the machine, the
server not involved), then a churner from 127.0.0.2 that opens and resets (SO_LINGER 0)
connections to the server as fast as it can (``blocking``: each connect waits for its
handshake; ``nonblocking``: each attempt is sent off and reset at once, as a SYN flood
does). Each side process runs in
``--alternate`` pairs of windows: stopped (SIGSTOP: ``quiet``), then running (``hog`` or
``churn``), so the two windows of a pair are seconds apart and see about the same load
from the rest of the machine. It prints p50/p99 per phase, pooled, and the churn/quiet
ratios (the goal: within 2x with limits on), each pair's p99 ratio, how many
connections a second the churner made, and the CPU each part took (in cores, from
/proc/PID/stat: the hub, its workers, this benchmark's chatters, the side process, the
machine) with the load average of each window.

Bounded: each window ends after ``--pings`` round trips or ``--seconds``, whichever comes
first; each side process ends itself at its deadline and is ended by its pid regardless;
each server is stopped and reaped.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from room_load import HOG, percentile, start_server

from chatbox.server.synfilter import SynFilter
from harness.daemon import Daemon, Readiness

CHATTER_NETWORK = "127.0.1."  # chatter i comes from 127.0.1.(i + 1): one address each
CHURNER_ADDRESS = "127.0.0.2"
SETTINGS = {"limits": (), "no-limits": ("--max-per-ip", "0", "--connect-rate", "0")}
PING_TIMEOUT = 10.0  # one round trip longer than this ends the phase: the room stalled
MAX_CHURN = 200_000  # connections one churner makes at most

# Says "going" after its first connection, and its counts when SIGTERM (or its own
# deadline, or its count) stops it.
CHURNER = """
import signal, socket, struct, sys, time
port, source, until, limit = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
waits = sys.argv[5] == "blocking"  # else each attempt is sent off and reset at once
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
linger = struct.pack("ii", 1, 0)
made = failed = 0
start = time.monotonic()
while not stop and made + failed < limit and time.monotonic() < until:
    sock = socket.socket()
    try:
        sock.bind((source, 0))
        if waits:
            sock.connect(("127.0.0.1", port))
        else:
            sock.setblocking(False)
            if sock.connect_ex(("127.0.0.1", port)) not in (0, 115):  # EINPROGRESS
                raise OSError
        made += 1
        if made == 1:
            print("going", flush=True)
    except OSError:
        failed += 1
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    sock.close()
if not made:
    print("going", flush=True)
print(made, failed, time.monotonic() - start, flush=True)
"""


TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[bytes]:
    """The fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()


def _ticks(pid: int) -> int:
    """User plus system CPU of a process (all its threads), in clock ticks; 0 if gone."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _tree(root: int) -> list[int]:
    """``root``'s descendants (fork server, workers), from /proc's parent links."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parents[int(entry)] = int(_stat(int(entry))[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _machine() -> tuple[int, int]:
    """(busy ticks of all cores, ticks spent in softirq), from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle, fields[6]


class CpuMeter:
    """Who used the CPU during a phase, in cores (CPU seconds per wall second): the hub
    (the server process), its workers and fork server, this benchmark (the honest
    chatters), the side process (hog or churner), and the whole machine."""

    def __init__(self, server_pid: int, side_pid: int | None) -> None:
        self.server_pid, self.side_pid = server_pid, side_pid
        self.started = time.monotonic()
        self.before = self._sample()

    def _sample(self) -> dict[str, int]:
        busy, softirq = _machine()
        return {
            "hub": _ticks(self.server_pid),
            "workers": sum(_ticks(pid) for pid in _tree(self.server_pid)),
            "bench": _ticks(os.getpid()),
            "side": _ticks(self.side_pid) if self.side_pid else 0,
            "machine": busy,
            "softirq": softirq,
        }

    def stop(self) -> dict[str, float]:
        """Cores per part since the start, and the 1-minute load average at the end."""
        after = self._sample()
        elapsed = max(time.monotonic() - self.started, 1e-9)
        shares = {k: max(0, after[k] - self.before[k]) / TICK / elapsed for k in after}
        shares["load"] = os.getloadavg()[0]
        return shares


@dataclass
class Phase:
    """One phase's round trips (seconds), pooled over the rounds of a run."""

    source: str  # which checkout's server
    mode: str
    setting: str
    phase: str
    rtts: list[float] = field(default_factory=list)
    churn_per_s: list[float] = field(default_factory=list)  # one figure a round
    stalled: int = 0  # rounds in which a round trip took over PING_TIMEOUT
    cpu: list[dict[str, float]] = field(default_factory=list)  # CpuMeter's, one a round
    round_p99: list[float] = field(default_factory=list)  # each window's own p99
    # A hog or churn window's p99 over that of the quiet window just before it.
    pair_ratio: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "source": self.source,
            "mode": self.mode,
            "setting": self.setting,
            "phase": self.phase,
            "pings": len(self.rtts),
            "p50_ms": round(self.p50 * 1000, 3),
            "p99_ms": round(self.p99 * 1000, 3),
            "round_p99_ms": [round(v * 1000, 3) for v in self.round_p99],
            "churn_per_s": round(statistics.median(self.churn_per_s)) if self.churn_per_s else 0,
            "stalled_rounds": self.stalled,
            "pair_p99_ratios": [round(r, 3) for r in self.pair_ratio],
            "cpu_cores": {k: round(statistics.median(c[k] for c in self.cpu), 3)
                          for k in (self.cpu[0] if self.cpu else {})},
        }  # fmt: skip

    def merge(self, other: Phase) -> None:
        self.rtts += other.rtts
        self.churn_per_s += other.churn_per_s
        self.stalled += other.stalled
        self.cpu += other.cpu
        self.round_p99 += other.round_p99
        self.pair_ratio += other.pair_ratio

    @property
    def p50(self) -> float:
        return percentile(self.rtts, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.rtts, 0.99)


class Chatters:
    """Honest clients in one selector loop, reading everything that reaches them."""

    def __init__(self, port: int, count: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.inbox: dict[socket.socket, bytearray] = {}
        for index in range(count):
            source = f"{CHATTER_NETWORK}{index % 250 + 1}"
            sock = socket.create_connection(
                ("127.0.0.1", port), timeout=PING_TIMEOUT, source_address=(source, 0)
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socks.append(sock)
            self.inbox[sock] = bytearray()
            self.wait_for(sock, b"* welcome", time.monotonic() + PING_TIMEOUT)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)

    def wait_for(self, sock: socket.socket, token: bytes, deadline: float) -> bool:
        """Read everyone's input until ``token`` is in ``sock``'s; whether it came in time."""
        box = self.inbox[sock]
        while token not in box:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if sock.getblocking():
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed a chatter")
                box += data
                continue
            for key, _ in self.selector.select(left):
                peer: socket.socket = key.fileobj  # type: ignore[assignment]
                with contextlib.suppress(BlockingIOError):
                    data = peer.recv(65536)
                    if not data:
                        raise ConnectionError("the server closed a chatter")
                    self.inbox[peer] += data
        at = box.index(token) + len(token)
        del box[:at]
        return True

    def ping_pong(self, first: int, pings: int, seconds: float) -> tuple[list[float], bool]:
        """Round trips in seconds, and whether one took longer than PING_TIMEOUT."""
        rtts: list[float] = []
        end = time.monotonic() + seconds
        count = len(self.socks)
        for n in range(first, first + pings):
            if time.monotonic() >= end:
                break
            a, b = self.socks[n % count], self.socks[(n + 1) % count]
            start = time.perf_counter()
            deadline = time.monotonic() + PING_TIMEOUT
            a.sendall(b"p%d\n" % n)
            if not self.wait_for(b, b"> p%d\n" % n, deadline):
                return rtts, True
            b.sendall(b"q%d\n" % n)
            if not self.wait_for(a, b"> q%d\n" % n, deadline):
                return rtts, True
            rtts.append(time.perf_counter() - start)
        return rtts, False

    def close(self) -> None:
        self.selector.close()
        for sock in self.socks:
            sock.close()


# Runs the server of another checkout (argv[1]), whatever this one's environment says.
RUN_FROM = (
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
    "runpy.run_module('chatbox.server', run_name='__main__', alter_sys=True)"
)


def start_server_from(source: str | None, mode: str, extra: tuple[str, ...]) -> Daemon:
    """This checkout's server (``source`` None), or the one in the directory ``source``."""
    if source is None:
        return start_server(mode, extra)
    argv = [sys.executable, "-c", RUN_FROM, source, "0", "--host", "127.0.0.1"]
    daemon = Daemon(f"server-{mode}", [*argv, "--mode", mode, *extra])
    daemon.start()
    daemon.wait_ready(Readiness("line"), 0, lambda _: False, time.monotonic() + 30)
    return daemon


def run_setting(
    source: tuple[str, str | None], mode: str, setting: str, args: argparse.Namespace
) -> list[Phase]:
    label = source[0]
    daemon = start_server_from(source[1], mode, SETTINGS[setting])
    assert daemon.announced is not None
    port = daemon.announced[1]
    results: list[Phase] = []
    chatters = Chatters(port, args.chatters)
    # The decoy: the same churner aimed at a port of this process's whose kernel filter
    # drops all its SYNs. What it costs the chatters is what the churner's own traffic
    # costs this machine, with the server not involved at all.
    decoy = socket.socket()
    decoy.bind(("127.0.0.1", 0))
    decoy.listen(16)
    SynFilter(decoy).drop([(4, int(ipaddress.IPv4Address(CHURNER_ADDRESS)))])
    nice = ["nice", "-n", str(args.churner_nice)] if args.churner_nice else []
    try:
        chatters.ping_pong(0, 20, args.seconds)  # warm up: every worker has run once
        # The churner is a busy process too: on a small machine that alone costs the
        # others latency. A process that only spins tells that cost apart.
        sides = [
            ("hog", [*nice, sys.executable, "-c", HOG]),
            ("decoy", [*nice, sys.executable, "-c", CHURNER, str(decoy.getsockname()[1]),
                       CHURNER_ADDRESS]),
            ("churn", [*nice, sys.executable, "-c", CHURNER, str(port), CHURNER_ADDRESS]),
        ]  # fmt: skip
        first = 1000
        for name, argv in sides:
            # Its own deadline (argv[1] of the hog, argv[3] of the churner): past all its
            # windows, so it runs in each of them.
            until = str(time.monotonic() + 2 * args.alternate * args.seconds + 10)
            argv = [*argv, until, *([str(MAX_CHURN), args.churner] if name != "hog" else [])]
            side = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
            try:
                assert side.stdout is not None
                side.stdout.readline()  # "going": the churner's first connection is made
                labels = (label, mode, setting)
                results += _alternate(chatters, daemon.pid, side.pid, name, first, args, labels)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(side.pid, signal.SIGCONT)
                    os.kill(side.pid, signal.SIGTERM)
                out, _ = side.communicate(timeout=30)
            if name != "hog" and out.strip():
                made, _, elapsed = out.split()[-3:]
                results[-1].churn_per_s.append(int(made) / max(float(elapsed), 1e-9))
            first += 2 * args.alternate * args.pings
    finally:
        chatters.close()
        decoy.close()
        daemon.stop()
    return results


def _alternate(
    chatters: Chatters,
    server_pid: int,
    side_pid: int,
    name: str,
    first: int,
    args: argparse.Namespace,
    labels: tuple[str, str, str],
) -> list[Phase]:
    """``--alternate`` pairs of windows: the side process stopped (SIGSTOP: ``quiet``),
    then running (``name``). A pair is seconds apart, so the load the rest of the
    machine puts on it is about the same in both windows."""
    quiet = Phase(*labels, "quiet")
    busy = Phase(*labels, name)
    n = first
    for _ in range(args.alternate):
        windows = []
        for signum, phase in ((signal.SIGSTOP, "quiet"), (signal.SIGCONT, name)):
            os.kill(side_pid, signum)
            meter = CpuMeter(server_pid, side_pid)
            rtts, stalled = chatters.ping_pong(n, args.pings, args.seconds)
            n += args.pings
            windows.append(_phase(*labels, phase, rtts, stalled, meter.stop()))
        windows[1].pair_ratio = [windows[1].p99 / max(windows[0].p99, 1e-9)]
        quiet.merge(windows[0])
        busy.merge(windows[1])
    return [quiet, busy]


def _phase(
    source: str,
    mode: str,
    setting: str,
    name: str,
    rtts: list[float],
    stalled: bool,
    cpu: dict[str, float],
) -> Phase:
    return Phase(
        source, mode, setting, name, rtts, stalled=int(stalled), cpu=[cpu],
        round_p99=[percentile(rtts, 0.99)],
    )  # fmt: skip


def _source(text: str) -> tuple[str, str | None]:
    label, _, directory = text.partition("=")
    if not label or not directory or not Path(directory, "chatbox", "server").is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not LABEL=DIR of a chatbox checkout")
    return label, str(Path(directory).resolve())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="fork,thread")
    parser.add_argument("--settings", default="limits,no-limits")
    parser.add_argument("--chatters", type=int, default=10)
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument(
        "--churner-nice",
        type=int,
        default=0,
        help="run the churner (and the hog) at this nice level: on a small machine the "
        "churner's own CPU, not the server's work, is then out of the honest clients' way",
    )
    parser.add_argument(
        "--churner",
        choices=("blocking", "nonblocking"),
        default="blocking",
        help="blocking: each connect waits for its handshake (a dropped one for the "
        "kernel's retries); nonblocking: each attempt is sent off and reset at once, "
        "never waiting, as a SYN flood does (its 'connections' are attempts)",
    )
    parser.add_argument(
        "--source",
        type=_source,
        action="append",
        metavar="LABEL=DIR",
        help="also run the server of the checkout in DIR (an older one, say), interleaved "
        "with this one's in every round; repeatable",
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds, pooled (default 3)")
    parser.add_argument(
        "--alternate",
        type=int,
        default=1,
        help="pairs of windows (quiet, then hog or churn) per server and round (default 1)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sources: list[tuple[str, str | None]] = [("this", None), *(args.source or [])]
    pooled: dict[tuple[str, str, str, str], Phase] = {}
    # Rounds interleave the checkouts, servers and settings, so a burst of load from
    # elsewhere on the machine falls on all of them alike.
    for _ in range(args.repeat):
        for source in sources:
            for mode in args.modes.split(","):
                for setting in args.settings.split(","):
                    for phase in run_setting(source, mode, setting, args):
                        key = (phase.source, phase.mode, phase.setting, phase.phase)
                        if key not in pooled:
                            pooled[key] = phase
                        else:
                            pooled[key].merge(phase)
    print(f"{'source':8} {'mode':7} {'setting':10} {'phase':6} {'pings':>5} {'p50 ms':>8}"
          f" {'p99 ms':>8} {'churn/s':>8}  p50 / p99 against quiet; against decoy")  # fmt: skip
    for (label, mode, setting, name), p in pooled.items():
        ratio = ""
        if name != "quiet":
            q = pooled[(label, mode, setting, "quiet")]
            ratio = f"{p.p50 / q.p50:6.2f}x / {p.p99 / q.p99:6.2f}x"
        if name == "churn":
            h = pooled[(label, mode, setting, "decoy")]
            ratio += f";  {p.p50 / h.p50:6.2f}x / {p.p99 / h.p99:6.2f}x"
            if setting == "limits":
                goal = p.p99 <= 2 * q.p99 and not p.stalled
                ratio += "  goal (p99 <= 2x quiet): " + ("PASS" if goal else "MISS")
        row = p.summary()
        note = f" STALLED in {p.stalled} rounds" if p.stalled else ""
        print(
            f"{label:8} {mode:7} {setting:10} {name:6} {row['pings']:5d} {row['p50_ms']:8.3f} "
            f"{row['p99_ms']:8.3f} {row['churn_per_s']:8d}  {ratio}{note}"
        )
    print("\nCPU in cores (median over windows) and each window's p99 (ms) @ load average:")
    for (label, mode, setting, name), p in pooled.items():
        cores = p.summary()["cpu_cores"]
        assert isinstance(cores, dict)
        parts = " ".join(f"{k} {cores[k]:.2f}" for k in cores if k != "load")
        rounds = ", ".join(
            f"{v * 1000:.1f}@{c['load']:.0f}" for v, c in zip(p.round_p99, p.cpu, strict=True)
        )
        print(f"{label:8} {mode:7} {setting:10} {name:6} {parts}  p99@load: {rounds}")
    print("\np99 of each hog or churn window over that of the quiet window just before it")
    print("(seconds apart, so the rest of the machine's load is about the same in both):")
    for (label, mode, setting, name), p in pooled.items():
        if not p.pair_ratio:
            continue
        listed = " ".join(f"{r:.2f}" for r in p.pair_ratio)
        median = statistics.median(p.pair_ratio)
        within = sum(r <= 2.0 for r in p.pair_ratio)
        print(f"{label:8} {mode:7} {setting:10} {name:6} median {median:5.2f}x, "
              f"{within}/{len(p.pair_ratio)} within 2x: {listed}")  # fmt: skip
    if args.json:
        summaries = [p.summary() for p in pooled.values()]
        args.json.write_text(json.dumps(summaries, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
