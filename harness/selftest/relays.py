"""Deliberately faulty chat relays (and one faulty client): each breaks one property.

``python -m harness.selftest.relays MODE PORT [--host HOST] [--every N]`` starts a
plain socket relay that prints ``listening on HOST:PORT`` like the real server and
prefixes each line with ``<userN> `` (another decoration than ours, as ncat --chat
does), with the one fault named by MODE (see `MODES`). ``ok`` has none: the harness
must pass it. ``halfclient`` is not a relay but a client (``--client-cmd``): it reads a
line from its terminal, sends it, reads the socket once, and repeats - half duplex.

Adding a fault is one entry in `MODES` and its branch in `Relay` (or a client).
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import socket
import sys
import time

# mode -> what is wrong with it (the selftest matrix and the docs show this text).
MODES: dict[str, str] = {
    "ok": "no fault (a control: every check passes)",
    "drop": "drops one line in N",
    "duplicate": "sends one line in N twice",
    "reorder": "swaps each sender's lines in pairs (nothing lost, order wrong)",
    "simplex": "relays only the first client's lines, in one direction",
    "halfduplex": "serves one talker at a time: nobody else is read until it is quiet",
    "chunkprefix": "puts the name before each recv() chunk (256 bytes), not each line",
    "trickle": "delivers everything, one line per 0.1 s: never finishes in time",
    "crossorder": "delays some sender/receiver pairs: receivers disagree on the order",
    "slowway": "carries the second client's lines 3 s late: one direction slow, none lost",
    "echo": "also sends one line in N back to its sender",
    "merge": "one line in N loses its newline and runs into the next",
    "wrongname": "attributes one line in N to another client's name",
    "split": "strtok's each 4 KB recv() and sends every piece as a line",
    "truncate": "cuts every line to 1024 bytes, silently",
    "dropclose": "drops a client's last lines when it closes right after them",
    "nulswallow": "treats a read as a C string: what follows a NUL in it is lost",
    "halfclient": "(a client) reads a line, sends it, reads the socket once, repeats",
    "probedie": "crashes when a connection closes before sending anything (a readiness probe)",
    "dies": "aborts (SIGABRT) after --after lines, with a long sanitizer-like stderr",
    "nickname": "(correct, but asks each client for its name first: run it with --join)",
}
CHUNK = 256  # chunkprefix's receive buffer: small, like a naive C relay's
SPLIT_READ = 4096  # split: one read() of this many bytes, each piece sent as a line
TRUNCATE = 1024  # truncate: the fixed line buffer
TALKER_QUIET = 1.5  # halfduplex: seconds of silence before another client may talk (more
# than the full-duplex check's DUPLEX_SPAN, so this relay can never pass it; less than the
# default --settle, so its late lines are not judged lost)
TRICKLE = 0.1  # trickle: seconds between two relayed lines
REORDER_FLUSH = 0.2  # reorder/merge: a held line goes out after this long without a partner
CROSS_DELAY = 0.05  # crossorder: the delay for every other sender/receiver pair
# slowway: the second client's lines reach the others this late. Longer than the room
# sync waits for a hello once both ends are seen served (--settle, 2 s), shorter than
# a settle that nudges (about 4 s): nothing may be judged lost.
SLOW_WAY = 3.0
LAZY = 0.4  # dropclose: lines wait this long for a batch; a close discards the batch
PROBEDIE_LATE = 0.5  # probedie: listens this long before it says so (loads something first)
DIES_LINES = 60  # dies: its stderr report, longer than any tail a report might keep
DIES_FIRST = "==4242==ERROR: AddressSanitizer: heap-use-after-free (faulty relay 'dies')"
DIES_LAST = "==4242==ABORTING"
# nickname: what a name may be, and what the relay says until it gets one.
NICKNAME = re.compile(rb"[A-Za-z][A-Za-z0-9_]{0,15}")
NAME_PROMPT = b"* who are you? send your name first (a letter, then letters, digits or _)\n"


def die_loudly() -> None:
    """dies: a sanitizer's last words, first and last line recognisable, then SIGABRT."""
    frames = [f"    #{i} 0x{0x5000 + i:x} in relay_frame_{i} relays.py" for i in range(58)]
    sys.stderr.write("\n".join([DIES_FIRST, *frames, DIES_LAST]) + "\n")
    sys.stderr.flush()
    os.abort()


