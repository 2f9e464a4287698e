"""Deliberately faulty chat relays: the harness must catch each fault and name it.

``python tests/faulty_relays.py MODE PORT [--host HOST] [--every N]`` starts a plain
socket relay that prints ``listening on HOST:PORT`` like the real server, prefixes each
line with ``<userN> `` (another decoration than ours, as ncat --chat does) and has one
fault:

- ``ok``: no fault (a control: the harness must pass it);
- ``drop``: drops one line in N;
- ``duplicate``: sends one line in N twice;
- ``reorder``: swaps each sender's lines in pairs (the held line is flushed when idle,
  so nothing is lost - only the order is wrong);
- ``simplex``: relays only the first client's lines, in one direction;
- ``halfduplex``: serves one talker at a time: while a client is talking, nobody else is
  read (so nothing reaches the talker) until it has been quiet for a second;
- ``chunkprefix``: prefixes each received chunk instead of each line, with a small
  receive buffer as in many C servers, so lines break apart under load;
- ``trickle``: delivers everything, but one line per TRICKLE seconds: always making
  progress, never finishing in time (the harness's "bounded time" must catch it);
- ``probedie``: correct, but crashes with a traceback when a connection closes before
  sending anything (as a server killed by a BrokenPipeError does), and announces itself
  PROBEDIE_LATE after it listens: a readiness probe that connects and closes kills it;
- ``dies``: correct until it has relayed ``--after`` lines, then writes a sanitizer-like
  report of DIES_LINES lines to stderr and aborts (SIGABRT).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

MODES = (
    "ok", "drop", "duplicate", "reorder", "simplex", "halfduplex", "chunkprefix", "trickle",
    "probedie", "dies",
)  # fmt: skip
CHUNK = 256  # chunkprefix's receive buffer: small, like a naive C relay's
TALKER_QUIET = 1.5  # halfduplex: seconds of silence before another client may talk
TRICKLE = 0.1  # trickle: seconds between two relayed lines
REORDER_FLUSH = 0.2  # reorder: a held line goes out after this long without a partner
PROBEDIE_LATE = 0.5  # probedie: listens this long before it says so (loads something first)
DIES_LINES = 60  # dies: its stderr report, longer than any tail a report might keep
DIES_FIRST = "==4242==ERROR: AddressSanitizer: heap-use-after-free (faulty relay 'dies')"
DIES_LAST = "==4242==ABORTING"


def die_loudly() -> None:
    """dies: a sanitizer's last words, first and last line recognisable, then SIGABRT."""
    frames = [f"    #{i} 0x{0x5000 + i:x} in relay_frame_{i} faulty_relays.py" for i in range(58)]
    sys.stderr.write("\n".join([DIES_FIRST, *frames, DIES_LAST]) + "\n")
    sys.stderr.flush()
    os.abort()


class Client:
    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.name = f"user{number}"
        self.buffer = b""
        self.spoke = False  # probedie: sent at least one byte
        self.held: bytes | None = None
        self.held_since = 0.0


