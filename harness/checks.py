"""Checks: what must hold for every chat box, whoever wrote it.

Each check reads a `RunRecord` (plain data; no processes) and returns one `CheckResult`.
A failure names the *first* offending message - the earliest one by time, so the report
points at where things started to go wrong - and carries the surrounding transcript.

The checks rely only on tokens (see `harness.tokens`), never on how a server decorates a
line, so they run unchanged against any implementation. Expectations that only this
project's server promises (names, notices, slow-reader disconnects) are a separate check
that reports "n/a" for other servers instead of failing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from harness.tokens import Token
from harness.transcript import COUNTED, Line, RunRecord

PASS = "pass"
FAIL = "fail"
NOT_APPLICABLE = "n/a"

NO_LOSS = "no loss"
NO_DUPLICATES = "no duplicates"
INTACT = "payload intact"
FIFO = "per-sender FIFO"
SAME_ORDER = "same order at every receiver"
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
    for exp in record.expectations:
        got = {r.token.key for r in record.party(exp.receiver).received}
        for sender in exp.senders:
            for sent in record.sent_by(sender):
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


def check_no_duplicates(record: RunRecord) -> CheckResult:
    dups: list[tuple[float, str, Token, int]] = []
    for name, log in record.parties.items():
        seen: set[tuple[str, int]] = set()
        for r in log.received:
            if r.token.key in seen:
                dups.append((r.t, name, r.token, r.index))
            seen.add(r.token.key)
    if not dups:
        return CheckResult(NO_DUPLICATES, PASS, "every message arrived at most once")
    dups.sort(key=lambda d: d[0])
    t, receiver, token, index = dups[0]
    return CheckResult(
        NO_DUPLICATES,
        FAIL,
        f"{len(dups)} duplicate deliveries; first: {token} arrived again at {receiver} ({t:.4f}s)",
        str(token),
        _excerpt(receiver, record.party(receiver).snapshot(), index),
    )


def check_intact(record: RunRecord) -> CheckResult:
    sent: dict[tuple[str, int], Token] = {}
    for log in record.parties.values():
        for s in log.sent:
            sent[s.token.key] = s.token
    bad: list[tuple[float, str, str, str, int]] = []
    for name, log in record.parties.items():
        lines = log.snapshot()
        for index, dmg in log.damage:
            who = f"{dmg.sender}#{dmg.seq}" if dmg.sender else "unknown message"
            bad.append((lines[index].t, name, who, f"{dmg.reason}: {dmg.text!r}", index))
        for r in log.received:
            original = sent.get(r.token.key)
            if original is None:
                bad.append((r.t, name, str(r.token), "never sent by the harness", r.index))
            elif original != r.token:
                why = f"altered: sent {original.payload!r}, got {r.token.payload!r}"
                bad.append((r.t, name, str(r.token), why, r.index))
    if not bad:
        return CheckResult(INTACT, PASS, "every token arrived whole, checksums match")
    bad.sort(key=lambda b: b[0])
    t, receiver, who, why, index = bad[0]
    return CheckResult(
        INTACT,
        FAIL,
        f"{len(bad)} damaged deliveries; first: {who} at {receiver} ({t:.4f}s): {why}",
        who,
        _excerpt(receiver, record.party(receiver).snapshot(), index),
    )


def check_fifo(record: RunRecord) -> CheckResult:
    bad: list[tuple[float, str, Token, int, int]] = []
    for name, log in record.parties.items():
        last: dict[str, int] = {}
        for r in log.received:
            prev = last.get(r.token.sender, -1)
            if r.token.seq < prev:
                bad.append((r.t, name, r.token, prev, r.index))
            last[r.token.sender] = max(prev, r.token.seq)
    if not bad:
        return CheckResult(FIFO, PASS, "each sender's messages arrived in the order sent")
    bad.sort(key=lambda b: b[0])
    t, receiver, token, prev, index = bad[0]
    return CheckResult(
        FIFO,
        FAIL,
        f"{len(bad)} out of order; first: {token} arrived at {receiver} after "
        f"{token.sender}#{prev} ({t:.4f}s)",
        str(token),
        _excerpt(receiver, record.party(receiver).snapshot(), index),
    )


def check_same_order(record: RunRecord) -> CheckResult:
    group = record.order_group or [p for p in record.parties if record.party(p).received]
    first: tuple[float, str] | None = None
    detail = ""
    context: list[str] = []
    pairs = 0
    for i, a in enumerate(group):
        for b in group[i + 1 :]:
            ra = [r for r in record.party(a).received if r.token.kind in COUNTED]
            rb = [r for r in record.party(b).received if r.token.kind in COUNTED]
            common = {r.token.key for r in ra} & {r.token.key for r in rb}
            sa = [r for r in ra if r.token.key in common]
            sb = [r for r in rb if r.token.key in common]
            pairs += 1
            for x, y in zip(sa, sb, strict=False):
                if x.token.key != y.token.key:
                    t = max(x.t, y.t)
                    if first is None or t < first[0]:
                        first = (t, str(x.token))
                        detail = (
                            f"{a} got {x.token} where {b} got {y.token} "
                            f"(among the {len(common)} messages both received)"
                        )
                        context = _excerpt(a, record.party(a).snapshot(), x.index)
                        context += _excerpt(b, record.party(b).snapshot(), y.index)
                    break
    if pairs == 0:
        return CheckResult(SAME_ORDER, NOT_APPLICABLE, "fewer than two receivers")
    if first is None:
        return CheckResult(SAME_ORDER, PASS, f"{pairs} receiver pairs agree on the order")
    return CheckResult(SAME_ORDER, FAIL, detail, first[1], context)


def check_duplex(record: RunRecord) -> CheckResult:
    if not record.duplex_pairs:
        return CheckResult(DUPLEX, NOT_APPLICABLE, "scenario does not claim full duplex")
    proofs: list[str] = []
    for party, peer in record.duplex_pairs:
        log = record.party(party)
        heard = [r for r in log.received if r.token.sender == peer and r.token.kind in COUNTED]
        own = [s for s in log.sent if s.token.kind in COUNTED]
        proof = next((r for r in heard if own and r.t < own[-1].t), None)
        if proof is None:
            last_send = f"{own[-1].t:.4f}s" if own else "never"
            first_heard = f"{heard[0].t:.4f}s" if heard else "never"
            offender = str(heard[0].token) if heard else f"{peer}#?"
            lines = log.snapshot()
            index = heard[0].index if heard else len(lines) - 1
            return CheckResult(
                DUPLEX,
                FAIL,
                f"{party} heard nothing from {peer} while it was sending: its last line went "
                f"out at {last_send}, the first of {peer}'s arrived at {first_heard}",
                offender,
                _excerpt(party, lines, max(0, index)),
            )
        later = sum(1 for s in own if s.t > proof.t)
        proofs.append(f"{party} heard {proof.token} with {later} lines still to send")
    return CheckResult(DUPLEX, PASS, "; ".join(proofs))


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


def cause(results: Iterable[CheckResult]) -> str:
    """What made a run fail when one failure explains the others (a reset), else ''."""
    for r in results:
        if r.name == NO_RESET and r.failed:
            return r.detail.split(":", 1)[0]
    return ""


ALL_CHECKS: list[Callable[[RunRecord], CheckResult]] = [
    check_no_reset,
    check_no_loss,
    check_no_duplicates,
    check_intact,
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
