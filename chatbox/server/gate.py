"""The password gate (`--password-file`, `CHATBOX_PASSWORD`): who may enter the room.

A gated connection is told `* password required` and its first line must be
`/pass SECRET`; nothing it sends before is relayed. Two halves, on the two sides of the
channel:

- `Login`, in the worker: reads the first line out of the decoder's events and judges
  it. The secret is compared in constant time, so the time an answer takes says nothing
  about how much of a guess was right.
- `Penalties`, in the hub: how long a wrong answer waits for its verdict. The delay
  grows with each failure from the same address (and is forgotten after a quiet while),
  so guessing from one address gets slower and slower, while a person who mistyped once
  waits about a second. The hub keeps the connection open meanwhile on a timer; nothing
  ever sleeps.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
from collections.abc import Mapping

from chatbox import protocol

# The environment variable that gives the password when no file does (both sides).
PASSWORD_ENV = "CHATBOX_PASSWORD"

# A connection must give its password within this time, or it is closed: a silent
# connection at the gate holds a worker and a slot.
LOGIN_TIMEOUT = 60.0

# The first wrong answer from an address waits this long, each further one twice as
# long, up to the cap; an address with no failure for FORGET_AFTER starts afresh.
FIRST_DELAY = 1.0
MAX_DELAY = 30.0
FORGET_AFTER = 600.0
# Addresses remembered at once; past this, the one that failed longest ago is dropped,
# so a scan from many addresses cannot grow the hub.
MAX_ADDRESSES = 10_000


class PasswordError(Exception):
    """The password could not be read; the message is one line."""


def read_secret(path: str | None, environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The password from ``path`` (its first line) or else `PASSWORD_ENV`; None if neither.

    Error handling: an unreadable or empty file, or an empty variable, is a
    `PasswordError`: a server started with a gate that lets everyone in would be worse
    than one that does not start.
    """
    if path is not None:
        try:
            with open(path, "rb") as file:
                first = file.readline()
        except OSError as exc:
            raise PasswordError(f"cannot read password file {path}: {exc.strerror}") from None
        secret = first.rstrip(b"\r\n")
        if not secret:
            raise PasswordError(f"password file {path} is empty (the first line is the password)")
        return secret
    value = environ.get(PASSWORD_ENV)
    if value is None:
        return None
    if not value:
        raise PasswordError(f"{PASSWORD_ENV} is set but empty")
    return value.encode("utf-8", "surrogateescape")


def same_secret(given: bytes, secret: bytes) -> bool:
    """Whether ``given`` is ``secret``, in time that depends on neither (digests of equal
    length are compared, so not even the length of the secret shows)."""
    return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(secret).digest())


class Login:
    """The worker's half: the first line of a gated connection, judged.

    ``feed`` takes the decoder's events; until a first line has come it answers None.
    Then True (the password was right; the events after that line are returned, to be
    passed on as the client's first lines in the room) or False (anything else first:
    a wrong password, another line, a line too long).
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def feed(self, events: list[protocol.Event]) -> tuple[bool | None, list[protocol.Event]]:
        if not events:
            return None, []
        first, rest = events[0], events[1:]
        if not isinstance(first, protocol.Lines):
            return False, []
        line, _, more = first.block.partition(b"\n")
        given = protocol.pass_secret(line)
        if given is None or not same_secret(given, self._secret):
            return False, []
        if more:
            rest.insert(0, protocol.Lines(more))
        return True, rest


class Penalties:
    """The hub's half: the delay before a wrong answer's verdict, growing per address."""

    def __init__(self) -> None:
        # address -> (failures, time of the last one); oldest failure first.
        self._failed: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._failed)

    def fail(self, address: str, now: float) -> float:
        """Count a wrong answer from ``address`` at ``now``; the seconds its verdict waits."""
        count, last = self._failed.pop(address, (0, now))
        if now - last > FORGET_AFTER:
            count = 0
        count += 1
        self._failed[address] = (count, now)
        while len(self._failed) > MAX_ADDRESSES:
            self._failed.popitem(last=False)
        return min(MAX_DELAY, FIRST_DELAY * 2.0 ** (count - 1))
