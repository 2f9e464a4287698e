"""Checks: what must hold for every chat box, whoever wrote it.

Each check reads a `RunRecord` (plain data; no processes) and returns one `CheckResult`.
A failure names the *first* offending message - the earliest one by time, so the report
points at where things started to go wrong - and carries the surrounding transcript.

The checks rely on tokens (see `harness.tokens`) and on what a server shows *around*
them only as far as it learns it from the run itself (a sender's usual decoration), so
they run unchanged against any implementation. Expectations that only this project's
server promises (names, notices, slow-reader disconnects) are a separate check that
reports "n/a" for other servers instead of failing. A check with nothing to judge says
"n/a" with the reason, never "pass". No check edits the record: what a scenario expects
to go wrong on purpose (a line cut by a kill) is an expectation in it (`may_be_cut`).
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from harness.tokens import Token
from harness.transcript import COUNTED, RECEIVED, Line, QuietPhase, Receipt, RunRecord, Sent

PASS = "pass"
FAIL = "fail"
NOT_APPLICABLE = "n/a"

NO_LOSS = "no loss"
NO_DUPLICATES = "no duplicates"
INTACT = "payload intact"
FIFO = "per-sender FIFO"
SAME_ORDER = "same order at every receiver"
ONE_PER_LINE = "one message per line"
RIGHT_SENDER = "right sender"
NO_ECHO = "no echo"
DUPLEX = "full duplex"
TURNS = "turn taking"
BOUNDED = "bounded time"
NO_LEFTOVERS = "nothing left running"
SERVER_ALIVE = "server survived"
SPECIFIC = "this project's server"
NO_RESET = "no connection reset"

# The impairment proxy's stderr line for a reset it made itself (`harness.impair`):
# "impair: reset PEER after N bytes (reset-after)" or "... at once (reset-after=0)".
_IMPAIR_RESET = re.compile(r"impair: reset (.*?) (?:after (\d+) bytes|at once) \(reset-after")

CONTEXT_LINES = 3  # transcript lines shown on each side of an offending one


@dataclass
class CheckResult:
    name: str
    status: str
    detail: str = ""
    offender: str = ""  # the first offending message, e.g. "p1#17"
    context: list[str] = field(default_factory=list)
    observed: str = ""  # a classification the check made (duplex: "half duplex", ...)

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def _excerpt(who: str, lines: list[Line], index: int) -> list[str]:
    lo, hi = max(0, index - CONTEXT_LINES), min(len(lines), index + CONTEXT_LINES + 1)
    out = [f"  {who} transcript:"]
    for i in range(lo, hi):
        line = lines[i]
        mark = "=>" if i == index else "  "
        out.append(f"  {mark} {line.t:9.4f} {line.direction} {line.text[:160]!r}")
    return out


def _near(lines: list[Line], t: float) -> int:
    """Index of the first line at or after time ``t`` (the last line if none)."""
    for i, line in enumerate(lines):
        if line.t >= t:
            return i
    return max(0, len(lines) - 1)


def check_no_loss(record: RunRecord) -> CheckResult:
    missing: list[tuple[float, str, Token, int]] = []
    total = 0
    sent_by: dict[str, list[Sent]] = {}  # once per sender, not per receiver and sender
    for exp in record.expectations:
        got = {r.token.key for r in record.party(exp.receiver).received}
        for sender in exp.senders:
            if sender not in sent_by:
                sent_by[sender] = record.sent_by(sender)
            for sent in sent_by[sender]:
                total += 1
                if sent.token.key not in got:
                    missing.append((sent.t, exp.receiver, sent.token, sent.index))
    if not record.expectations:
        return CheckResult(NO_LOSS, NOT_APPLICABLE, "nothing had to be delivered")
    if not missing:
        return CheckResult(NO_LOSS, PASS, f"{total} deliveries, all arrived")
    missing.sort(key=lambda m: m[0])
    t, receiver, token, index = missing[0]
    sender_lines = record.party(token.sender).snapshot()
    receiver_lines = record.party(receiver).snapshot()
    context = _excerpt(token.sender, sender_lines, index)
    context += _excerpt(receiver, receiver_lines, _near(receiver_lines, t))
    return CheckResult(
        NO_LOSS,
        FAIL,
        f"{len(missing)} of {total} deliveries missing; first: {token} to {receiver} "
        f"(sent at {t:.4f}s)",
        str(token),
        context,
    )


def _offence(
    record: RunRecord, check: str, detail: str, offender: str, receiver: str, index: int
) -> CheckResult:
    """A failed check, shown with the receiver's lines around its first offence."""
    return CheckResult(
        check, FAIL, detail, offender, _excerpt(receiver, record.party(receiver).snapshot(), index)
    )


def check_no_duplicates(record: RunRecord) -> CheckResult:
    dups: list[tuple[float, str, Token, int]] = []
    for name, log in record.parties.items():
        seen: set[tuple[str, int]] = set()
        for r in log.received:
            if r.token.kind not in COUNTED:
                continue  # a hello may be shown twice (a server that names a party by it)
            if r.token.key in seen:
                dups.append((r.t, name, r.token, r.index))
            seen.add(r.token.key)
    if not dups:
        return CheckResult(NO_DUPLICATES, PASS, "every message arrived at most once")
    dups.sort(key=lambda d: d[0])
    t, receiver, token, index = dups[0]
    return _offence(
        record,
        NO_DUPLICATES,
        f"{len(dups)} duplicate deliveries; first: {token} arrived again at {receiver} ({t:.4f}s)",
        str(token),
        receiver,
        index,
    )