class Client:
    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.number = number
        self.name = f"user{number}"
        self.buffer = b""
        self.held: bytes | None = None
        self.held_since = 0.0
        self.lazy: list[bytes] = []  # dropclose: the batch of lines not yet relayed
        self.lazy_since = 0.0
        self.spoke = False  # probedie: sent at least one byte
        self.named = False  # nickname: its first valid line named it


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
        self.delayed: list[tuple[float, Client, bytes]] = []  # crossorder: (due, to, data)

    def send_to(self, client: Client, data: bytes) -> None:
        try:
            client.sock.sendall(data)
        except OSError:
            self.drop_client(client)

    def broadcast(self, sender: Client, data: bytes) -> None:
        for client in list(self.clients.values()):
            if client is sender:
                continue
            if self.mode == "crossorder" and (client.number + sender.number) % 2 == 0:
                self.delayed.append((time.monotonic() + CROSS_DELAY, client, data))
                continue
            if self.mode == "slowway" and sender.number == 2:
                self.delayed.append((time.monotonic() + SLOW_WAY, client, data))
                continue
            self.send_to(client, data)

    def relay_line(self, sender: Client, line: bytes) -> None:
        if self.mode == "simplex" and (not self.order or sender is not self.order[0]):
            return
        self.count += 1
        nth = self.count % self.every == 0
        name = sender.name
        if self.mode == "wrongname" and nth:
            name = next((c.name for c in self.order if c is not sender), name)
        if self.mode == "truncate":
            line = line[:TRUNCATE]
        data = f"<{name}> ".encode() + line + b"\n"
        if self.mode == "drop" and nth:
            return
        if self.mode == "duplicate" and nth:
            self.broadcast(sender, data)
        if self.mode == "echo" and nth:
            self.send_to(sender, data)
        if self.mode == "trickle":
            self.backlog.append((sender, data))
            return
        if self.mode == "dies" and self.count > self.after:
            die_loudly()
        if self.mode == "merge":
            if sender.held is not None:
                data, sender.held = sender.held + data, None
            elif nth:
                sender.held, sender.held_since = data[:-1], time.monotonic()
                return
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

    def read_size(self) -> int:
        return {"chunkprefix": CHUNK, "split": SPLIT_READ}.get(self.mode, 65536)

    def on_readable(self, client: Client) -> None:
        if self.mode == "halfduplex" and self.talker is None:
            self.set_talker(client)
        try:
            data = client.sock.recv(self.read_size())
        except OSError:
            data = b""
        if self.mode == "halfduplex":
            # After the read, not before: the talker's quiet is counted from the last
            # bytes taken, however late a loaded machine ran this.
            self.talker_last = time.monotonic()
        if not data:
            if self.mode == "probedie" and not client.spoke:
                raise BrokenPipeError(f"{client.name} closed before it said anything")
            client.lazy.clear()  # dropclose: the pending batch goes with the client
            self.drop_client(client)
            return
        client.spoke = True
        if self.mode == "chunkprefix":
            self.broadcast(client, f"<{client.name}> ".encode() + data)
            return
        if self.mode == "split":
            for piece in data.split(b"\n"):
                if piece.strip(b"\r"):
                    self.relay_line(client, piece.rstrip(b"\r"))
            return
        if self.mode == "nulswallow" and b"\0" in data:
            data = data[: data.index(b"\0")]
        client.buffer += data
        *lines, client.buffer = client.buffer.split(b"\n")
        if self.mode == "dropclose":
            if not client.lazy:
                client.lazy_since = time.monotonic()
            client.lazy.extend(lines)
            return
        for line in lines:
            if self.mode == "nickname" and not client.named:
                self.take_name(client, line.rstrip(b"\r"))
                continue
            self.relay_line(client, line.rstrip(b"\r"))

    def take_name(self, client: Client, line: bytes) -> None:
        """nickname: nothing is relayed until a line names the client."""
        if NICKNAME.fullmatch(line) is None:
            self.send_to(client, NAME_PROMPT)
            return
        client.name, client.named = line.decode(), True
        self.send_to(client, f"* welcome {client.name}\n".encode())

    def flush_lazy(self, client: Client) -> None:
        lines, client.lazy = client.lazy, []
        for line in lines:
            self.relay_line(client, line.rstrip(b"\r"))

    def housekeeping(self) -> None:
        now = time.monotonic()
        if self.backlog and now - self.trickled >= TRICKLE:
            self.trickled = now
            self.broadcast(*self.backlog.pop(0))
        if self.talker is not None and now - self.talker_last >= TALKER_QUIET:
            self.set_talker(None)
        while self.delayed and self.delayed[0][0] <= now:
            _, client, data = self.delayed.pop(0)
            if client.sock in self.clients:
                self.send_to(client, data)
        for client in list(self.clients.values()):
            if client.held is not None and now - client.held_since >= REORDER_FLUSH:
                held, client.held = client.held, None
                self.broadcast(client, held if held.endswith(b"\n") else held + b"\n")
            if client.lazy and now - client.lazy_since >= LAZY:
                self.flush_lazy(client)

    def serve(self) -> None:
        number = 0
        while True:
            timeout = 0.01 if self.delayed else 0.05
            for key, _ in self.selector.select(timeout=timeout):
                if key.fileobj is self.listener:
                    sock, _ = self.listener.accept()
                    number += 1
                    client = Client(sock, number)
                    self.clients[sock] = client
                    self.order.append(client)
                    if self.talker is None:
                        self.selector.register(sock, selectors.EVENT_READ)
                    if self.mode == "nickname":
                        self.send_to(client, NAME_PROMPT)
                else:
                    client_sock = key.fileobj
                    assert isinstance(client_sock, socket.socket)
                    if client_sock in self.clients:
                        self.on_readable(self.clients[client_sock])
            self.housekeeping()


