"""Tokens: the only way the harness recognises a message.

Rules this module owns: a token is self-describing (sender, sequence number, kind, payload
and a CRC-32 of all of them), it is found anywhere inside a received line whatever a
server puts around it (``<alice> ``, ``<user5> ``, colours, timestamps), and a token that
arrives cut, spliced or altered is never mistaken for a good one: it is reported as damage.

Wire form (printable ASCII framing, so any line-based chat box relays it untouched)::

    ~cbx|SENDER|SEQ|KIND|PAYLOAD|CRC32HEX~

``KIND`` is ``m`` for a counted message and ``h`` for a hello (a sync probe that late
joiners may legitimately miss). ``PAYLOAD`` is any text without ``|``, ``~``, CR or LF.
"""

from __future__ import annotations

import random
import re
import string
import zlib
from dataclasses import dataclass, field

MESSAGE = "m"
HELLO = "h"
KINDS = (MESSAGE, HELLO)

_FULL = re.compile(r"~cbx\|([A-Za-z0-9_]+)\|(\d+)\|([mh])\|([^|~\r\n]*)\|([0-9a-f]{8})~")
# Pieces of a token that did not arrive whole: its head (which names the sender) or its
# tail (whose CRC names the token, if the harness sent it).
_HEAD = re.compile(r"cbx\|(?:([A-Za-z0-9_]+)(?:\|(\d+))?)?")
_TAIL = re.compile(r"\|([0-9a-f]{8})~")
_FORBIDDEN = re.compile(r"[|~\r\n]")
PIPES_PER_TOKEN = 5  # "|" in a whole token: after cbx, the sender, SEQ, KIND and PAYLOAD

# Characters random payloads are drawn from: printable, no framing characters, nothing a
# chat server has a reason to rewrite (no leading '/', no control characters).
_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Token:
    """One message as the harness sent it, or as it was read back intact."""

    sender: str
    seq: int
    kind: str
    payload: str
    # What identifies a message across the run: (sender, sequence number). Made once:
    # the checks alone look it up over a million times in a run of 100 parties.
    key: tuple[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.sender, self.seq))

    @property
    def crc(self) -> str:
        return checksum(self.sender, self.seq, self.kind, self.payload)

    def encode(self) -> str:
        return f"~cbx|{self.sender}|{self.seq}|{self.kind}|{self.payload}|{self.crc}~"

    def __str__(self) -> str:
        return f"{self.sender}#{self.seq}"


@dataclass(frozen=True)
class Damage:
    """Something token-like that did not arrive intact.

    ``sender``/``seq`` are known when the damaged piece still names them (or its CRC is
    one the harness sent); otherwise they are empty/-1.
    """

    sender: str
    seq: int
    text: str
    reason: str


def checksum(sender: str, seq: int, kind: str, payload: str) -> str:
    data = f"{sender}|{seq}|{kind}|{payload}".encode()
    return f"{zlib.crc32(data):08x}"


def make(sender: str, seq: int, payload: str, kind: str = MESSAGE) -> Token:
    """Build a token; ``payload`` must not contain the framing characters."""
    if _FORBIDDEN.search(payload):
        raise ValueError(f"payload may not contain | ~ CR or LF: {payload!r}")
    if kind not in KINDS:
        raise ValueError(f"unknown token kind {kind!r}")
    return Token(sender, seq, kind, payload)


def clean_payload(text: str) -> str:
    """Make free text (a conversation script line) usable as a payload."""
    return _FORBIDDEN.sub(" ", text)


def random_payload(rng: random.Random, low: int = 8, high: int = 48) -> str:
    return "".join(rng.choices(_ALPHABET, k=rng.randint(low, high)))


@dataclass
class Scan:
    """What one received line held: intact tokens and damaged pieces, in line order."""

    tokens: list[Token]
    damage: list[Damage]
    # Where each intact token sits in the line, parallel to ``tokens``: (start, end).
    spans: list[tuple[int, int]] = field(default_factory=list)


def scan(line: str, known_crcs: dict[str, tuple[str, int]] | None = None) -> Scan:
    """Find every token in ``line``, and every piece of one that is not whole.

    ``known_crcs`` maps the CRC of each token the harness sent to its (sender, seq), so
    that a lone tail can be attributed to the message it came from.
    """
    tokens: list[Token] = []
    damage: list[Damage] = []
    spans: list[tuple[int, int]] = []
    covered: list[tuple[int, int]] = []
    for match in _FULL.finditer(line):
        sender, seq_text, kind, payload, crc = match.groups()
        seq = int(seq_text)
        covered.append(match.span())
        if checksum(sender, seq, kind, payload) == crc:
            tokens.append(Token(sender, seq, kind, payload))
            spans.append(match.span())
        else:
            damage.append(Damage(sender, seq, match.group(0), "checksum mismatch"))

    if line.count("|") == PIPES_PER_TOKEN * len(covered):
        # Every "|" is inside a whole token: no piece of one (a head "cbx|...", a tail
        # "|crc~") can start outside them. The common line, and the scans below are most
        # of the harness's reading CPU.
        return Scan(tokens, damage, spans)

    def outside(start: int) -> bool:
        return not any(a <= start < b for a, b in covered)

    for match in _HEAD.finditer(line):
        if outside(match.start()):
            sender = match.group(1) or ""
            seq = int(match.group(2)) if match.group(2) else -1
            why = "broken token: its start without its end (cut short or split)"
            damage.append(Damage(sender, seq, _context(line, match.start()), why))
    for match in _TAIL.finditer(line):
        if outside(match.start()):
            sender, seq = (known_crcs or {}).get(match.group(1), ("", -1))
            why = "broken token: its end without its start (split or spliced)"
            damage.append(Damage(sender, seq, _context(line, match.start()), why))
    return Scan(tokens, damage, spans)


def _context(line: str, at: int, width: int = 40) -> str:
    return line[max(0, at - width) : at + width]
