"""Transcripts: what each party sent and received, with times, and what a run expected.

A transcript is plain data. Parties append to it while a scenario runs; `harness.checks`
reads it afterwards; `harness.report` draws it. Keeping it free of processes and sockets
is what lets the checks be unit-tested on synthetic transcripts.

Times are seconds since the run started (``time.monotonic`` based), so transcripts from
parties on the same harness are comparable.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from harness.tokens import HELLO, MESSAGE, Damage, Token, scan

SENT = ">"
RECEIVED = "<"
NOTE = "#"


@dataclass(frozen=True)
class Line:
    """One line of a party's transcript: something it sent, received, or a harness note."""

    t: float
    direction: str  # SENT, RECEIVED or NOTE
    text: str


@dataclass(frozen=True)
class Sent:
    t: float
    token: Token
    index: int  # position in the sender's transcript


@dataclass(frozen=True)
class Receipt:
    t: float
    token: Token
    index: int  # position in the receiver's transcript
    # What the line showed around the token: the text before it (the server's decoration,
    # e.g. "<alice> "; after an earlier token in the same line, the text since that one),
    # how many intact tokens the line held, and the text after the line's last token.
    decoration: str = ""
    line_tokens: int = 1
    trailing: str = ""


@dataclass
class PartyLog:
    """Everything one party did, in order. Thread-safe for one writer per direction."""

    name: str
    where: str = "loopback"
    command: str = ""
    lines: list[Line] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    received: list[Receipt] = field(default_factory=list)
    damage: list[tuple[int, Damage]] = field(default_factory=list)
    own: list[Receipt] = field(default_factory=list)  # its own tokens shown back to it
    exit_status: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_sent(self, t: float, token: Token) -> None:
        with self._lock:
            self.lines.append(Line(t, SENT, token.encode()))
            self.sent.append(Sent(t, token, len(self.lines) - 1))

    def add_sent_raw(self, t: float, text: str) -> None:
        with self._lock:
            self.lines.append(Line(t, SENT, text))

    def add_note(self, t: float, text: str) -> None:
        with self._lock:
            self.lines.append(Line(t, NOTE, text))

    def add_received(
        self, t: float, text: str, known_crcs: dict[str, tuple[str, int]] | None = None
    ) -> list[Token]:
        """Record one received line; return the intact tokens of other senders in it.

        A party's own tokens are kept apart (`own`), not counted as deliveries: a terminal
        client may show what its user types (readline echoes and redraws the input line),
        and a server may echo; the "no echo" check tells the two apart by decoration.
        Nothing is dropped: every token, damaged piece and line stays in the evidence.
        """
        found = scan(text, known_crcs)
        count = len(found.tokens)
        with self._lock:
            self.lines.append(Line(t, RECEIVED, text))
            index = len(self.lines) - 1
            mine: list[Token] = []
            previous_end = 0
            for tok, (start, end) in zip(found.tokens, found.spans, strict=True):
                trailing = text[found.spans[-1][1] :] if count else ""
                receipt = Receipt(t, tok, index, text[previous_end:start], count, trailing)
                previous_end = end
                if tok.sender == self.name:
                    self.own.append(receipt)
                else:
                    self.received.append(receipt)
                    mine.append(tok)
            for dmg in found.damage:
                if dmg.sender != self.name:
                    self.damage.append((index, dmg))
        return mine

    def snapshot(self) -> list[Line]:
        with self._lock:
            return list(self.lines)


@dataclass
class Expectation:
    """Receiver ``receiver`` must get every counted message of each sender in ``senders``."""

    receiver: str
    senders: list[str]


@dataclass
class Turn:
    """One conversation turn: ``speaker`` said message ``seq`` after hearing ``after``."""

    speaker: str
    seq: int
    after: tuple[str, int] | None  # the message it answers, None for the opening line


@dataclass
class QuietPhase:
    """``listener`` sent nothing from ``start`` to ``end`` while ``speaker`` sent ``seqs``."""

    listener: str
    speaker: str
    seqs: list[int]
    start: float
    end: float


@dataclass
class Phase:
    """One step of a scenario (a hello sync, a stream, a settle...), from ``start`` to
    ``end``, and how it ended (``outcome``): where a run's time went, and why each wait
    ended when it did."""

    name: str
    start: float
    end: float
    outcome: str

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class RunRecord:
    """One scenario run, as the checks and reports see it."""

    scenario: str
    parties: dict[str, PartyLog] = field(default_factory=dict)
    expectations: list[Expectation] = field(default_factory=list)
    # pairs (party, peer): party must be shown to receive peer's lines while sending.
    duplex_pairs: list[tuple[str, str]] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    # Quiet phases of the duplex scenario: ``listener`` typed nothing while ``speaker``
    # sent ``seqs``; a full-duplex client shows them all before the phase ends.
    quiet_phases: list[QuietPhase] = field(default_factory=list)
    # When the duplex scenario's concurrent phase ended: its proof looks at lines sent
    # before this only (later phases take turns on purpose).
    concurrent_until: float | None = None
    # The scenario's steps in the order they ended (`Phase`), with how each ended.
    phases: list[Phase] = field(default_factory=list)
    # party -> why its last line holding a token may arrive cut short (a victim killed
    # mid-stream, a reader the server cut off on purpose): an expectation the checks
    # honour when judging damage on that one line, so the evidence is never edited.
    may_be_cut: dict[str, str] = field(default_factory=dict)
    echo: bool = False  # the user declared that the server echoes a line to its sender
    # Parties whose order among common messages must agree (defaults to all receivers).
    order_group: list[str] | None = None
    duration: float = 0.0
    timeout: float = 0.0
    settle: float = 2.0  # the run's --settle: the floor of a quiet phase's patience
    timed_out: bool = False
    stalled: list[str] = field(default_factory=list)  # what was still waited for at the end
    leftovers: list[str] = field(default_factory=list)  # processes still alive after cleanup
    server_exit: str = ""  # how the server ended *during* the run; empty if it survived
    # name -> (ok, detail) for expectations that hold only for this project's server;
    # None when the server under test is another implementation.
    specific: dict[str, tuple[bool, str]] | None = None
    notes: list[str] = field(default_factory=list)
    # What the impairment proxy reported on stderr - (seconds since the start, line) - such
    # as the resets it made; None when no proxy was in the path.
    impair_log: list[tuple[float, str]] | None = None
    network: dict[str, object] = field(default_factory=dict)
    server_command: str = ""
    seed: int = 0

    def party(self, name: str) -> PartyLog:
        return self.parties[name]

    def sent_by(self, sender: str, kinds: tuple[str, ...] = (MESSAGE,)) -> list[Sent]:
        return [s for s in self.parties[sender].sent if s.token.kind in kinds]

    def deliveries(self) -> int:
        # list(): parties join (churn) while the progress thread counts.
        return sum(len(p.received) for p in list(self.parties.values()))

    def expected_deliveries(self) -> int:
        return sum(len(self.sent_by(s)) for e in self.expectations for s in e.senders)


COUNTED = (MESSAGE,)
__all__ = [
    "COUNTED",
    "HELLO",
    "NOTE",
    "RECEIVED",
    "SENT",
    "Expectation",
    "Line",
    "PartyLog",
    "Phase",
    "QuietPhase",
    "Receipt",
    "RunRecord",
    "Sent",
    "Turn",
]