def check_intact(record: RunRecord) -> CheckResult:
    sent: dict[tuple[str, int], Token] = {}
    for log in record.parties.values():
        for s in log.sent:
            sent[s.token.key] = s.token
    bad: list[tuple[float, str, str, str, int]] = []
    excused: list[str] = []
    for name, log in record.parties.items():
        lines = log.snapshot()
        cut = _last_token_line(record, name) if name in record.may_be_cut else -1
        for index, dmg in log.damage:
            if index == cut:
                excused.append(f"{name}'s last line ({record.may_be_cut[name]})")
                continue
            who = f"{dmg.sender}#{dmg.seq}" if dmg.sender else "unknown message"
            bad.append((lines[index].t, name, who, f"{dmg.reason}: {dmg.text!r}", index))
        for r in log.received:
            original = sent.get(r.token.key)
            if original is None:
                bad.append((r.t, name, str(r.token), "never sent by the harness", r.index))
            elif original.payload != r.token.payload or original.kind != r.token.kind:
                why = f"altered: sent {original.payload!r}, got {r.token.payload!r}"
                bad.append((r.t, name, str(r.token), why, r.index))
    if not bad:
        also = f"; expected cut short, not counted: {', '.join(sorted(set(excused)))}"
        return CheckResult(
            INTACT, PASS, "every token arrived whole, checksums match" + (also if excused else "")
        )
    bad.sort(key=lambda b: b[0])
    t, receiver, who, why, index = bad[0]
    return _offence(
        record,
        INTACT,
        f"{len(bad)} damaged deliveries; first: {who} at {receiver} ({t:.4f}s): {why}",
        who,
        receiver,
        index,
    )


def _last_token_line(record: RunRecord, name: str) -> int:
    """Index of ``name``'s last transcript line that holds a token or a piece of one."""
    log = record.party(name)
    indexes = [r.index for r in log.received] + [r.index for r in log.own]
    indexes += [i for i, _ in log.damage]
    return max(indexes, default=-1)


def check_framing(record: RunRecord) -> CheckResult:
    """One token per delivered line and nothing glued on after it.

    A relay that loses a newline merges two messages into one line; one that adds bytes
    after a message (the start of the next chunk, a stray prefix) glues them on. Text
    *before* the token is the server's decoration, judged by "right sender".
    """
    bad: list[tuple[float, str, str, str, int]] = []
    lines = 0
    for name, log in record.parties.items():
        seen: set[int] = set()
        for r in log.received:
            if r.index in seen:
                continue
            seen.add(r.index)
            lines += 1
            if r.line_tokens > 1:
                bad.append(
                    (
                        r.t,
                        name,
                        str(r.token),
                        f"merged: {r.line_tokens} tokens in one line",
                        r.index,
                    )
                )
            elif r.trailing.strip():
                why = f"stray bytes after {r.token}: {r.trailing[:40]!r}"
                bad.append((r.t, name, str(r.token), why, r.index))
    if not lines:
        return CheckResult(ONE_PER_LINE, NOT_APPLICABLE, "no line held a token")
    if not bad:
        return CheckResult(ONE_PER_LINE, PASS, f"{lines} lines, each one whole message")
    bad.sort(key=lambda b: b[0])
    t, receiver, who, why, index = bad[0]
    return _offence(
        record,
        ONE_PER_LINE,
        f"{len(bad)} lines not one message; first at {receiver} ({t:.4f}s): {why}",
        who,
        receiver,
        index,
    )


_DIGITS = re.compile(r"\d+")
USUAL_SHARE = 0.5  # a decoration is a sender's usual one when it is on half its lines


@dataclass(frozen=True)
class Usual:
    """How a sender's lines are usually decorated at the other receivers."""

    text: str
    normalised: bool  # digit runs vary (timestamps): compare with digits as '#'

    def form(self, decoration: str) -> str:
        return _DIGITS.sub("#", decoration) if self.normalised else decoration

    def matches(self, decoration: str) -> bool:
        # The end of the text before a token: a client's prompt may precede the server's
        # decoration on the same visible line.
        return self.form(decoration).endswith(self.text)


def usual_decorations(record: RunRecord) -> dict[str, Usual]:
    """Per sender, the decoration receivers usually show before its tokens.

    The exact text when it is on at least half the sender's lines, else the text with
    digit runs normalised (timestamps vary); a sender with neither has no entry.
    """
    # Counted per (sender, decoration) in one pass: a room of 500 has 1.5 million
    # receipts and a few distinct decorations per sender. Each sender's decorations stay
    # in the order first seen, so a tie goes to the one seen first, as it would in a
    # count over every receipt.
    pairs = Counter(
        (r.token.sender, r.decoration) for log in record.parties.values() for r in log.received
    )
    by_sender: dict[str, dict[str, int]] = {}
    for (sender, decoration), n in pairs.items():
        by_sender.setdefault(sender, {})[decoration] = n
    out: dict[str, Usual] = {}
    for sender, decorations in by_sender.items():
        total = sum(decorations.values())
        for normalised in (False, True):
            forms: dict[str, int] = {}
            for decoration, n in decorations.items():
                form = _DIGITS.sub("#", decoration) if normalised else decoration
                forms[form] = forms.get(form, 0) + n
            text = max(forms, key=forms.__getitem__)
            if forms[text] >= USUAL_SHARE * total:
                out[sender] = Usual(text, normalised)
                break
    return out


