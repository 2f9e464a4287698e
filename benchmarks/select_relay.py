"""The single-line reference: a minimal Python select relay, the floor for one line.

`python benchmarks/select_relay.py [PORT] [--host HOST]` relays every complete line a
client sends, as `<guestN> LINE`, to every other client. One `selectors` loop,
non-blocking sockets, an output buffer per client so that nobody waits for a slow
reader; no names, limits, notices or commands. The bench judges the chat server's
one-line path (round trip, CPU per relayed line) against it. Its first line on stdout is
``listening on HOST:PORT``.
"""

import argparse
import resource
import selectors
import socket

sel = selectors.DefaultSelector()
peers: dict[socket.socket, list[bytes | bytearray]] = {}  # sock: [prefix, pending, outbox]


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
        sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))


def main() -> None:
    parser = argparse.ArgumentParser(description="A minimal selectors chat relay.")
    parser.add_argument("port", nargs="?", type=int, default=4244)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
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
                sel.register(conn, selectors.EVENT_READ)
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
                block = state[0] + head.replace(b"\n", b"\n" + state[0]) + b"\n"
                for other, theirs in peers.items():
                    if other is not sock:
                        waiting = bool(theirs[2])
                        theirs[2] += block
                        if not waiting:
                            flush(other, theirs, False)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
