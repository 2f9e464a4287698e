"""One abuser: what a flooder and a stopped reader cost 20 honest chatters, in one run.

    python benchmarks/abuse.py [--modes fork,thread] [--chatters 20] [--rate 1]
                               [--seconds 15] [--repeat 3] [--server-args "..."]
                               [--json OUT]

For each server mode and round a fresh server is started and ``--chatters`` honest
clients join, each from an address of its own (127.0.1.1, 127.0.1.2, ...). Each says a
line ``--rate`` times a second, in turn (a human-ish room: 20 lines a second in all),
and reads everything that reaches it; the figure is each line's latency, from its send
to its arrival at every other chatter. Three phases, one after the other:

- ``quiet``: the honest chatters alone;
- ``hog``: beside a process that only spins (the flooder is a busy process too, and on
  a small machine its CPU alone costs the others latency);
- ``abuse``: beside a flooder (127.0.0.3, writing lines as fast as it can, reading and
  dropping what it gets, reconnecting when it is cut off) and a stopped reader
  (127.0.0.4: joins, never reads again; when it is cut off another one joins).

It prints p50/p99 per phase and the abuse/quiet and abuse/hog ratios (the goal: abuse
p99 within 2x of quiet, and no honest chatter cut off), whether an honest chatter was
cut off (a ``! disconnected`` line, a ``left (...)`` notice naming it, or its
connection ending), and what happened to the abusers: how many lines the flooder got
out, how often it was disconnected with ``! disconnected: flooding``, how often the
stopped reader was cut off as too slow.

Bounded: each phase lasts ``--seconds``; the flooder and the hog end themselves at a
deadline and are ended by their pid regardless; every socket is closed and each server
stopped and reaped.
"""

from __future__ import annotations

import argparse
import json
import re
import selectors
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from room_load import HOG, end_side, percentile, start_server, start_side

CHATTER_NETWORK = "127.0.1."  # chatter i comes from 127.0.1.(i + 1): one address each
FLOODER_ADDRESS = "127.0.0.3"
STOPPED_ADDRESS = "127.0.0.4"
CONNECT_TIMEOUT = 10.0
DRAIN_TIMEOUT = 10.0  # after a phase, how long its last lines may take to arrive
WARM_UP_S = 1.0
MAX_STOPPED = 50  # stopped readers one phase opens at most
MAX_FLOOD_CONNECTIONS = 200  # connections one flooder makes at most

# An honest line's text is ``~latN~``: its number, unique in the run, which nothing else
# in the room says. These are the notices that tell someone was cut off.
NOTICE = re.compile(rb"^\* (guest\d+) left \(([^)\n]*)\)|^! disconnected[^\n]*", re.MULTILINE)

# Writes 60-byte lines as fast as the server takes them and drops whatever it reads;
# when the server ends its connection it connects again (until its deadline). Prints
# "going" once it first joined, and on SIGTERM or at its deadline one JSON line.
FLOODER = """
import json, selectors, signal, socket, sys, time
port, source, until, limit = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
block = b"f" * 59 + b"\\n"
block *= 1000
sent = connections = flooding = other_ends = refused = 0
lifetimes = []
going = False
while not stop and time.monotonic() < until and connections < limit:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    except OSError:
        refused += 1
        time.sleep(0.1)
        continue
    connections += 1
    joined = time.monotonic()
    if not going:
        print("going", flush=True)
        going = True
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    tail = b""
    ended = False
    while not stop and not ended and time.monotonic() < until:
        for key, events in selector.select(0.2):
            if events & selectors.EVENT_READ:
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    ended = True
                    break
                if data:
                    tail = (tail + data)[-200:]
                    if b"! disconnected: flooding" in tail:
                        flooding += 1
                        ended = True
                        break
            if events & selectors.EVENT_WRITE:
                try:
                    sent += sock.send(block)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    ended = True
                    break
    if ended:
        lifetimes.append(round(time.monotonic() - joined, 2))
        if b"! disconnected: flooding" not in tail:
            other_ends += 1
    selector.close()
    sock.close()
if not going:
    print("going", flush=True)
print(json.dumps({"lines": sent // 60, "connections": connections, "flooding": flooding,
                  "other_ends": other_ends, "refused": refused, "lifetimes_s": lifetimes}),
      flush=True)
"""