def check_attribution(record: RunRecord) -> CheckResult:
    """A line shown with another sender's usual decoration is attributed to the wrong one."""
    usual = usual_decorations(record)
    named = {s: u for s, u in usual.items() if u.text.strip()}
    if len(usual) < 2:
        return CheckResult(RIGHT_SENDER, NOT_APPLICABLE, "fewer than two senders' lines arrived")
    if len({u.text for u in named.values()}) < 2:
        return CheckResult(
            RIGHT_SENDER,
            NOT_APPLICABLE,
            "the server shows every sender's lines alike ("
            + ", ".join(f"{s}: {u.text!r}" for s, u in sorted(usual.items()))
            + "): nothing names the sender",
        )
    bad: list[tuple[float, str, Receipt, str]] = []
    judged = 0
    # Judged once per (sender, decoration): whose usual decoration it is, if another's.
    verdicts: dict[tuple[str, str], str | None] = {}
    for name, log in record.parties.items():
        for r in log.received:
            sender = r.token.sender
            mine = usual.get(sender)
            if mine is None:
                continue
            judged += 1
            pair = (sender, r.decoration)
            if pair in verdicts:
                other = verdicts[pair]
            else:
                other = None
                if not mine.matches(r.decoration):
                    other = next(
                        (s for s, u in named.items() if s != sender and u.matches(r.decoration)),
                        None,
                    )
                verdicts[pair] = other
            if other is not None:
                bad.append((r.t, name, r, other))
    shown = ", ".join(f"{s} as {u.text!r}" for s, u in sorted(named.items()))
    if not bad:
        return CheckResult(
            RIGHT_SENDER, PASS, f"{judged} lines, each shown as its sender ({shown})"
        )
    bad.sort(key=lambda b: b[0])
    t, receiver, r, other = bad[0]
    return _offence(
        record,
        RIGHT_SENDER,
        f"{len(bad)} lines shown as another sender's; first: {r.token} at {receiver} "
        f"({t:.4f}s) shown as {r.decoration!r}, which is how {other}'s lines are shown "
        f"({shown})",
        str(r.token),
        receiver,
        r.index,
    )


def check_echo(record: RunRecord) -> CheckResult:
    """A line the server returns to its own sender.

    A terminal client may show what its user typed (readline redraws the input line):
    that local echo is the bare text, while a server's echo carries the decoration the
    server gives that sender's lines at the other receivers. When that decoration is
    empty the two look alike, and the check says so instead of passing.
    """
    if record.echo:
        return CheckResult(NO_ECHO, NOT_APPLICABLE, "the server echoes by design (--echo)")
    usual = usual_decorations(record)
    echoes: list[tuple[float, str, Receipt]] = []
    unknown: list[str] = []
    local = 0
    for name, log in record.parties.items():
        for r in log.own:
            mine = usual.get(name)
            if mine is None or not mine.text.strip():
                unknown.append(name)
            elif mine.matches(r.decoration):
                echoes.append((r.t, name, r))
            else:
                local += 1
    if echoes:
        echoes.sort(key=lambda e: e[0])
        t, who, r = echoes[0]
        return _offence(
            record,
            NO_ECHO,
            f"{len(echoes)} lines came back to their sender; first: {r.token} at {who} "
            f"({t:.4f}s) shown as {r.decoration!r}, the server's decoration for {who}",
            str(r.token),
            who,
            r.index,
        )
    if unknown:
        names = ", ".join(sorted(set(unknown)))
        return CheckResult(
            NO_ECHO,
            NOT_APPLICABLE,
            f"unknown: {names} saw their own lines, and the server shows their lines with no "
            "decoration, so a server echo cannot be told from the client's local echo",
        )
    if local:
        return CheckResult(
            NO_ECHO, PASS, f"no line came back from the server ({local} local echoes of typing)"
        )
    return CheckResult(NO_ECHO, PASS, "no line came back to its sender")


def check_fifo(record: RunRecord) -> CheckResult:
    bad: list[tuple[float, str, Token, int, int]] = []
    for name, log in record.parties.items():
        last: dict[str, int] = {}
        # Counted messages only: one thread types a party's messages, so their numbers are
        # the order it typed them in. A hello (a sync nudge) is numbered by another thread
        # and may be typed after messages numbered later: its place is no order anyone sent.
        for r in log.received:
            if r.token.kind not in COUNTED:
                continue
            prev = last.get(r.token.sender, -1)
            if r.token.seq < prev:
                bad.append((r.t, name, r.token, prev, r.index))
            last[r.token.sender] = max(prev, r.token.seq)
    if not bad:
        return CheckResult(FIFO, PASS, "each sender's messages arrived in the order sent")
    bad.sort(key=lambda b: b[0])
    t, receiver, token, prev, index = bad[0]
    return _offence(
        record,
        FIFO,
        f"{len(bad)} out of order; first: {token} arrived at {receiver} after "
        f"{token.sender}#{prev} ({t:.4f}s)",
        str(token),
        receiver,
        index,
    )


ORDER_REFERENCES = 3  # receivers every other one is compared with when orders clash


@dataclass
class _Clash:
    """Where two receivers' orders of the lines they share first differ."""

    t: float  # when the later of the two disagreeing lines arrived
    a: str
    b: str
    x: Receipt  # what a got at the first differing place...
    y: Receipt  # ...where b got this
    common: int  # how many lines both received


