"""`python -m harness.rawclient HOST PORT [--rcvbuf BYTES] [--mss BYTES] [--tls-ca FILE]
[--password-file FILE]`: a byte-exact client for the parties no chat client can play.

A chat client (rightly) refuses to send NUL, escapes or invalid UTF-8 as typed; this
one sends its stdin to the server byte for byte and prints whatever comes back. On a
terminal it switches the terminal to raw mode first, so the pty passes every byte
unchanged, and only then says ``connected`` - the harness waits for that word.

It also plays the *stopped reader* of the slow-reader scenario: it writes what it
receives straight to its terminal, so when nobody reads the terminal it stops reading
its socket (a chat client that queues arrivals in memory never does). ``--rcvbuf`` and
``--mss`` shrink its receive buffer and segment size before connecting: the kernel
sizes the *server's* send buffer from the segment size (on loopback, 64 KiB segments
give megabytes), so a small one makes the server's own queue fill after ~100 KiB.

Against a server behind TLS and a password it speaks TLS and logs in as chatbox-client
does (`--tls`, `--tls-ca`, `--tls-insecure`, `--password-file`, the same code), before it
says ``connected``; from then on the bytes are exact again, inside TLS.
"""

from __future__ import annotations

import argparse
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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(
            2,
            "usage: python -m harness.rawclient HOST PORT [--rcvbuf N] [--mss N] "
            f"[--tls] [--tls-ca FILE] [--tls-insecure] [--password-file FILE]: {message}\n",
        )


def _connect(host: str, port: int, rcvbuf: int | None, mss: int | None) -> socket.socket:
    """Connect, with the receive buffer and segment size set first (they are negotiated
    in the handshake). Error handling: OSError propagates to the caller."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(info[0], info[1], info[2])
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if mss and hasattr(socket, "TCP_MAXSEG"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        sock.settimeout(10)
        sock.connect(info[4])
    except OSError:
        sock.close()
        raise
    return sock


def _secure(sock: socket.socket, opts: argparse.Namespace) -> tuple[socket.socket, bytes]:
    """TLS and the password, as chatbox-client does them; the socket to use and what the
    server said while logging in. Error handling: ConnectError or LoginError."""
    received = b""
    if opts.tls or opts.tls_ca or opts.tls_insecure:
        from chatbox.client.tls import client_context, secure

        context = client_context(opts.tls_ca, opts.tls_insecure)
        sock = secure(sock, opts.host, opts.port, context)
    if opts.password_file:
        from chatbox.client.login import log_in, read_password

        password = read_password(opts.password_file)
        if password is not None:
            received = log_in(sock, password)
    return sock, received


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m harness.rawclient", add_help=False)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--rcvbuf", type=int, metavar="BYTES")
    parser.add_argument("--mss", type=int, metavar="BYTES")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--tls-ca", metavar="FILE")
    parser.add_argument("--tls-insecure", action="store_true")
    parser.add_argument("--password-file", metavar="FILE")
    opts = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args = [opts.host, str(opts.port)]
    saved = None
    if os.isatty(0):
        saved = termios.tcgetattr(0)
        tty.setraw(0)
    try:
        try:
            sock = _connect(opts.host, opts.port, opts.rcvbuf, opts.mss)
        except OSError as exc:
            print(f"rawclient: cannot connect to {args[0]}:{args[1]}: {exc}\r", flush=True)
            return 1
        sock.settimeout(None)
        try:
            sock, received = _secure(sock, opts)
        except Exception as exc:  # ConnectError, LoginError: one line each
            print(f"rawclient: {exc}\r", flush=True)
            return 1
        print("connected\r", flush=True)
        threading.Thread(target=_pump_in, args=(sock,), daemon=True).start()
        out = sys.stdout.buffer
        if received:
            out.write(received.replace(b"\n", b"\r\n"))
            out.flush()
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