@dataclass
class Phase:
    """One phase's latencies (seconds) and incidents, pooled over the rounds of a run."""

    mode: str
    phase: str
    latencies: list[float] = field(default_factory=list)
    lines: int = 0  # honest lines said
    missing: int = 0  # honest (line, receiver) pairs never delivered
    cut_off: list[str] = field(default_factory=list)  # what an honest chatter was told
    flooder: list[dict[str, object]] = field(default_factory=list)  # one a round
    stopped_cut: int = 0  # stopped readers the server cut off
    stopped_opened: int = 0
    flood_seen: int = 0  # flooder's lines that reached the first honest chatter
    seconds: float = 0.0

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)

    def merge(self, other: Phase) -> None:
        self.latencies += other.latencies
        self.lines += other.lines
        self.missing += other.missing
        self.cut_off += other.cut_off
        self.flooder += other.flooder
        self.stopped_cut += other.stopped_cut
        self.stopped_opened += other.stopped_opened
        self.flood_seen += other.flood_seen
        self.seconds += other.seconds

    def summary(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "phase": self.phase,
            "lines": self.lines,
            "samples": len(self.latencies),
            "p50_ms": round(self.p50 * 1000, 3),
            "p99_ms": round(self.p99 * 1000, 3),
            "missing": self.missing,
            "honest_cut_off": self.cut_off,
            "stopped_readers": self.stopped_opened,
            "stopped_readers_cut": self.stopped_cut,
            "flooder": self.flooder,
            "flood_lines_relayed": self.flood_seen,
            "seconds": round(self.seconds, 2),
        }