def _clash(
    a: str,
    b: str,
    counted: dict[str, list[Receipt]],
    keys: dict[str, list[tuple[str, int]]],
    key_sets: dict[str, set[tuple[str, int]]],
) -> _Clash | bool | None:
    """How ``a`` and ``b`` disagree on the order of the lines both received: a `_Clash`,
    None when they agree, False when what they share comes from one sender only (its
    order is per-sender FIFO's business, not this check's)."""
    common = key_sets[a] & key_sets[b]
    sa = [k for k in keys[a] if k in common]
    if not sa or all(k[0] == sa[0][0] for k in sa):
        return False
    sb = [k for k in keys[b] if k in common]
    if sa == sb:
        return None
    ra = [r for r in counted[a] if r.token.key in common]
    rb = [r for r in counted[b] if r.token.key in common]
    found = next(((x, y) for x, y in zip(ra, rb, strict=False) if x.token.key != y.token.key), None)
    if found is None:
        return None  # the same order, one line repeated: the duplicates check's
    x, y = found
    return _Clash(max(x.t, y.t), a, b, x, y, len(common))


def _one_order(keys: dict[str, list[tuple[str, int]]]) -> bool:
    """Whether one order of all lines agrees with every receiver's: the graph of "came
    right before" at each receiver has no cycle. Then any two receivers agree on the
    lines they share (each one's order is the one order, restricted), in O(lines x
    receivers) instead of comparing O(receivers²) pairs."""
    # The edges are gathered as a set first: receivers share most of them (a room of
    # 100 has ~200,000 receipts and ~20,000 distinct edges), and a set takes them in C.
    lines: set[tuple[str, int]] = set()
    edges: set[tuple[tuple[str, int], tuple[str, int]]] = set()
    for order in keys.values():
        lines.update(order)
        edges.update(itertools.pairwise(order))
    after: dict[tuple[str, int], list[tuple[str, int]]] = {k: [] for k in lines}
    before = dict.fromkeys(lines, 0)
    for prev, k in edges:
        after[prev].append(k)
        before[k] += 1
    free = [k for k, n in before.items() if n == 0]
    placed = 0
    while free:
        k = free.pop()
        placed += 1
        for nxt in after[k]:
            before[nxt] -= 1
            if before[nxt] == 0:
                free.append(nxt)
    return placed == len(after)  # a cycle leaves its lines unplaced


def _shares_two_senders(group: list[str], key_sets: dict[str, set[tuple[str, int]]]) -> bool:
    """Whether some two receivers share lines from two senders (material to compare);
    stops at the first such pair, which a room of many is at once."""
    for i, a in enumerate(group):
        for b in group[i + 1 :]:
            senders = {k[0] for k in key_sets[a] & key_sets[b]}
            if len(senders) > 1:
                return True
    return False


def check_same_order(record: RunRecord) -> CheckResult:
    """Any two receivers saw the lines they both received in the same order.

    When one order of all lines agrees with every receiver (`_one_order`), every pair
    agrees and nothing more is compared. Otherwise each receiver is compared with
    `ORDER_REFERENCES` receivers that got the most lines (a line is missed by its own
    sender, so for any two lines one of three references got both) and the earliest
    clash found is reported; only if none is found that way - orders that clash in no
    pair but still admit no one order, or receivers that share too little with the
    references - is every pair compared, as the definition says.
    """
    group = record.order_group or [p for p in record.parties if record.party(p).received]
    counted = {p: [r for r in record.party(p).received if r.token.kind in COUNTED] for p in group}
    keys = {p: [r.token.key for r in rs] for p, rs in counted.items()}
    key_sets = {p: set(ks) for p, ks in keys.items()}
    if not _shares_two_senders(group, key_sets):
        return CheckResult(
            SAME_ORDER,
            NOT_APPLICABLE,
            "no two receivers share lines from two senders: nothing to compare",
        )
    lines = len(set().union(*key_sets.values()))
    if _one_order(keys):
        return CheckResult(
            SAME_ORDER,
            PASS,
            f"{len(group)} receivers agree on one order of the {lines} lines they received",
        )
    references = sorted(group, key=lambda p: -len(key_sets[p]))[:ORDER_REFERENCES]
    first = _first_clash(
        [(ref, p) for ref in references for p in group if p != ref], counted, keys, key_sets
    )
    if first is None:
        every_pair = [(a, b) for i, a in enumerate(group) for b in group[i + 1 :]]
        first = _first_clash(every_pair, counted, keys, key_sets)
    if first is None:
        return CheckResult(
            SAME_ORDER,
            PASS,
            f"every two of the {len(group)} receivers agree on the order of the lines they "
            "share (though no one order fits them all)",
        )
    context = _excerpt(first.a, record.party(first.a).snapshot(), first.x.index)
    context += _excerpt(first.b, record.party(first.b).snapshot(), first.y.index)
    return CheckResult(
        SAME_ORDER,
        FAIL,
        f"{first.a} got {first.x.token} where {first.b} got {first.y.token} "
        f"(among the {first.common} messages both received)",
        str(first.x.token),
        context,
    )


def _first_clash(
    pairs: Iterable[tuple[str, str]],
    counted: dict[str, list[Receipt]],
    keys: dict[str, list[tuple[str, int]]],
    key_sets: dict[str, set[tuple[str, int]]],
) -> _Clash | None:
    """The earliest clash among ``pairs`` (each pair once, in either order)."""
    first: _Clash | None = None
    done: set[frozenset[str]] = set()
    rank = {p: i for i, p in enumerate(keys)}
    for a, b in pairs:
        pair = frozenset((a, b))
        if pair in done:
            continue
        done.add(pair)
        if rank[a] > rank[b]:
            a, b = b, a  # named in the group's order, as the definition compares them
        found = _clash(a, b, counted, keys, key_sets)
        if isinstance(found, _Clash) and (first is None or found.t < first.t):
            first = found
    return first


