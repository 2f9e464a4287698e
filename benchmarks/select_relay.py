"""The single-line reference: a minimal Python select relay, the floor for one line.

`python benchmarks/select_relay.py [PORT] [--host HOST]` relays every complete line a
client sends, as `<guestN> LINE`, to every other client. One `selectors` loop,
non-blocking sockets, an output buffer per client so that nobody waits for a slow
reader; no names, limits, notices or commands. The bench judges the chat server's
one-line path (round trip, CPU per relayed line) against it. Its first line on stdout is
``listening on HOST:PORT``.

With ``--hop`` each client is read by a forked process of its own that passes its
whole lines up a socketpair to the relay, which writes to every client itself: the same
loop with the chat server's fork-mode design and nothing else (a reader that polls its
client and its end of the pair, as a worker must to see the hub end it). What it costs
over the plain relay is the floor of that design - a second process woken, and three
more system calls, per line - not anything the chat server does.
"""

import argparse
import os
import resource
import select
import selectors
import signal
import socket

sel = selectors.DefaultSelector()
peers: dict[socket.socket, list[bytes | bytearray]] = {}  # sock: [prefix, pending, outbox]
ends: dict[socket.socket, socket.socket] = {}  # --hop: a reader's pair end: its client
hop = False


def flush(sock: socket.socket, state: list[bytes | bytearray], waiting: bool) -> None:
    """Send what is queued; watch for writability only while something is left."""
    out = state[2]
    try:
        del out[: sock.send(out)]
    except BlockingIOError:
        pass
    except OSError:
        out.clear()  # the peer is gone; its read side ends it
    if bool(out) != waiting:
        if hop:  # the relay only writes to a client: its reader reads it
            if out:
                sel.register(sock, selectors.EVENT_WRITE)
            else:
                sel.unregister(sock)
        else:
            sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))


def reader(conn: socket.socket, up: socket.socket) -> None:
    """--hop: a client's own process. Whole lines go up; the relay's end closing (or the
    client's) ends it."""
    conn.setblocking(True)
    poller = select.poll()
    poller.register(conn, select.POLLIN)
    poller.register(up, select.POLLIN)
    up_fd = up.fileno()
    pending = b""
    while True:
        if any(fd == up_fd for fd, _ in poller.poll()):
            return
        data = conn.recv(65536)
        if not data:
            return
        head, _, pending = (pending + data).rpartition(b"\n")
        if head:
            up.sendall(head + b"\n")


def relay(sock: socket.socket, state: list[bytes | bytearray], head: bytes | bytearray) -> None:
    block = state[0] + head.replace(b"\n", b"\n" + state[0]) + b"\n"
    for other, theirs in peers.items():
        if other is not sock:
            waiting = bool(theirs[2])
            theirs[2] += block
            if not waiting:
                flush(other, theirs, False)


def main() -> None:
    parser = argparse.ArgumentParser(description="A minimal selectors chat relay.")
    parser.add_argument("port", nargs="?", type=int, default=4244)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--hop", action="store_true", help="a forked reader per client")
    args = parser.parse_args()
    global hop
    hop = args.hop
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # readers that end are reaped at once
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.create_server((args.host, args.port), backlog=4096)
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ)
    host, port = listener.getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    count = 0
    while True:
        for key, mask in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                conn, _ = listener.accept()
                conn.setblocking(False)
                count += 1
                peers[conn] = [b"<guest%d> " % count, b"", bytearray()]
                if not hop:
                    sel.register(conn, selectors.EVENT_READ)
                    continue
                end, theirs = socket.socketpair()
                if os.fork() == 0:
                    listener.close()
                    end.close()
                    reader(conn, theirs)
                    os._exit(0)
                theirs.close()
                end.setblocking(False)
                ends[end] = conn
                sel.register(end, selectors.EVENT_READ)
                continue
            if sock in ends:  # --hop: whole lines from a client's reader
                conn = ends[sock]
                data = sock.recv(65536)
                if data:
                    state = peers[conn]
                    head, _, state[1] = (state[1] + data).rpartition(b"\n")
                    if head:
                        relay(conn, state, head)
                    continue
                sel.unregister(sock)
                del ends[sock]
                sock.close()
                if peers.pop(conn)[2]:
                    sel.unregister(conn)
                conn.close()
                continue
            state = peers[sock]
            if mask & selectors.EVENT_WRITE:
                flush(sock, state, True)
            if not mask & selectors.EVENT_READ:
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                del peers[sock]
                sock.close()
                continue
            head, _, rest = (state[1] + data).rpartition(b"\n")
            state[1] = rest
            if head:
                relay(sock, state, head)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