class Relay:
    def __init__(self, mode: str, listener: socket.socket, every: int, after: int = 0) -> None:
        self.mode = mode
        self.after = after
        self.listener = listener
        self.every = every
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ)
        self.clients: dict[socket.socket, Client] = {}
        self.order: list[Client] = []
        self.count = 0
        self.talker: Client | None = None
        self.talker_last = 0.0
        self.backlog: list[tuple[Client, bytes]] = []
        self.trickled = 0.0

    def broadcast(self, sender: Client, data: bytes) -> None:
        for client in list(self.clients.values()):
            if client is not sender:
                try:
                    client.sock.sendall(data)
                except OSError:
                    self.drop_client(client)

    def relay_line(self, sender: Client, line: bytes) -> None:
        if self.mode == "simplex" and (not self.order or sender is not self.order[0]):
            return
        self.count += 1
        data = f"<{sender.name}> ".encode() + line + b"\n"
        if self.mode == "drop" and self.count % self.every == 0:
            return
        if self.mode == "duplicate" and self.count % self.every == 0:
            self.broadcast(sender, data)
        if self.mode == "trickle":
            self.backlog.append((sender, data))
            return
        if self.mode == "dies" and self.count > self.after:
            die_loudly()
        if self.mode == "reorder":
            if sender.held is None:
                sender.held, sender.held_since = data, time.monotonic()
                return
            held, sender.held = sender.held, None
            self.broadcast(sender, data)
            self.broadcast(sender, held)
            return
        self.broadcast(sender, data)

    def set_talker(self, talker: Client | None) -> None:
        """halfduplex: while someone talks, nobody else is even polled."""
        self.talker = talker
        for client in self.clients.values():
            registered = client.sock in self.selector.get_map()
            wanted = talker is None or client is talker
            if wanted and not registered:
                self.selector.register(client.sock, selectors.EVENT_READ)
            elif registered and not wanted:
                self.selector.unregister(client.sock)

    def drop_client(self, client: Client) -> None:
        if client.sock in self.clients:
            if client.sock in self.selector.get_map():
                self.selector.unregister(client.sock)
            del self.clients[client.sock]
            self.order.remove(client)
            client.sock.close()
        if self.talker is client:
            self.set_talker(None)

    def on_readable(self, client: Client) -> None:
        if self.mode == "halfduplex":
            if self.talker is None:
                self.set_talker(client)
            self.talker_last = time.monotonic()
        try:
            data = client.sock.recv(CHUNK if self.mode == "chunkprefix" else 65536)
        except OSError:
            data = b""
        if not data:
            if self.mode == "probedie" and not client.spoke:
                raise BrokenPipeError(f"{client.name} closed before it said anything")
            self.drop_client(client)
            return
        client.spoke = True
        if self.mode == "chunkprefix":
            self.broadcast(client, f"<{client.name}> ".encode() + data)
            return
        client.buffer += data
        *lines, client.buffer = client.buffer.split(b"\n")
        for line in lines:
            self.relay_line(client, line.rstrip(b"\r"))

    def housekeeping(self) -> None:
        now = time.monotonic()
        if self.backlog and now - self.trickled >= TRICKLE:
            self.trickled = now
            self.broadcast(*self.backlog.pop(0))
        if self.talker is not None and now - self.talker_last >= TALKER_QUIET:
            self.set_talker(None)
        for client in list(self.clients.values()):
            if client.held is not None and now - client.held_since >= REORDER_FLUSH:
                held, client.held = client.held, None
                self.broadcast(client, held)

    def serve(self) -> None:
        number = 0
        while True:
            for key, _ in self.selector.select(timeout=0.05):
                if key.fileobj is self.listener:
                    sock, _ = self.listener.accept()
                    number += 1
                    client = Client(sock, number)
                    self.clients[sock] = client
                    self.order.append(client)
                    if self.talker is None:
                        self.selector.register(sock, selectors.EVENT_READ)
                else:
                    client_sock = key.fileobj
                    assert isinstance(client_sock, socket.socket)
                    if client_sock in self.clients:
                        self.on_readable(self.clients[client_sock])
            self.housekeeping()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--every", type=int, default=7, help="drop/duplicate one line in N")
    parser.add_argument("--after", type=int, default=40, help="dies: lines relayed first")
    args = parser.parse_args()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(64)
    host, port = listener.getsockname()[:2]
    if args.mode == "probedie":
        time.sleep(PROBEDIE_LATE)  # the fault: connectable before it says it is ready
    print(f"listening on {host}:{port}", flush=True)
    try:
        Relay(args.mode, listener, args.every, args.after).serve()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- helpers for the harness's own tests (importable as `faulty_relays`) --------------

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def relay_cmd(mode: str, every: int = 7, after: int = 40) -> str:
    """A --server-cmd template that runs this relay in ``mode``."""
    script = os.path.join(HERE, "faulty_relays.py")
    return (
        f"{sys.executable} {script} {mode} {{port}} --host {{host}} --every {every} --after {after}"
    )


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    report: dict[str, Any]

    def statuses(self, run: int = 0) -> dict[str, str]:
        """check name -> status for one run of the JSON report."""
        return {c["name"]: c["status"] for c in self.report["runs"][run]["checks"]}

    def failed(self) -> set[str]:
        return {
            n
            for r in range(len(self.report["runs"]))
            for n, s in self.statuses(r).items()
            if s == "fail"
        }


def run_harness(tmp: str, *args: str, timeout: float = 150) -> Outcome:
    """Run ``python -m harness.run`` as a user would, with a JSON report to read back.

    Resource handling: the harness ends its own children; ``subprocess.run`` kills it on
    timeout (its lifeline then ends whatever it started).
    """
    report = os.path.join(tmp, f"report-{os.getpid()}-{time.monotonic_ns()}.json")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "harness.run", "--quiet", "--json", report, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )
    doc: dict[str, Any] = {}
    if os.path.exists(report):
        with open(report, encoding="utf-8") as f:
            doc = json.load(f)
    return Outcome(proc.returncode, proc.stdout, proc.stderr, doc)
