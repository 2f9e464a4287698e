"""`python -m harness.rawclient HOST PORT`: a byte-exact client for the bad-input party.

A chat client (rightly) refuses to send NUL, escapes or invalid UTF-8 as typed; this
one sends its stdin to the server byte for byte and prints whatever comes back. On a
terminal it switches the terminal to raw mode first, so the pty passes every byte
unchanged, and only then says ``connected`` - the harness waits for that word.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import termios
import threading
import tty


def _pump_in(sock: socket.socket) -> None:
    fd = sys.stdin.fileno()
    while True:
        data = os.read(fd, 65536)
        if not data:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            return
        sock.sendall(data)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit():
        print("usage: python -m harness.rawclient HOST PORT", file=sys.stderr)
        return 2
    saved = None
    if os.isatty(0):
        saved = termios.tcgetattr(0)
        tty.setraw(0)
    try:
        try:
            sock = socket.create_connection((args[0], int(args[1])), timeout=10)
        except OSError as exc:
            print(f"rawclient: cannot connect to {args[0]}:{args[1]}: {exc}\r", flush=True)
            return 1
        sock.settimeout(None)
        print("connected\r", flush=True)
        threading.Thread(target=_pump_in, args=(sock,), daemon=True).start()
        out = sys.stdout.buffer
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return 1
            if not data:
                return 0
            out.write(data.replace(b"\n", b"\r\n"))
            out.flush()
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


if __name__ == "__main__":
    sys.exit(main())
