"""What a benchmark line carries, and the ledger that proves none was lost or broken.

Every line the load generator sends carries one token, ``~SENDER:SEQ:CHECK~``: the
sending client's index, its sequence number and a check digit of the two. The token is
recognised anywhere in a received line, whatever decoration the server adds around it
(``<guest3> ``, ``<user3> ``, a timestamp), so any chat server can be measured. From
the tokens a receiver got, `verify` proves completeness (no line lost), per-sender order (no
repeat, no overtaking), and intact lines (a token cut short, or two lines run together, leave
a `~` that no whole token accounts for).

The check runs on the bytes captured during the timed window, right after the clock
stops, so that checking does not slow down what is measured.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MARKER = b"~"

# A whole line holding exactly one token: decoration may come before and after it, but
# no second marker and no line break. Anything else with a marker in it is broken.
_LINE = re.compile(rb"^[^~\n]*~(\d+):(\d+):(\d+)~[^~\n]*\n", re.M)

# Lines look like short chat messages (about 40 bytes with the server's prefix); the
# filler makes them long enough that the relay's per-byte costs show too.
FILLER = b"lorem ipsum dolor sit amet"


def check_digit(sender: int, seq: int) -> int:
    return (sender * 7919 + seq * 31) % 997


def token(sender: int, seq: int) -> bytes:
    return b"~%d:%d:%d~" % (sender, seq, check_digit(sender, seq))


def line(sender: int, seq: int) -> bytes:
    return b"m " + token(sender, seq) + b" " + FILLER + b"\n"


def stream(sender: int, count: int, first: int = 0) -> bytes:
    """The bytes a sender sends: ``count`` lines, sequence numbers from ``first``."""
    return b"".join([line(sender, seq) for seq in range(first, first + count)])


def markers_per(count: int) -> int:
    """Markers a receiver sees for ``count`` whole lines (two per token)."""
    return 2 * count


@dataclass
class Tally:
    """What one or more receivers got, against what they should have got."""

    delivered: int = 0
    lost: int = 0
    reordered: int = 0
    corrupt: int = 0
    broken: int = 0  # stray markers: lines cut short or run together
    unexpected: int = 0  # tokens from a sender this receiver should not hear
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not (self.lost or self.reordered or self.corrupt or self.broken or self.unexpected)

    def add(self, other: Tally) -> None:
        self.delivered += other.delivered
        self.lost += other.lost
        self.reordered += other.reordered
        self.corrupt += other.corrupt
        self.broken += other.broken
        self.unexpected += other.unexpected
        for problem in other.problems:
            if len(self.problems) < 5:  # a few examples say enough
                self.problems.append(problem)

    def summary(self) -> str:
        if self.valid:
            return "complete and in order"
        parts = [
            f"{value} {label}"
            for value, label in (
                (self.lost, "lost"),
                (self.reordered, "repeated or out of order"),
                (self.corrupt, "corrupt"),
                (self.broken, "broken lines"),
                (self.unexpected, "unexpected"),
            )
            if value
        ]
        return ", ".join(parts)

    def as_dict(self) -> dict[str, object]:
        return {
            "delivered": self.delivered,
            "lost": self.lost,
            "reordered": self.reordered,
            "corrupt": self.corrupt,
            "broken": self.broken,
            "unexpected": self.unexpected,
            "valid": self.valid,
            "summary": self.summary(),
            "examples": list(self.problems),
        }


def verify(
    data: bytes, expected: Mapping[int, int], *, own: int | None = None, first: int = 0
) -> Tally:
    """Check what one receiver got: from each sender in ``expected``, sequence numbers
    ``first`` .. ``first + count - 1``, each once, in order, intact.

    Tokens from ``own`` (the receiver itself: some servers echo) are ignored.
    """
    tally = Tally()
    found = _LINE.findall(data)
    stray = data.count(MARKER) - 2 * len(found)
    if stray:
        tally.broken += (stray + 1) // 2
        tally.problems.append(f"{stray} markers outside whole lines")
    following = dict.fromkeys(expected, first)
    for raw_sender, raw_seq, raw_check in found:
        sender, seq = int(raw_sender), int(raw_seq)
        if int(raw_check) != check_digit(sender, seq):
            tally.corrupt += 1
            continue
        nxt = following.get(sender)
        if nxt is None:
            if sender != own:
                tally.unexpected += 1
            continue
        tally.delivered += 1
        if seq == nxt:
            following[sender] = seq + 1
        elif seq > nxt:
            tally.lost += seq - nxt
            tally.problems.append(f"from {sender}: expected {nxt}, got {seq}")
            following[sender] = seq + 1
        else:
            # Seen a later one already: a repeat or a late arrival, either way not FIFO.
            tally.reordered += 1
            tally.problems.append(f"from {sender}: {seq} after {nxt - 1}")
    for sender, count in expected.items():
        missing = first + count - following[sender]
        if missing > 0:
            tally.lost += missing
            tally.problems.append(f"from {sender}: {missing} never arrived")
    return tally


def verify_all(
    received: Iterable[tuple[int, bytes]], senders: Mapping[int, int], first: int = 0
) -> Tally:
    """Verify many receivers that each should hear every sender in ``senders`` but itself."""
    total = Tally()
    for receiver, data in received:
        expected = {s: n for s, n in senders.items() if s != receiver}
        total.add(verify(data, expected, own=receiver, first=first))
    return total


# Receivers used as references by `order_disagreement`: for any two lines, one of three
# receivers is the sender of neither, so it got both.
ORDER_REFERENCES = 3


def order_disagreement(received: Iterable[tuple[int, bytes]]) -> str | None:
    """Whether any two receivers saw lines they both got in different orders (the room's
    one order: what a cluster of servers must keep); the first disagreement, or None.

    Every receiver is compared with `ORDER_REFERENCES` reference receivers, not with every
    other one: for any two lines there is a reference that got both (it sent neither), so
    a receiver agreeing with every reference agrees with every other receiver (on complete
    deliveries, which `verify` proves separately).
    """
    orders = {r: [(int(s), int(q)) for s, q, _ in _LINE.findall(data)] for r, data in received}
    references = sorted(orders)[:ORDER_REFERENCES]
    for ref in references:
        position = {key: i for i, key in enumerate(orders[ref])}
        for receiver, order in orders.items():
            last: tuple[int, int] | None = None
            for key in order:
                at = position.get(key)
                if at is None:
                    continue
                if last is not None and at < position[last]:
                    return (
                        f"receivers {ref} and {receiver} disagree on the order of "
                        f"{last[0]}:{last[1]} and {key[0]}:{key[1]}"
                    )
                last = key
    return None
