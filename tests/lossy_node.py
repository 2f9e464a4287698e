"""A cluster node that loses lines: this project's server behind a relay that drops some.

    python tests/lossy_node.py PORT HOST --inner chatbox.server [--drop-every K] [SERVER OPTIONS]

starts ``python -m chatbox.server 0 --host 127.0.0.1 SERVER OPTIONS`` (the real node, on a
port of its own), then listens on HOST:PORT and relays every client's connection to it,
dropping every K-th counted chat line (a harness token of kind ``m``) on its way to the
client. It prints ``listening on HOST:PORT`` like the server, so the harness takes it for
one; a test gives it as ``--server-cmd`` to prove that a cluster whose node loses lines
fails the harness's checks. Killing its process group ends the real node with it.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading

MESSAGE_MARK = b"|m|"  # in a harness token: a counted message (hellos are kind h)


def pump(src: socket.socket, dst: socket.socket, drop_every: int) -> None:
    """Copy ``src`` to ``dst`` line by line, dropping every ``drop_every``-th message line
    (0: drop nothing, copy as it comes)."""
    pending = b""
    seen = 0
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if not drop_every:
                dst.sendall(data)
                continue
            pending += data
            *lines, pending = pending.split(b"\n")
            out = []
            for line in lines:
                if MESSAGE_MARK in line:
                    seen += 1
                    if seen % drop_every == 0:
                        continue
                out.append(line + b"\n")
            if out:
                dst.sendall(b"".join(out))
    except OSError:
        pass
    finally:
        for sock in (dst, src):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(listener: socket.socket, inner_port: int, drop_every: int) -> None:
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", inner_port))
        except OSError:
            client.close()
            continue
        threading.Thread(target=pump, args=(client, upstream, 0), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, drop_every), daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("host")
    parser.add_argument("--inner", required=True, help="the server's module (chatbox.server)")
    parser.add_argument("--drop-every", type=int, default=7)
    args, server_options = parser.parse_known_args()
    inner = subprocess.Popen(
        [sys.executable, "-m", args.inner, "0", "--host", "127.0.0.1", *server_options],
        stdout=subprocess.PIPE,
    )
    assert inner.stdout is not None
    first = inner.stdout.readline().decode()
    if not first.startswith("listening on "):
        print(f"lossy_node: the server said {first!r}", file=sys.stderr)
        return 1
    inner_port = int(first.rsplit(":", 1)[1])
    listener = socket.create_server((args.host, args.port))
    print(f"listening on {args.host}:{listener.getsockname()[1]}", flush=True)
    try:
        serve(listener, inner_port, args.drop_every)
    finally:
        inner.terminate()
        inner.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