SIMPLEX = "simplex"
HALF_DUPLEX = "half duplex"
FULL_DUPLEX = "full duplex"
# The longest pause in reading the peer that still proves full duplex. A server taking
# turns must stop reading one talker before it reads the other; one that waits for its
# talker to pause DUPLEX_SPAN seconds or longer cannot produce the proof.
DUPLEX_SPAN = 1.4  # above what queueing adds under impairments (1 s seen through slice=1)


@dataclass(frozen=True)
class Interleaving:
    """The server read ``own`` (a line of the party) between two lines of its peer,
    while it read the peer's lines at most ``pause`` seconds apart.

    ``first`` was displayed to the party before the party began typing ``own``; ``own``
    was displayed to the peer before the peer began typing ``second``. So, wherever lines
    waited in buffers on the way, the server read first, then own, then second. It read
    each peer line no earlier than its typing began and no later than its display: two
    consecutive peer lines from first to second at most ``pause`` apart (``gap_after``:
    the peer line before the longest such gap)."""

    first: Receipt
    own: Token
    second: Receipt
    pause: float
    gap_after: Token
    # The lower quartile of the possible pauses between two consecutive peer lines: how
    # fast lines move on this path at best (not the median: lines a server kept waiting
    # for their turn would make its own turns look usual).
    usual: float


def _typing_starts(sent: list[Sent]) -> list[tuple[float, Sent]]:
    """(the earliest time its typing can have begun, line) for each line but the first.

    ``Sent.t`` is taken when the write is done, so it is no lower bound of when the
    server could read the line; the previous line's ``t`` is: one stream thread types a
    party's lines one after the other."""
    return [(before.t, line) for before, line in itertools.pairwise(sent)]


def _concurrent_lines(record: RunRecord, name: str) -> list[Sent]:
    """``name``'s counted lines of the concurrent phase, in the order typed."""
    until = record.concurrent_until
    sent = [s for s in list(record.party(name).sent) if s.token.kind in COUNTED]
    return sorted((s for s in sent if until is None or s.t <= until), key=lambda s: s.t)


def _first_shown(record: RunRecord, name: str, sender: str) -> dict[tuple[str, int], Receipt]:
    """When ``name`` first displayed each of ``sender``'s lines."""
    first: dict[tuple[str, int], Receipt] = {}
    for r in list(record.party(name).received):
        if r.token.sender == sender:
            first.setdefault(r.token.key, r)
    return first


