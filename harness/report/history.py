"""The run's messages as the pictures draw them: who sent what, when, and what became of it.

A `History` is built once from a `RunRecord` (plain data, read-only) and shared by the
sequence diagram, the delivery timeline and the HTML report, so the three never disagree
about which message was lost or damaged. Each counted message sent gets a `Message`; each
of its fates at a receiver is a `Delivery`: delivered, delivered again (a duplicate),
damaged (a broken piece or an altered token that names it) or lost (an expected receiver
never saw it). Damage that names no message the harness sent is an `Orphan`.

The first offending messages are read from the failed checks generically: every failed
`CheckResult` whose ``offender`` is ``sender#seq`` of a message marks that message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.checks import FAIL, CheckResult
from harness.transcript import COUNTED, RunRecord

DELIVERED = "delivered"
DUPLICATE = "duplicate"
DAMAGED = "damaged"
LOST = "lost"

_OFFENDER = re.compile(r"^([A-Za-z0-9_]+)#(\d+)$")


@dataclass
class Delivery:
    """One fate of a message at one receiver; ``t`` is None for a loss."""

    receiver: str
    outcome: str  # DELIVERED, DUPLICATE, DAMAGED or LOST
    t: float | None
    index: int = -1  # the receiver's transcript line, -1 for a loss
    why: str = ""  # for damage: what was wrong


@dataclass
class Message:
    """One counted message the harness sent, with everything that became of it."""

    sender: str
    seq: int
    text: str
    t: float
    index: int  # the sender's transcript line
    deliveries: list[Delivery] = field(default_factory=list)
    offends: list[str] = field(default_factory=list)  # failed checks naming it

    @property
    def key(self) -> tuple[str, int]:
        return (self.sender, self.seq)

    @property
    def name(self) -> str:
        return f"{self.sender}#{self.seq}"

    def label(self, width: int = 22) -> str:
        """``sender#seq`` and the start of its text, for an arrow."""
        text = self.text if len(self.text) <= width else self.text[: width - 1] + "…"
        return f"{self.name} {text}"

    def outcomes(self) -> set[str]:
        return {d.outcome for d in self.deliveries}


@dataclass
class Orphan:
    """Damage at a receiver that names no message the harness sent."""

    receiver: str
    t: float
    index: int
    why: str


@dataclass
class History:
    """Every counted message of a run in send order, and the damage nobody sent."""

    parties: list[str]
    messages: list[Message]
    orphans: list[Orphan]
    start: float
    end: float
    failed: list[str]  # names of the failed checks, in check order

    def by_key(self) -> dict[tuple[str, int], Message]:
        return {m.key: m for m in self.messages}

    def offenders(self) -> list[Message]:
        """Messages named by a failed check, earliest sent first."""
        return [m for m in self.messages if m.offends]

    def first_offender(self) -> Message | None:
        found = self.offenders()
        return found[0] if found else None

    def directions(self) -> list[tuple[str, str]]:
        """(sender, receiver) pairs that carried or should have carried a message."""
        seen: dict[tuple[str, str], None] = {}
        for m in self.messages:
            for d in m.deliveries:
                seen.setdefault((m.sender, d.receiver), None)
        return list(seen)


def parse_offender(offender: str) -> tuple[str, int] | None:
    """``p1#17`` -> ("p1", 17); anything else (``p2#?``, an address) -> None."""
    match = _OFFENDER.match(offender.strip())
    return (match.group(1), int(match.group(2))) if match else None


def build(record: RunRecord, checks: Sequence[CheckResult] = ()) -> History:
    """The run's `History`: a pure function of the record and the check results."""
    messages: list[Message] = []
    for name, log in list(record.parties.items()):
        for s in log.sent:
            if s.token.kind in COUNTED:
                messages.append(Message(name, s.token.seq, s.token.payload, s.t, s.index))
    messages.sort(key=lambda m: (m.t, m.sender, m.seq))
    by_key = {m.key: m for m in messages}
    originals = {s.token.key: s.token for log in record.parties.values() for s in log.sent}
    orphans: list[Orphan] = []
    for receiver, log in list(record.parties.items()):
        lines = log.snapshot()
        seen: set[tuple[str, int]] = set()
        for r in log.received:
            if r.token.kind not in COUNTED:
                continue  # room-sync hellos: late joiners may miss them, never counted
            msg = by_key.get(r.token.key)
            original = originals.get(r.token.key)
            if msg is None or original != r.token:
                why = "never sent by the harness" if msg is None else "altered"
                if msg is None:
                    orphans.append(Orphan(receiver, r.t, r.index, f"{r.token}: {why}"))
                else:
                    msg.deliveries.append(Delivery(receiver, DAMAGED, r.t, r.index, why))
                continue
            outcome = DUPLICATE if r.token.key in seen else DELIVERED
            seen.add(r.token.key)
            msg.deliveries.append(Delivery(receiver, outcome, r.t, r.index))
        for index, dmg in log.damage:
            t = lines[index].t if index < len(lines) else 0.0
            msg = by_key.get((dmg.sender, dmg.seq))
            if msg is None:
                orphans.append(Orphan(receiver, t, index, f"{dmg.reason}: {dmg.text[:40]}"))
            else:
                msg.deliveries.append(Delivery(receiver, DAMAGED, t, index, dmg.reason))
    for exp in record.expectations:
        for sender in exp.senders:
            for msg in (m for m in messages if m.sender == sender):
                if not any(d.receiver == exp.receiver for d in msg.deliveries):
                    msg.deliveries.append(Delivery(exp.receiver, LOST, None))
    failed = [c.name for c in checks if c.status == FAIL]
    for c in checks:
        key = parse_offender(c.offender) if c.status == FAIL else None
        if key is not None and key in by_key:
            by_key[key].offends.append(c.name)
    times = [m.t for m in messages]
    times += [d.t for m in messages for d in m.deliveries if d.t is not None]
    times += [o.t for o in orphans]
    start = min(times, default=0.0)
    end = max([*times, start])
    return History(list(record.parties), messages, orphans, start, end, failed)