class Room:
    """The honest chatters (and the stopped readers) in one selector loop."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.chatters: list[socket.socket] = []
        self.names: dict[socket.socket, str] = {}
        self.tails: dict[socket.socket, bytes] = {}
        self.sent: dict[int, float] = {}  # line number -> when it was said
        self.pending: dict[int, int] = {}  # line number -> receivers still to get it
        self.seq = 0
        self.stopped: socket.socket | None = None
        self.stopped_name = ""
        for index in range(count):
            sock, name = self._join(f"{CHATTER_NETWORK}{index % 250 + 1}")
            self.chatters.append(sock)
            self.names[sock] = name
            self.tails[sock] = b""
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
        self.honest = set(self.names.values())

    def _join(self, source: str) -> tuple[socket.socket, str]:
        sock = socket.create_connection(
            ("127.0.0.1", self.port), timeout=CONNECT_TIMEOUT, source_address=(source, 0)
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                sock.close()
                raise ConnectionError(f"the server closed a client from {source} at once")
            data += chunk
        found = re.match(rb"\* welcome (\S+?);", data)
        if found is None:
            sock.close()
            raise ConnectionError(f"no welcome: {data[:80]!r}")
        return sock, found.group(1).decode()

    def open_stopped(self) -> None:
        """A client that joins, reads its welcome and never reads again."""
        self.stopped, self.stopped_name = self._join(STOPPED_ADDRESS)

    def close_stopped(self) -> None:
        if self.stopped is not None:
            self.stopped.close()
            self.stopped = None
            self.stopped_name = ""

    def run(self, phase: Phase, seconds: float, rate: float, stopped: bool) -> None:
        """Chat for ``seconds`` (each chatter ``rate`` lines a second, in turn), then
        wait for the lines said to arrive; ``stopped``: keep a stopped reader present."""
        gap = 1.0 / (rate * len(self.chatters))
        start = time.monotonic()
        end = start + seconds
        next_line = start
        if stopped:
            self.open_stopped()
            phase.stopped_opened += 1
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if now >= next_line:
                self._say(phase)
                next_line += gap
                if next_line < now:  # we fell behind: skip, do not burst
                    next_line = now + gap
            self._read(phase, min(next_line, end) - time.monotonic())
            if stopped and self.stopped is None and phase.stopped_opened < MAX_STOPPED:
                self.open_stopped()
                phase.stopped_opened += 1
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.pending and time.monotonic() < deadline and self.chatters:
            self._read(phase, deadline - time.monotonic())
        phase.missing += sum(self.pending.values())
        self.pending.clear()
        self.sent.clear()
        self.close_stopped()
        phase.seconds += seconds

    def _say(self, phase: Phase) -> None:
        if not self.chatters:
            return
        sock = self.chatters[self.seq % len(self.chatters)]
        seq = self.seq
        self.seq += 1
        self.sent[seq] = time.perf_counter()
        self.pending[seq] = len(self.chatters) - 1
        try:
            sock.send(b"~lat%d~\n" % seq)  # a few bytes: the socket always takes them
        except OSError as error:
            self._lost(sock, phase, f"{self.names[sock]}: send failed: {error}")
        phase.lines += 1

    def _read(self, phase: Phase, timeout: float) -> None:
        for key, _ in self.selector.select(max(0.0, timeout)):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                data = sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                self._lost(sock, phase, f"{self.names[sock]}: connection ended")
                continue
            arrived = time.perf_counter()
            text = self.tails[sock] + data
            cut = text.rfind(b"\n") + 1
            self.tails[sock] = text[cut:][-8192:]
            if sock is self.chatters[0]:
                phase.flood_seen += text.count(b"f\n", 0, cut)
            # bytes.find, not a regex, over the flood: this loop reads it for 20 clients.
            at = text.find(b"~lat", 0, cut)
            while at >= 0:
                end = text.find(b"~", at + 4, cut)
                seq = int(text[at + 4 : end])
                said = self.sent.get(seq)
                if said is not None:
                    phase.latencies.append(arrived - said)
                    left = self.pending[seq] - 1
                    if left:
                        self.pending[seq] = left
                    else:
                        del self.pending[seq], self.sent[seq]
                at = text.find(b"~lat", end, cut)
            if b" left (" in text or b"! disconnected" in text:
                self._notices(sock, phase, text[:cut])

    def _notices(self, sock: socket.socket, phase: Phase, text: bytes) -> None:
        for found in NOTICE.finditer(text):
            if found.group(1) is not None:
                name = found.group(1).decode()
                if name == self.stopped_name and sock is self.chatters[0]:
                    phase.stopped_cut += found.group(2) == b"too slow"
                    self.close_stopped()
                elif name in self.honest and sock is self.chatters[0]:
                    phase.cut_off.append(f"{name} left ({found.group(2).decode()})")
            else:
                phase.cut_off.append(f"{self.names[sock]}: {found.group(0).decode()}")

    def _lost(self, sock: socket.socket, phase: Phase, what: str) -> None:
        phase.cut_off.append(what)
        self.selector.unregister(sock)
        sock.close()
        self.chatters.remove(sock)
        # Lines it was still to receive never will be: count them missing now.
        for seq in self.pending:
            self.pending[seq] -= 1
            phase.missing += 1
        for seq in [s for s, n in self.pending.items() if n <= 0]:
            del self.pending[seq], self.sent[seq]

    def close(self) -> None:
        self.close_stopped()
        self.selector.close()
        for sock in self.chatters:
            sock.close()


# What runs beside the honest chatters in each phase: (a hog, a flooder, a stopped reader).
PHASES = {
    "quiet": (False, False, False),
    "hog": (True, False, False),
    "stopped": (False, False, True),
    "flood": (False, True, False),
    "abuse": (False, True, True),
}


def run_round(mode: str, args: argparse.Namespace) -> list[Phase]:
    daemon = start_server(mode, tuple(shlex.split(args.server_args)))
    assert daemon.announced is not None
    port = daemon.announced[1]
    phases = []
    room = Room(port, args.chatters)
    try:
        room.run(Phase(mode, "warm-up"), WARM_UP_S, args.rate, stopped=False)
        for name in args.phases:
            hog, flood, stopped = PHASES[name]
            phase = Phase(mode, name)
            until = str(time.monotonic() + args.seconds + DRAIN_TIMEOUT + 5)
            side = None
            if hog:
                side = start_side(HOG, [until])
            elif flood:
                limit = str(MAX_FLOOD_CONNECTIONS)
                side = start_side(FLOODER, [str(port), FLOODER_ADDRESS, until, limit])
            try:
                room.run(phase, args.seconds, args.rate, stopped=stopped)
            finally:
                out = end_side(side) if side is not None else ""
            if flood:
                report = out.strip().splitlines()
                phase.flooder.append(json.loads(report[-1]) if report else {"error": "none"})
            phases.append(phase)
    finally:
        room.close()
        daemon.stop()
    return phases


def print_table(pooled: dict[tuple[str, str], Phase]) -> None:
    print(
        f"{'mode':7} {'phase':6} {'lines':>6} {'samples':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'missing':>7} {'cut':>4}  p50 / p99 against quiet; against hog"
    )
    for (mode, name), p in pooled.items():
        ratio = ""
        q = pooled[(mode, "quiet")]
        if name != "quiet":
            ratio = f"{p.p50 / q.p50:6.2f}x / {p.p99 / q.p99:6.2f}x"
        if name in ("flood", "abuse") and (mode, "hog") in pooled:
            h = pooled[(mode, "hog")]
            ratio += f";  {p.p50 / h.p50:6.2f}x / {p.p99 / h.p99:6.2f}x"
        if name == "abuse":
            goal = p.p99 <= 2 * q.p99 and not p.cut_off
            ratio += "  goal (p99 <= 2x quiet, nobody cut): " + ("PASS" if goal else "MISS")
        print(
            f"{mode:7} {name:6} {p.lines:6d} {len(p.latencies):8d} {p.p50 * 1000:8.3f}"
            f" {p.p99 * 1000:8.3f} {p.missing:7d} {len(p.cut_off):4d}  {ratio}"
        )
    for (mode, name), p in pooled.items():
        if not p.flooder and not p.stopped_opened:
            continue
        lines = sum(int(str(f.get("lines", 0))) for f in p.flooder)
        flooding = sum(int(str(f.get("flooding", 0))) for f in p.flooder)
        connections = sum(int(str(f.get("connections", 0))) for f in p.flooder)
        lifetimes = [t for f in p.flooder for t in f.get("lifetimes_s", [])]  # type: ignore[attr-defined]
        print(
            f"{mode} {name}: flooder wrote {lines} lines in {p.seconds:.0f} s"
            f" ({lines / max(p.seconds, 1e-9):.0f}/s) and kept on while the phase's last lines"
            f" came in, {p.flood_seen} reached a chatter, over {connections} connections,"
            f" disconnected for flooding {flooding} times (after {lifetimes} s);"
            f" stopped readers: {p.stopped_opened} joined, {p.stopped_cut} cut off as too slow"
        )
    for (mode, name), p in pooled.items():
        for what in p.cut_off[:10]:
            print(f"{mode} {name}: HONEST CUT OFF: {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="fork,thread")
    parser.add_argument("--chatters", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1.0, help="lines a second per chatter")
    parser.add_argument("--seconds", type=float, default=15.0, help="per phase")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, pooled (default 3)")
    parser.add_argument("--server-args", default="", help="extra server options, one string")
    parser.add_argument(
        "--phases",
        default="quiet,hog,stopped,flood,abuse",
        help="which phases, in this order (quiet always runs; default all)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.phases = ["quiet", *(p for p in args.phases.split(",") if p and p != "quiet")]
    if unknown := [p for p in args.phases if p not in PHASES]:
        parser.error(f"unknown phase {unknown[0]!r}; choose from {', '.join(PHASES)}")
    if args.chatters < 2 or args.rate <= 0 or args.seconds <= 0 or args.repeat < 1:
        parser.error("need --chatters >= 2, --rate > 0, --seconds > 0, --repeat >= 1")
    pooled: dict[tuple[str, str], Phase] = {}
    # Rounds interleave the modes, so a burst of load from elsewhere on the machine
    # falls on both alike.
    for _ in range(args.repeat):
        for mode in args.modes.split(","):
            for phase in run_round(mode, args):
                key = (phase.mode, phase.phase)
                if key in pooled:
                    pooled[key].merge(phase)
                else:
                    pooled[key] = phase
    print_table(pooled)
    if args.json:
        args.json.write_text(json.dumps([p.summary() for p in pooled.values()], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
