"""Giving a server its password (`--password-file`, `CHATBOX_PASSWORD`) before chatting.

A server behind a password says `* password required` first and waits for
`/pass SECRET`. The client answers that line only - a server that did not ask is never
sent the password - and waits for the verdict: the welcome, or `! wrong password` (which
a server may hold back for a while; guesses are slowed down). Whatever was read that is
not the prompt is handed to the session to show, so nothing the server said is lost.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from chatbox import protocol

PASSWORD_ENV = "CHATBOX_PASSWORD"
# How long to wait for the server's first line, and for its verdict (a server slowing a
# guesser down may take 30 s before it answers a wrong password).
PROMPT_TIMEOUT = 10.0
VERDICT_TIMEOUT = 45.0


class LoginError(Exception):
    """The password could not be read or was refused; the message is one line."""


def read_password(path: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The password from the first line of ``path``, else from `PASSWORD_ENV`, else None.

    Error handling: an unreadable or empty file is a `LoginError`.
    """
    if path is None:
        return environ.get(PASSWORD_ENV) or None
    try:
        with open(path, "rb") as file:
            first = file.readline().rstrip(b"\r\n")
    except OSError as exc:
        raise LoginError(f"cannot read password file {path}: {exc.strerror}") from None
    if not first:
        raise LoginError(f"password file {path} is empty (the first line is the password)")
    return first.decode("utf-8", "surrogateescape")


def log_in(sock: socket.socket, password: str) -> bytes:
    """Answer the server's password prompt, if it gives one; what else was read.

    Error handling: a refused password is a `LoginError`. A server that closes or says
    nothing is not an error here: the session that follows sees and reports it.
    """
    received = _read_lines(sock, b"", 1, time.monotonic() + PROMPT_TIMEOUT)
    first, _, rest = received.partition(b"\n")
    if first + b"\n" != protocol.PASSWORD_REQUIRED:
        return received
    sock.sendall(protocol.pass_line(password))
    rest = _read_lines(sock, rest, 1, time.monotonic() + VERDICT_TIMEOUT)
    if rest.startswith(protocol.WRONG_PASSWORD):
        raise LoginError("the server refused the password (wrong password)")
    return rest


def _read_lines(sock: socket.socket, have: bytes, count: int, deadline: float) -> bytes:
    """``have`` and what arrives until it holds ``count`` lines, the end, or ``deadline``."""
    data = bytearray(have)
    try:
        while data.count(b"\n") < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, OSError):
        pass
    finally:
        sock.settimeout(None)
    return bytes(data)