def interleaving(record: RunRecord, party: str, peer: str) -> Interleaving | None:
    """The best proof that the server carried a line of ``party`` between two lines of
    ``peer`` while reading the peer without a pause (see Interleaving), among the
    concurrent phase's lines: the one with the shortest possible pause; None if none.

    Safe to call while the run is still writing the record (it copies what it reads)."""
    own_starts = _typing_starts(_concurrent_lines(record, party))
    peer_starts = _typing_starts(_concurrent_lines(record, peer))
    own_times = [t for t, _ in own_starts]
    peer_times = [t for t, _ in peer_starts]
    at_party = _first_shown(record, party, peer)
    at_peer = _first_shown(record, peer, party)
    # gaps[m]: the longest the server can have gone without reading the peer between
    # peer_starts[m] and peer_starts[m + 1] (the later one's display minus the earlier
    # one's typing start); None where the later one was never displayed.
    gaps: list[float | None] = []
    for (start, _), (_, nxt) in itertools.pairwise(peer_starts):
        shown_at = at_party.get(nxt.token.key)
        gaps.append(None if shown_at is None else shown_at.t - start)
    known = sorted(g for g in gaps if g is not None)
    usual = known[len(known) // 4] if known else 0.0
    best: Interleaving | None = None
    for i, (_, line) in enumerate(peer_starts):
        first = at_party.get(line.token.key)
        if first is None:
            continue
        j = bisect.bisect_right(own_times, first.t)  # party's first line begun after it
        if j == len(own_starts):
            continue
        own = own_starts[j][1].token
        reply = at_peer.get(own.key)
        if reply is None:
            continue
        k = bisect.bisect_right(peer_times, reply.t)  # peer's first line begun after that
        if k == len(peer_starts):
            continue
        second = at_party.get(peer_starts[k][1].token.key)
        between = gaps[i:k]
        if second is None or not between or any(g is None for g in between):
            continue
        pause = max(g for g in between if g is not None)
        gap_after = peer_starts[i + between.index(pause)][1].token
        if best is None or pause < best.pause:
            best = Interleaving(first, own, second, pause, gap_after, usual)
    return best


@dataclass(frozen=True)
class Held:
    """A line of the party (``own``, typed by ``typed``) that the peer displayed only at
    ``shown``, ``held`` seconds after the party had displayed ``overtaken``: a line of
    the peer begun only after ``own`` was typed. The server heard the peer's later
    line and passed it on while it left the party's earlier one unread."""

    own: Token
    typed: float
    shown: float
    overtaken: Receipt
    held: float


def held_line(record: RunRecord, party: str, peer: str) -> Held | None:
    """The party's concurrent line held longest behind a later line of the peer (see
    Held), or None if no line of the peer begun after one of the party's was shown.

    Why this is the server's doing: by ``overtaken``'s display the party's client was
    running and had its own line (typed before) to send, and the peer's client was
    running, having typed the later line; a full-duplex server reads the party's line
    as it reads the peer's. A server serving one talker at a time leaves it unread for
    as long as the other talks."""
    own_lines = _concurrent_lines(record, party)
    peer_starts = _typing_starts(_concurrent_lines(record, peer))
    starts = [t for t, _ in peer_starts]
    at_party = _first_shown(record, party, peer)
    at_peer = _first_shown(record, peer, party)
    # earliest[m]: the earliest display, at the party, of peer lines m and later.
    earliest: list[Receipt | None] = [None] * (len(peer_starts) + 1)
    for m in range(len(peer_starts) - 1, -1, -1):
        here, later = at_party.get(peer_starts[m][1].token.key), earliest[m + 1]
        earliest[m] = here if later is None or (here is not None and here.t <= later.t) else later
    best: Held | None = None
    for line in own_lines:
        shown_at = at_peer.get(line.token.key)
        overtaken = earliest[bisect.bisect_left(starts, line.t)]
        if shown_at is None or overtaken is None:
            continue
        held = shown_at.t - overtaken.t
        if best is None or held > best.held:
            best = Held(line.token, line.t, shown_at.t, overtaken, held)
    return best


def _concurrent_proof(record: RunRecord, party: str, peer: str) -> tuple[bool | None, str, int]:
    """(a) the server read a line of ``party`` between two lines of ``peer``, reading the
    peer's lines less than DUPLEX_SPAN seconds apart: it carried both directions at
    once, not in turns.

    Lines merely arriving after a display prove nothing: they may have waited in a
    socket buffer while the server read only the peer, then have been read in its turn.
    So each step of the proof is a line begun only after the one before it was shown."""
    log = record.party(party)
    found = interleaving(record, party, peer)
    if found is not None:
        chain = (
            f"{party} displayed {found.first.token}, then typed {found.own}, which {peer} "
            f"displayed before typing {found.second.token}"
        )
        if found.pause < DUPLEX_SPAN:
            return (
                True,
                f"{chain}, and {peer}'s lines in between were read at most "
                f"{found.pause:.3f}s apart",
                found.second.index,
            )
        if found.usual >= DUPLEX_SPAN / 2:
            # Lines are this slow on the way anyway (a slow link, a loaded machine): the
            # possible pause may be the trip, not the server taking turns. Not proven,
            # not disproven.
            return (
                None,
                f"{party}'s lines took too long on the way to tell: at best {chain}, but "
                f"the reading of {peer}'s lines may have paused {found.pause:.2f}s, and "
                f"{found.usual:.2f}s between two of them is usual here (lower quartile)",
                found.first.index,
            )
        return (
            False,
            f"{party}'s lines were carried between {peer}'s only in turns: at best {chain}, "
            f"but the reading of {peer}'s lines may have paused {found.pause:.2f}s after "
            f"{found.gap_after} (full duplex needs under {DUPLEX_SPAN:g}s; a server taking "
            "turns at pauses does this)",
            found.first.index,
        )
    held = held_line(record, party, peer)
    if held is not None and held.held >= DUPLEX_SPAN:
        return (
            False,
            f"{party}'s lines were never carried between two of {peer}'s, and one was "
            f"left unread while {peer} was heard: {peer} displayed {held.own} "
            f"{held.shown - held.typed:.2f}s after it was typed, {held.held:.2f}s after "
            f"{party} displayed {held.overtaken.token}, which {peer} began typing only "
            f"after it (full duplex needs under {DUPLEX_SPAN:g}s; a server serving one "
            "talker at a time does this)",
            held.overtaken.index,
        )
    heard = [r for r in log.received if r.token.sender == peer]
    index = heard[0].index if heard else len(log.lines) - 1
    longest = f" (at most {held.held:.2f}s)" if held is not None and held.held > 0 else ""
    return (
        None,
        f"{party}'s lines were never seen carried between two of {peer}'s, nor held "
        f"behind {peer}'s later lines for {DUPLEX_SPAN:g}s or more{longest}: the talk "
        "ended before either proof (a slow or starved party)",
        max(0, index),
    )


# How long a quiet phase waits for the speaker's next line, and the pause before a late
# line that makes it evidence of half duplex: QUIET_PATIENCE times the longest pause
# between two consecutive arrivals of the speaker's lines at the listener in the
# concurrent phase, never under --settle and never over QUIET_PATIENCE x --settle. A
# full-duplex path that is merely slow (a throttled, sliced proxy on a loaded machine:
# 1 s pauses in the streams and a 2.8 s one in a quiet phase seen at load 17) has shown
# its pace while both talked, and gets that much more time before its silence counts;
# a client that reads only after it sent kept displaying while it typed in the streams
# (its own lines paced the reads), so its quiet phase still ends after --settle of
# silence, and its late lines come only after typing again, past that silence.
QUIET_PATIENCE = 4


def path_pause(record: RunRecord, listener: str, speaker: str) -> float:
    """The longest pause between two consecutive arrivals of ``speaker``'s lines at
    ``listener`` in the concurrent phase (0 when there is none): this path's pace."""
    until = record.concurrent_until
    if until is None:
        return 0.0
    times = [
        r.t
        for r in record.party(listener).received
        if r.token.sender == speaker and r.token.kind in COUNTED and r.t <= until
    ]
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def quiet_patience(record: RunRecord, listener: str, speaker: str) -> float:
    """How long ``listener``'s quiet phase waits with no line of ``speaker``'s arriving
    (see QUIET_PATIENCE)."""
    pace = QUIET_PATIENCE * path_pause(record, listener, speaker)
    return max(record.settle, min(pace, QUIET_PATIENCE * record.settle))


def _quiet_proof(record: RunRecord, phase: QuietPhase) -> tuple[bool | None, str, int]:
    """(b) the listener, typing nothing, displayed the speaker's lines during the phase:
    a client that reads only after it sent shows at most one read's worth, the rest
    only once it types again (those late lines are not lost, they are late). A late
    line counts only after a silence of the phase's patience (`quiet_patience`): one
    that came sooner came at this path's pace, typing or not."""
    log = record.party(phase.listener)
    wanted = set(phase.seqs)
    got = [r for r in log.received if r.token.sender == phase.speaker and r.token.seq in wanted]
    during = [r for r in got if r.t <= phase.end]
    late = [r for r in got if r.t > phase.end]
    what = (
        f"{phase.listener}, typing nothing for {phase.end - phase.start:.2f}s, displayed "
        f"{len(during)} of {phase.speaker}'s {len(wanted)} lines"
    )
    patience = quiet_patience(record, phase.listener, phase.speaker)
    if late:
        silence = late[0].t - (during[-1].t if during else phase.start)
        if silence >= patience:
            return (
                False,
                f"{what}; {len(late)} more only after it typed again, the first after "
                f"{silence:.3f}s of silence (this path's pace allows {patience:.3f}s)",
                late[0].index,
            )
        if during:
            return (
                True,
                f"{what}; {len(late)} more after the phase, but at this path's pace (the "
                f"first after {silence:.2f}s, under {patience:.2f}s)",
                late[0].index,
            )
    if not during:
        none = "all came after the phase, at this path's pace" if late else "none arrived at all"
        return None, f"{what} ({none}: no material)", len(log.lines) - 1
    return True, what, during[-1].index


def check_duplex(record: RunRecord) -> CheckResult:
    """Classify what was observed: simplex, half duplex or full duplex (which must hold).

    Simplex: one direction never delivered. Half duplex: both directions flow, but a
    party reads only after it sent (fails a quiet phase) or never reads while it is
    sending (fails the concurrent phase). Full duplex: both proofs for every party.
    """
    if not record.duplex_pairs:
        return CheckResult(DUPLEX, NOT_APPLICABLE, "scenario does not claim full duplex")
    if record.timed_out:
        return CheckResult(
            DUPLEX,
            NOT_APPLICABLE,
            "unknown: the run was cut at --timeout before its phases were done",
            observed="unknown",
        )
    never = []
    for party, peer in record.duplex_pairs:
        if not any(
            r.token.sender == peer and r.token.kind in COUNTED for r in record.party(party).received
        ):
            never.append(f"{peer} -> {party}")
    if never:
        flowing = [f"{q} -> {p}" for p, q in record.duplex_pairs if f"{q} -> {p}" not in never]
        observed = SIMPLEX if flowing else "nothing delivered"
        party, peer = record.duplex_pairs[0]
        return CheckResult(
            DUPLEX,
            FAIL,
            f"observed {observed}: {', '.join(never)} never delivered a line"
            + (f"; only {', '.join(flowing)} did" if flowing else ""),
            never[0].split(" -> ")[0] + "#?",
            [],
            observed,
        )
    proofs: list[str] = []
    failed: list[tuple[str, str, int]] = []
    unproven = False
    for party, peer in record.duplex_pairs:
        ok, why, index = _concurrent_proof(record, party, peer)
        if ok is None:
            unproven = True
            proofs.append("concurrent unknown: " + why)
            continue
        proofs.append(("concurrent: " if ok else "concurrent FAILED: ") + why)
        if not ok:
            failed.append((party, why, index))
    material = 0
    for phase in record.quiet_phases:
        okq, why, index = _quiet_proof(record, phase)
        if okq is None:
            proofs.append("quiet: " + why)
            continue
        material += 1
        proofs.append(("quiet: " if okq else "quiet FAILED: ") + why)
        if not okq:
            failed.append((phase.listener, why, index))
    if failed:
        party, why, index = failed[0]
        return CheckResult(
            DUPLEX,
            FAIL,
            f"observed {HALF_DUPLEX}: " + "; ".join(proofs),
            party,
            _excerpt(party, record.party(party).snapshot(), index),
            HALF_DUPLEX,
        )
    if unproven:
        return CheckResult(
            DUPLEX,
            NOT_APPLICABLE,
            "unknown: lines were too slow on the way to prove full duplex; " + "; ".join(proofs),
            observed="unknown",
        )
    if record.quiet_phases and not material:
        return CheckResult(
            DUPLEX,
            NOT_APPLICABLE,
            "unknown: no quiet phase had material; " + "; ".join(proofs),
            observed="unknown",
        )
    return CheckResult(
        DUPLEX, PASS, f"observed {FULL_DUPLEX}: " + "; ".join(proofs), observed=FULL_DUPLEX
    )


def check_turns(record: RunRecord) -> CheckResult:
    if not record.turns:
        return CheckResult(TURNS, NOT_APPLICABLE, "not a conversation")
    for turn in record.turns:
        if turn.after is None:
            continue
        log = record.party(turn.speaker)
        said = next((s for s in log.sent if s.token.seq == turn.seq), None)
        heard = next((r for r in log.received if r.token.key == turn.after), None)
        if said is None:
            continue  # never said: the loss check reports why
        if heard is None or heard.t > said.t:
            sender, seq = turn.after
            return CheckResult(
                TURNS,
                FAIL,
                f"{turn.speaker} said #{turn.seq} before hearing {sender}#{seq}",
                f"{turn.speaker}#{turn.seq}",
                _excerpt(turn.speaker, log.snapshot(), said.index),
            )
    return CheckResult(TURNS, PASS, f"{len(record.turns)} turns, each after its cue")


def check_bounded(record: RunRecord) -> CheckResult:
    if record.timed_out:
        waiting = "; ".join(record.stalled[:5]) or "unknown"
        return CheckResult(
            BOUNDED,
            FAIL,
            f"no progress within --timeout {record.timeout:g}s (deadlock?); waiting for: {waiting}",
        )
    return CheckResult(BOUNDED, PASS, f"finished in {record.duration:.2f}s")


def check_leftovers(record: RunRecord) -> CheckResult:
    if record.leftovers:
        return CheckResult(NO_LEFTOVERS, FAIL, "still running: " + ", ".join(record.leftovers))
    return CheckResult(NO_LEFTOVERS, PASS, "every process ended and reaped")


def check_server_alive(record: RunRecord) -> CheckResult:
    if record.server_exit:
        return CheckResult(
            SERVER_ALIVE, FAIL, f"the server died during the run ({record.server_exit})"
        )
    return CheckResult(SERVER_ALIVE, PASS, "the server was still serving at the end")


def check_specific(record: RunRecord) -> CheckResult:
    if record.specific is None:
        return CheckResult(SPECIFIC, NOT_APPLICABLE, "another implementation is under test")
    if not record.specific:
        return CheckResult(SPECIFIC, NOT_APPLICABLE, "nothing specific in this scenario")
    failed = [f"{k}: {d}" for k, (ok, d) in record.specific.items() if not ok]
    if failed:
        return CheckResult(SPECIFIC, FAIL, "; ".join(failed))
    return CheckResult(
        SPECIFIC, PASS, "; ".join(f"{k}: {d}" for k, (_, d) in record.specific.items())
    )


def check_no_reset(record: RunRecord) -> CheckResult:
    """A connection reset by ``--impair reset-after=N`` is the cause, not a server fault.

    The lines lost after a reset fail "no loss" too; this check names the reset, so the
    report says what really happened (`cause`). A reset the proxy merely passed on (a
    client killed on purpose, in the crash scenario) is only a note, made by the runner.
    """
    if record.impair_log is None:
        return CheckResult(NO_RESET, NOT_APPLICABLE, "no impairment proxy in the path")
    resets = [(t, m) for t, line in record.impair_log if (m := _IMPAIR_RESET.search(line))]
    if not resets:
        return CheckResult(NO_RESET, PASS, "the impairment proxy reset no connection")
    t, first = resets[0]
    budget = first.group(2) or "0"
    return CheckResult(
        NO_RESET,
        FAIL,
        f"connection reset by impairment (reset-after={budget}): {len(resets)} "
        f"connection(s) reset, the first at {t:.4f}s; failed deliveries after it follow "
        "from the reset",
        first.group(1),
        [f"  impairment proxy: {tt:9.4f} {m.string}" for tt, m in resets[: CONTEXT_LINES * 2]],
    )


def cause(results: Iterable[CheckResult], record: RunRecord | None = None) -> str:
    """What made a run fail when one failure explains the others (a reset, a room that
    never formed), else ''."""
    results = list(results)
    for r in results:
        if r.name == NO_RESET and r.failed:
            return r.detail.split(":", 1)[0]
    if record is None or not any(r.failed for r in results):
        return ""
    return room_never_formed(record)


_PROMPTS = re.compile(r"^(?:[>$#%] )+")
_WORDS = re.compile(r"[A-Za-z]{2}")


def room_never_formed(record: RunRecord) -> str:
    """The cause when lines were sent but no party received any other's line at all:
    the server wants something before it relays (a nickname, a password), or relays
    nothing; what it did say is quoted. '' when anything was delivered."""
    logs = record.parties.values()
    if not any(log.sent for log in logs) or any(log.received for log in logs):
        return ""
    said = next(
        (
            text
            for log in logs
            for line in log.snapshot()
            if line.direction == RECEIVED
            # Without a client's prompts ("> "): words, and not the raw party's own.
            and _WORDS.search(text := _PROMPTS.sub("", line.text))
            and "cbx|" not in text
            and text != "connected"
        ),
        "",
    )
    heard = f"; it said {said[:120]!r}" if said else "; it said nothing"
    return (
        "nothing was relayed: no party ever received another's line (does the server "
        f"want something first? --join LINE sends it, e.g. --join '{{name}}'){heard}"
    )


ALL_CHECKS: list[Callable[[RunRecord], CheckResult]] = [
    check_no_reset,
    check_no_loss,
    check_no_duplicates,
    check_intact,
    check_framing,
    check_attribution,
    check_echo,
    check_fifo,
    check_same_order,
    check_duplex,
    check_turns,
    check_bounded,
    check_server_alive,
    check_leftovers,
    check_specific,
]


def run_checks(record: RunRecord) -> list[CheckResult]:
    return [check(record) for check in ALL_CHECKS]


def failures(results: Iterable[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.failed]
