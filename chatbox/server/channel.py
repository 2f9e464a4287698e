"""The channel between a worker and the hub: one byte stream carrying lines and notes.

A worker passes its client's sanitised lines up one end of a socketpair, and in the
same stream its own notes: that a line was too long, that the client closed or reset
the connection, and - for a connection that must pass a TLS handshake or the password
gate before it enters the room - that it passed (ready) or gave a wrong password; and
once, that the client has sent its first bytes (heard: even a bare newline, which never
crosses as a line). A
note is a line that starts with NUL, a byte no sanitised line can contain (the
protocol replaces it), so lines and notes need no framing beyond LF and
keep their order. The format is private to this pair: the worker writes with
`encode_event` and `end_note`, the hub reads with a `ChannelReader`, and the room only ever
sees what the reader decoded.

Speed matters here as in the protocol module: a block of chat lines - the common case -
crosses as one send and comes out as one `Lines`, found with one C-level scan for NUL.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatbox import protocol

# Starts every note; see the module docstring for why it cannot start a line.
NOTE_PREFIX = b"\x00"

_TOO_LONG = b"toolong"
_CLOSED = b"closed"
_RESET = b"reset"
_IDLE = b"idle"
_UNFINISHED = b"unfinished"
_READY = b"ready"
_REFUSED = b"refused"
_HEARD = b"heard"

# Why a connection ended, as the room tells the others.
_REASONS = {_CLOSED: "connection closed", _RESET: "connection reset"}
# A note this reader does not know (a newer worker, a bug) still ends the client cleanly.
_UNKNOWN_END = "connection lost"


def _note(kind: bytes) -> bytes:
    return NOTE_PREFIX + kind + b"\n"


# --- the worker's side -------------------------------------------------------------------


def encode_event(event: protocol.Event) -> bytes:
    """One decoder event as channel bytes: lines as they are, a too-long line as a note."""
    if isinstance(event, protocol.Lines):
        return event.block
    return _note(_TOO_LONG)


def end_note(reset: bool) -> bytes:
    """The last thing a worker sends: its client closed the connection, or reset it."""
    return _note(_RESET if reset else _CLOSED)


def timeout_note(idle: bool) -> bytes:
    """The worker timed its client out: silent too long, or a line begun and not
    finished in time. The worker goes on draining the client until the hub is done."""
    return _note(_IDLE if idle else _UNFINISHED)


def ready_note() -> bytes:
    """The client passed the handshake and the gate: it may enter the room now. What
    follows in the stream are its lines in the room."""
    return _note(_READY)


def heard_note() -> bytes:
    """The client has sent its first bytes in the room (a keepalive's bare newline
    counts, though it never reaches the hub as a line): it is not a silent connection."""
    return _note(_HEARD)


def refused_note() -> bytes:
    """The client's first line was not the password; the worker reads no more of it."""
    return _note(_REFUSED)


# --- the hub's side ----------------------------------------------------------------------


@dataclass(frozen=True)
class LineDropped:
    """The client sent a line longer than the limit; the worker discarded it."""


@dataclass(frozen=True)
class Ended:
    """The client's connection ended; ``reason`` is what the others are told."""

    reason: str


@dataclass(frozen=True)
class TimedOut:
    """The worker timed its client out: ``reason`` is what the others are told,
    ``notice`` the client's last line."""

    reason: str
    notice: bytes


# Also what the hub says to a silent connection it closes to make room.
IDLE = TimedOut("idle", protocol.IDLE)

_TIMEOUTS = {
    _IDLE: IDLE,
    _UNFINISHED: TimedOut("unfinished line", protocol.UNFINISHED_LINE),
}


@dataclass(frozen=True)
class Ready:
    """The client may enter the room (handshake and password passed)."""


@dataclass(frozen=True)
class Refused:
    """The client did not give the password; it waits for its verdict, then goes."""


@dataclass(frozen=True)
class Heard:
    """The client has sent something since it entered the room (once per client)."""


ChannelEvent = protocol.Lines | LineDropped | Ended | TimedOut | Ready | Refused | Heard


class ChannelReader:
    """Turns what the hub receives from one worker's channel into events, in order.

    ``feed`` takes whatever ``recv`` returned. Bytes after the last LF wait for the next
    call: a send from the worker may be split anywhere on the way.
    """

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[ChannelEvent]:
        if self._partial:
            data = self._partial + data
        last = data.rfind(b"\n")
        if last < 0:
            self._partial = data
            return []
        complete, self._partial = data[: last + 1], data[last + 1 :]
        if NOTE_PREFIX not in complete:
            return [protocol.Lines(complete)]
        events: list[ChannelEvent] = []
        start = 0
        # A note always starts a line: the worker sends only whole lines.
        while (at := complete.find(NOTE_PREFIX, start)) >= 0:
            if at > start:
                events.append(protocol.Lines(complete[start:at]))
            end = complete.index(b"\n", at)
            events.append(self._decode_note(complete[at + 1 : end]))
            start = end + 1
        if start < len(complete):
            events.append(protocol.Lines(complete[start:]))
        return events

    @staticmethod
    def _decode_note(kind: bytes) -> LineDropped | Ended | TimedOut | Ready | Refused | Heard:
        if kind == _TOO_LONG:
            return LineDropped()
        if kind == _HEARD:
            return Heard()
        if kind in _TIMEOUTS:
            return _TIMEOUTS[kind]
        if kind == _READY:
            return Ready()
        if kind == _REFUSED:
            return Refused()
        return Ended(_REASONS.get(kind, _UNKNOWN_END))