def half_duplex_client(host: str, port: int) -> int:
    """The classic blocking chat client: fgets, send, one read, repeat. It shows what
    arrived only after it sent something itself."""
    try:
        sock = socket.create_connection((host, port), timeout=10)
    except OSError as exc:
        print(f"halfclient: cannot connect to {host}:{port}: {exc}", flush=True)
        return 1
    sock.settimeout(None)
    with sock:
        for line in sys.stdin.buffer:
            sock.sendall(line)
            data = sock.recv(SPLIT_READ)
            if not data:
                return 1
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.selftest.relays", description=__doc__.splitlines()[0]
    )
    parser.add_argument("mode", choices=list(MODES))
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--every", type=int, default=7, help="the N of 'one line in N'")
    parser.add_argument("--after", type=int, default=40, help="dies: lines relayed first")
    args = parser.parse_args(argv)
    if args.mode == "halfclient":
        return half_duplex_client(args.host, args.port)
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


def relay_cmd(mode: str, every: int = 7, after: int = 40) -> str:
    """A --server-cmd template that runs the relay in ``mode``."""
    return (
        f"{{python}} -m harness.selftest.relays {mode} {{port}} --host {{host}} "
        f"--every {every} --after {after}"
    )


def client_cmd(mode: str = "halfclient") -> str:
    """A --client-cmd template that runs the faulty client."""
    return f"{{python}} -m harness.selftest.relays {mode} {{port}} --host {{host}}"


if __name__ == "__main__":
    sys.exit(main())
