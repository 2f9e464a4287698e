"""The chatbox line protocol, sans-IO: bytes in, events out; events in, bytes out.

Everything a client can send and everything the server says lives here: line framing
and its limit, the UTF-8 and unsafe-character rules, names, command parsing, the text
of every server line and the patterns that read those lines back. No sockets: the
server's worker feeds received bytes to a `LineDecoder` and its room parses commands and
formats replies with the functions below; the client reads the server's lines with the
same patterns and lists the same commands. All of it is unit-tested without a network.
docs/protocol.md is the reference.

Speed matters here (every relayed byte passes through `LineDecoder.feed`), so the common
case - printable ASCII lines - is handled by whole-chunk bytes operations that run in C,
and only chunks that contain something unusual are decoded and scanned line by line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_LINE = 4096
MAX_NAME = 24

# Bytes that never need a second look: printable ASCII, TAB and the LF that frames lines.
# A chunk made only of these is relayed (and shown) as it is.
PLAIN_BYTES = bytes(range(0x20, 0x7F)) + b"\t\n"

# The unsafe-character rule, in one place, for both sides: what the server replaces in
# names, text and its logs, and what a client spells out instead of showing.
# - C0 controls except TAB, DEL and C1 controls: no client may drive another client's
#   terminal (ESC sequences, bell, backspace tricks, NUL).
# - Characters that make a line read otherwise than it is: the line and paragraph
#   separators U+2028/2029 (a line break to some displays, none to the protocol), the
#   bidirectional embeddings, overrides and isolates U+202A-202E, U+2066-2069
#   ("Trojan Source": text shown in another order than sent), and the zero-width
#   characters U+200B-200F, U+2060, U+FEFF (names and words that look alike but are
#   not). Right-to-left text needs none of them: the Unicode bidi algorithm orders it
#   by itself.
# - The zero-width joiner U+200D is one of those, except between two emoji (after a
#   variation selector or skin tone too): there it builds one emoji from several
#   (family, flag and profession sequences), shows as that emoji, and hides nothing.
_CONTROL_CHARS = "\x00-\x08\x0a-\x1f\x7f-\x9f"
_INVISIBLE_CHARS = "\u200b\u200c\u200e\u200f\u2028-\u202e\u2060\u2066-\u2069\ufeff"
_EMOJI = "\u2600-\u27bf\U0001f000-\U0001faff"
UNSAFE = re.compile(
    f"[{_CONTROL_CHARS}{_INVISIBLE_CHARS}]|(?<![{_EMOJI}\ufe0f])\u200d|\u200d(?![{_EMOJI}])"
)
REPLACEMENT = "\ufffd"

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-.\[\]{}|]*\Z")

# Names nobody may take, because a notice starts with them: "* server shutting down",
# "* you are now known as X", "* welcome X; ...", "* here (N): ...". A member called
# "server" whose leaving reads "* server left (quit)" would look like the server going.
RESERVED_NAMES = frozenset({"server", "you", "welcome", "here"})


@dataclass(frozen=True)
class Lines:
    """Complete, sanitised lines, each ending in LF, ready to relay as one block."""

    block: bytes


@dataclass(frozen=True)
class LineTooLong:
    """A line longer than the limit was received and discarded."""

    limit: int


Event = Lines | LineTooLong


def sanitize(text: str) -> str:
    """Replace every unsafe character (`UNSAFE`: controls but TAB, invisible and
    reordering characters) with U+FFFD."""
    return UNSAFE.sub(REPLACEMENT, text)


def _clean_block(block: bytes) -> bytes:
    """Complete lines (each ending in LF) made safe; empty lines dropped."""
    # Plain bytes (the common case) hold no CR either: one scan tells both.
    unusual = block.translate(None, PLAIN_BYTES)
    if unusual and b"\r\n" in block:
        block = block.replace(b"\r\n", b"\n")
        unusual = block.translate(None, PLAIN_BYTES)
    if unusual:
        # Something unusual: decode as a whole (valid UTF-8 never spans a LF, so this
        # equals decoding line by line) and replace controls, keeping the LF framing.
        text = block.decode("utf-8", "replace")
        block = "\n".join(sanitize(part) for part in text.split("\n")).encode()
    if block.startswith(b"\n") or b"\n\n" in block:
        block = b"".join(line + b"\n" for line in block.split(b"\n") if line)
    return block


class LineDecoder:
    """Splits a byte stream into sanitised lines and enforces the line length limit.

    ``feed`` takes whatever ``recv`` returned and gives back events in stream order.
    Bytes after the last LF wait for the next call. A line longer than ``max_line``
    bytes (line ending not counted) yields one `LineTooLong` and is discarded up to and
    including its LF - also when it never gets an LF and just keeps growing.
    """

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self._partial = b""
        self._discarding = False  # inside an overlong line already reported

    def feed(self, data: bytes) -> list[Event]:
        if (
            data.endswith(b"\n")
            and len(data) <= self.max_line + 1
            and not self._partial
            and not self._discarding
        ):
            # The common case - whole short lines, nothing waiting - in one step: what
            # the general path below does with it, without its splitting and holding.
            block = _clean_block(data)
            return [Lines(block)] if block else []
        events: list[Event] = []
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return events
            self._discarding = False
            data = data[end + 1 :]
        if self._partial:
            data = self._partial + data
            self._partial = b""
        last = data.rfind(b"\n")
        if last < 0:
            self._hold(data, events)
            return events
        complete, rest = data[: last + 1], data[last + 1 :]
        # Fast path: no line can be too long if the whole block is no longer than one
        # line of the limit and its LF. (Not +2 for a CR too: max-line + 1 bytes and an
        # LF would pass; a CRLF line of exactly max-line bytes takes the check below.)
        if len(complete) <= self.max_line + 1 or not self._has_long_line(complete):
            block = _clean_block(complete)
            if block:
                events.append(Lines(block))
        else:
            self._split_long(complete, events)
        self._hold(rest, events)
        return events

    @property
    def holding(self) -> bool:
        """Part of a line has arrived and waits for the rest (or for the end of an
        overlong line being discarded)."""
        return self._discarding or bool(self._partial)

    def _has_long_line(self, complete: bytes) -> bool:
        limit = self.max_line
        return any(len(line.removesuffix(b"\r")) > limit for line in complete.split(b"\n"))

    def _split_long(self, complete: bytes, events: list[Event]) -> None:
        good: list[bytes] = []
        for line in complete[:-1].split(b"\n"):
            if len(line.removesuffix(b"\r")) > self.max_line:
                if good:
                    self._emit(good, events)
                    good = []
                events.append(LineTooLong(self.max_line))
            else:
                good.append(line)
        if good:
            self._emit(good, events)

    @staticmethod
    def _emit(lines: list[bytes], events: list[Event]) -> None:
        block = _clean_block(b"\n".join(lines) + b"\n")
        if block:
            events.append(Lines(block))

    def _hold(self, rest: bytes, events: list[Event]) -> None:
        # +1: a CR may be waiting for its LF and does not count towards the limit.
        if len(rest) > self.max_line + 1:
            events.append(LineTooLong(self.max_line))
            self._discarding = True
        else:
            self._partial = rest


# --- names -------------------------------------------------------------------------------


def name_error(name: str) -> str | None:
    """Why ``name`` is not a valid name, or None if it is (uniqueness is the room's job)."""
    if len(name) <= MAX_NAME and _NAME.match(name):
        return None
    return (
        f"invalid name {name!r}: use 1-{MAX_NAME} letters, digits or _-.[]{{}}| "
        "starting with a letter"
    )


def name_key(name: str) -> str:
    """The form in which names are compared: unique case-insensitively."""
    return name.casefold()


def name_reserved(name: str) -> bool:
    """Whether ``name`` is one a notice could be mistaken for (`RESERVED_NAMES`)."""
    return name_key(name) in RESERVED_NAMES


# What the server answers to /nick NAME, for the one who asked: the room says these,
# and a client that asked for NAME reads its verdict with `nick_verdict`.
def name_taken(name: str) -> str:
    return f"name {name!r} is taken"


def name_is_reserved(name: str) -> str:
    return f"name {name!r} is reserved"


def already_named(name: str) -> str:
    return f"you are already {name}"


MSG_TO_YOURSELF = "that is you: /msg sends to someone else"


def you_renamed(name: str) -> str:
    return f"you are now known as {name}"


# --- commands ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Chat:
    text: str


@dataclass(frozen=True)
class Nick:
    name: str


@dataclass(frozen=True)
class Who:
    pass


@dataclass(frozen=True)
class Private:
    name: str
    text: str


@dataclass(frozen=True)
class Action:
    text: str


@dataclass(frozen=True)
class Quit:
    reason: str


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class History:
    count: int


@dataclass(frozen=True)
class Resume:
    """``/resume [ID]``: replay what followed ID, then mark the asker's place with
    ``[id] ID`` lines from now on (``since`` None: only the marks)."""

    since: str | None


@dataclass(frozen=True)
class Invalid:
    """A line the room answers with an error line only to its sender."""

    message: str


Command = Chat | Nick | Who | Private | Action | Quit | Help | History | Resume | Invalid

# /history replays this many lines unless asked for another count, and at most the other.
HISTORY_DEFAULT = 20
HISTORY_MAX = 500
# /resume replays at most this many of the lines missed (the latest ones): a client away
# for a day gets a screenful it can read, not the whole log through its --sendq.
RESUME_MAX = 1000

COMMAND_HELP = (
    ("/nick NAME", "change your name"),
    ("/who", "list who is here"),
    ("/msg NAME TEXT", "send TEXT to NAME only"),
    ("/me ACTION", "say what you are doing: * you ACTION"),
    ("/quit [REASON]", "leave the chat"),
    ("/history [N]", f"replay the last N lines (default {HISTORY_DEFAULT})"),
    ("/resume [ID]", "replay what was said since ID; mark your place with [id] lines"),
    ("/help", "show this help"),
    ("//TEXT", "send a line that starts with /"),
)

# What a client offers to complete a command word to: the commands above, by name.
COMMANDS = tuple(sorted(usage.split()[0] for usage, _ in COMMAND_HELP if usage[1] != "/"))


_BLANK = re.compile(r"[ \t]+")
# A place in the room's history, as `id_line` says it: a stream id in a cluster
# (``1733212345678-0``), an epoch and a sequence number on a single server (``a1b2c3.42``).
_HISTORY_ID = re.compile(r"[0-9a-z]{1,32}[.-][0-9]{1,20}")


def _first_word(text: str) -> tuple[str, str]:
    """A word and the rest, split at the first blank: a TAB is a blank as a space is
    (a client that takes ``/quit<TAB>bye`` for a quit must find the server agreeing)."""
    blank = _BLANK.search(text)
    if blank is None:
        return text, ""
    return text[: blank.start()], text[blank.end() :].strip()


def parse_line(line: str) -> Command:
    """What one sanitised, non-empty line asks for."""
    if not line.startswith("/"):
        return Chat(line)
    if line.startswith("//"):
        return Chat(line[1:])
    word, rest = _first_word(line[1:])
    verb = word.lower()
    if verb == "nick":
        return Nick(rest) if rest else Invalid("usage: /nick NAME")
    if verb == "who":
        return Who()
    if verb == "msg":
        name, text = _first_word(rest)
        return Private(name, text) if name and text else Invalid("usage: /msg NAME TEXT")
    if verb == "me":
        return Action(rest) if rest else Invalid("usage: /me ACTION")
    if verb == "quit":
        return Quit(rest or "quit")
    if verb == "help":
        return Help()
    if verb == "history":
        if not rest:
            return History(HISTORY_DEFAULT)
        if rest.isdigit() and 0 < int(rest) <= HISTORY_MAX:
            return History(int(rest))
        return Invalid(f"usage: /history [N], N from 1 to {HISTORY_MAX}")
    if verb == "resume":
        if not rest or _HISTORY_ID.fullmatch(rest):
            return Resume(rest or None)
        return Invalid("usage: /resume [ID], ID as an [id] line gave it")
    if verb == "pass":
        # The password gate takes /pass before a client is in the room; in it, a
        # /pass (a client that sends its password unasked) is answered, never relayed.
        return Invalid("no password is asked for now")
    return Invalid(f"unknown command '/{word}' (try /help)")


def has_command(block: bytes) -> bool:
    """Whether a block of complete lines holds a command line (or an escaped ``//``
    line, which needs its escape taken off): the common block of chat has neither and
    is relayed as it is, without looking at each line."""
    return block.startswith(b"/") or b"\n/" in block


# What a room's command handler says after one command line (`split_commands`).
TAKEN = 0  # handled: go on with the next line
WAIT = 1  # not handled (its reply would not fit): this line and those after come back
WAIT_AFTER = 2  # handled, but it waits for something: the lines after it come back
GONE = 3  # handled, and the sender has left: the rest is dropped


def split_commands(
    block: bytes, chat: Callable[[bytes], None], command: Callable[[bytes], int]
) -> bytes:
    """Hand a block of complete lines (each ending in LF) from one client over in
    order: each run of chat lines to ``chat`` as one block (a leading ``//`` unescaped
    to ``/``), each command line alone to ``command``, which says how far it got
    (`TAKEN`, `WAIT`, `WAIT_AFTER`, `GONE`). Returns the lines not handled, as they
    came, to be handed over again later (empty when all were).

    One rule for both rooms (`chatbox.server.room`, `chatbox.server.cluster_room`):
    what is a command and where a run of chat ends is the protocol's to say."""
    run: list[bytes] = []
    lines = block[:-1].split(b"\n")
    for index, line in enumerate(lines):
        if line.startswith(b"/") and not line.startswith(b"//"):
            if run:
                chat(b"\n".join(run) + b"\n")
                run = []
            outcome = command(line)
            if outcome == WAIT:
                return b"\n".join(lines[index:]) + b"\n"
            if outcome == GONE:
                return b""
            if outcome == WAIT_AFTER:
                rest = lines[index + 1 :]
                return b"\n".join(rest) + b"\n" if rest else b""
        else:
            run.append(line[1:] if line.startswith(b"//") else line)
    if run:
        chat(b"\n".join(run) + b"\n")
    return b""


# --- what the server says ----------------------------------------------------------------


def chat_prefix(name: str) -> bytes:
    """What precedes each of NAME's chat lines: ``<NAME> ``."""
    return f"<{name}> ".encode()


def prefix_block(prefix: bytes, block: bytes) -> bytes:
    """Prefix every line of a block (lines ending in LF) in one C-level pass."""
    return prefix + block[:-1].replace(b"\n", b"\n" + prefix) + b"\n"


def notice(text: str) -> bytes:
    return f"* {text}\n".encode()


def error(text: str) -> bytes:
    return f"! {text}\n".encode()


def private_line(sender: str, text: str) -> bytes:
    return f"[private] <{sender}> {text}\n".encode()


def action_line(name: str, text: str) -> bytes:
    """``/me`` as the others see it: ``* <NAME> TEXT``. A notice's text never starts
    with ``<`` (a name cannot contain one), so no action reads as a notice."""
    return f"* <{name}> {text}\n".encode()


# The welcome names at most this many of the others: in a room of thousands, a welcome
# listing everyone would be kilobytes long, built for every join. /who lists everyone.
WELCOME_NAMES = 20


def welcome(name: str, others: list[str], count: int | None = None) -> bytes:
    """The newcomer's first line; ``others`` may be cut short, ``count`` says how many."""
    total = len(others) if count is None else count
    if not total:
        return notice(f"welcome {name}; nobody else is here yet")
    listed = ", ".join(others[:WELCOME_NAMES])
    if total > WELCOME_NAMES:
        listed += f" and {total - WELCOME_NAMES} more (/who lists everyone)"
    return notice(f"welcome {name}; also here: {listed}")


# A coalesced join or leave notice names this many and counts the rest, so its length is
# bounded however many arrived or went in one hub turn.
NOTICE_NAMES = 3


def arrivals(names: list[str], total: int, what: str) -> bytes:
    """One notice for ``total`` members who joined or left together (``what`` is
    ``joined`` or ``left (REASON)``), naming the first `NOTICE_NAMES` of ``names``:
    ``* alice joined``, ``* alice and bob joined``, ``* alice, bob, carol and 37 others
    joined``."""
    named = names[: min(total, NOTICE_NAMES)]
    rest = total - len(named)
    if rest:
        listed = f"{', '.join(named)} and {rest} other{'s' if rest > 1 else ''}"
    elif len(named) > 1:
        listed = f"{', '.join(named[:-1])} and {named[-1]}"
    else:
        listed = named[0]
    return notice(f"{listed} {what}")


# A replayed line: never confused with a live one, which starts with `<`, `[private] `,
# `* ` or `! `.
HISTORY_PREFIX = b"[history] "


def history_lines(lines: list[bytes]) -> bytes:
    """``lines`` (each ending in LF) marked as replayed, between two notices."""
    body = b"".join(HISTORY_PREFIX + line for line in lines)
    return notice(f"history: the last {len(lines)} lines") + body + notice("end of history")


# A mark sent only to a client that asked with /resume: everything public up to ID has
# been sent to it (or said by it). Starts with `[`, as private and replayed lines do, so
# it never reads as a chat line, a notice or an error.
ID_PREFIX = b"[id] "


def id_line(history_id: str) -> bytes:
    return ID_PREFIX + history_id.encode() + b"\n"


def resume_lines(lines: list[bytes], since: str, complete: bool, repeated: int = 0) -> bytes:
    """What /resume SINCE replays: the missed ``lines`` marked as history, between two
    notices; ``complete`` False when lines after SINCE are gone (or SINCE is unknown);
    ``repeated``: how many of the live lines sent before this reply the asker had
    already been sent before (a cluster node behind the one it came from)."""
    body = b"".join(HISTORY_PREFIX + line for line in lines)
    gap = "" if complete else " (older ones are no longer kept)"
    again = f"; the {repeated} live lines before this repeat what you had" if repeated else ""
    head = notice(f"history: {len(lines)} lines since {since}{gap}{again}")
    return head + body + notice("end of history")


# The head of a /resume reply; group 1 counts the live lines before it that repeat.
RESUME_HEAD_LINE = re.compile(
    r"\* history: \d+ lines since [^\s;]+(?: \([^)]*\))?"
    r"(?:; the (\d+) live lines before this repeat)?"
)


def help_lines() -> bytes:
    return b"".join(notice(f"{usage:<16} {what}") for usage, what in COMMAND_HELP)


def line_too_long(limit: int) -> bytes:
    return error(f"line too long (max {limit} bytes)")


SERVER_SHUTTING_DOWN = notice("server shutting down")
TOO_SLOW = error("disconnected: too slow")
FLOODING = error("disconnected: flooding")
# A cluster node cut off from Redis for longer than its lease: the others were told its
# members left, and their names may be someone else's now.
CUT_OFF = error("disconnected: this server was cut off from the cluster")
# Input timeouts (--idle-timeout, --line-timeout): sent nothing at all; began a line and
# did not finish it.
IDLE = error("disconnected: idle")
UNFINISHED_LINE = error("disconnected: unfinished line")
# The server could not start a worker for this connection (out of processes or threads).
SERVER_BUSY = error("server busy, try again later")


def server_full(limit: int) -> bytes:
    return error(f"server full (max {limit} clients)")


# Admission (chatbox.server.admission): refusals told to the one refused.
CONNECTING_TOO_FAST = error("connecting too fast, try again later")


def too_many_connections(limit: int) -> bytes:
    return error(f"too many connections from your address (max {limit})")


# The password gate (`--password-file`): the first line a gated connection gets, what it
# must answer, and the verdict on a wrong answer (sent after a delay, then it is closed).
PASSWORD_REQUIRED = notice("password required")
PASS_COMMAND = "/pass"
WRONG_PASSWORD = error("wrong password")
PASSWORD_TIMEOUT = error("no password in time")
# What a client that speaks plain text to a TLS port is told, in plain text, before it
# is closed: without it, nc or telnet users would see a few bytes of noise and an end.
TLS_REQUIRED = error("this server speaks TLS: connect with TLS (chatbox-client --tls)")


def pass_line(secret: str) -> bytes:
    """What a client sends to be let in: ``/pass SECRET``."""
    return f"{PASS_COMMAND} {secret}\n".encode("utf-8", "surrogateescape")


def pass_secret(line: bytes) -> bytes | None:
    """The secret in a line ``/pass SECRET`` (the command in any case), else None.

    Everything after the first space is the secret, spaces included: a password may
    contain them."""
    word, space, secret = line.partition(b" ")
    if not space or word.lower() != PASS_COMMAND.encode():
        return None
    return secret


# --- reading what the server says --------------------------------------------------------
# The client's side of the lines above: patterns matched from the start of one received
# line (LF removed), so a client learns names and colours lines from the text alone.

# A chat line, private or not: group 1 is "[private] " or None, group 2 the sender. The
# bound keeps a line of angle brackets from passing for a name; it is generous next to
# MAX_NAME because other servers that speak this protocol may allow longer names.
CHAT_LINE = re.compile(r"(\[private\] )?<([^>\s]{1,64})> ")
# In a crowd the welcome names only the first few and counts the rest.
WELCOME_LINE = re.compile(r"\* welcome (\S+); also here: (.+?)(?: and \d+ more \(.*\))?$")
WELCOME_ALONE_LINE = re.compile(r"\* welcome (\S+); nobody else")
HERE_LINE = re.compile(r"\* here \(\d+\): (.*)$")
# A notice's name never starts with "<": that is an action ("* <NAME> TEXT").
_NOTICE_NAME = r"([^<\s]\S*)"
# A join or leave notice may name several (`arrivals`): group 1 is the first name, group
# 2 the whole list ("alice, bob and 3 others"); `notice_names` reads it.
_LISTED = r"[^<\s,][^\s,]*"
_NAMES = rf"({_LISTED})((?:, {_LISTED})*(?: and (?:\d+ others?|{_LISTED}))?)"
JOINED_LINE = re.compile(rf"\* {_NAMES} joined$")
LEFT_LINE = re.compile(rf"\* {_NAMES} left( \(.*\))?$")
RENAMED_LINE = re.compile(rf"\* {_NOTICE_NAME} is now known as (\S+)$")
YOU_RENAMED_LINE = re.compile(r"\* you are now known as (\S+)$")
ACTION_LINE = re.compile(r"\* <([^>\s]{1,64})> ")


_OTHERS = re.compile(r" and (\d+) others?$")


def notice_names(match: re.Match[str]) -> tuple[list[str], int]:
    """The names a `JOINED_LINE` or `LEFT_LINE` match lists, and how many it counts
    without naming them: ``* alice, bob and 3 others joined`` -> (["alice", "bob"], 3)."""
    listed = match.group(1) + match.group(2)
    others = 0
    counted = _OTHERS.search(listed)
    if counted:
        others = int(counted.group(1))
        return listed[: counted.start()].split(", "), others
    head, _, last = listed.rpartition(" and ")
    names = [*head.split(", "), last] if head else [last]
    return names, others


def nick_verdict(requested: str, line: str) -> tuple[bool, str] | None:
    """Whether ``line`` (LF removed) is the server's answer to our own ``/nick
    REQUESTED``: (accepted, what it said), or None for any other line.

    Only the lines the server sends to the one who asked count, each naming the
    requested name: another member's rename, real or imitated, is never the answer.
    """
    if line == notice(you_renamed(requested)).decode()[:-1]:
        return True, line[2:]
    if not line.startswith("! "):
        return None
    said = line[2:]
    if said == already_named(requested):
        return True, said
    refusals = (name_taken(requested), name_is_reserved(requested))
    if said in refusals or said.startswith(f"invalid name {requested!r}:"):
        return False, said
    return None
