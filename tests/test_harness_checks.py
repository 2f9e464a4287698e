"""Checks on synthetic transcripts: each catches its fault and names the first offender."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harness import checks
from harness.tokens import HELLO, make
from harness.transcript import Expectation, PartyLog, QuietPhase, RunRecord, Turn


def two_party(
    deliver_to_b: list[int] | None = None, n: int = 5, spacing: float = 0.01
) -> tuple[RunRecord, PartyLog, PartyLog]:
    """a sends n messages to b; b receives those in ``deliver_to_b`` (seqs), in that order."""
    rec = RunRecord("synthetic")
    a, b = PartyLog("a"), PartyLog("b")
    rec.parties = {"a": a, "b": b}
    rec.expectations = [Expectation("b", ["a"])]
    for seq in range(1, n + 1):
        a.add_sent(seq * spacing, make("a", seq, f"payload{seq}"))
    for i, seq in enumerate(deliver_to_b if deliver_to_b is not None else range(1, n + 1)):
        b.add_received(1 + i * spacing, "<a> " + make("a", seq, f"payload{seq}").encode())
    return rec, a, b


def test_clean_transcript_passes_every_generic_check() -> None:
    rec, _, _ = two_party()
    results = {r.name: r.status for r in checks.run_checks(rec)}
    for name in (checks.NO_LOSS, checks.NO_DUPLICATES, checks.INTACT, checks.FIFO):
        assert results[name] == checks.PASS


@pytest.mark.parametrize(
    ("delivered", "check", "offender", "detail", "context"),
    [
        # The first missing message, with both transcripts.
        pytest.param(
            [1, 2, 4], checks.check_no_loss, "a#3", "2 of 5", ["a transcript", "b transcript"],
            id="loss",
        ),
        # The repeated message, marked in the excerpt.
        pytest.param(
            [1, 2, 2, 3, 4, 5], checks.check_no_duplicates, "a#2", "", ["=>"], id="duplicate"
        ),
        # The message that was overtaken, and by which.
        pytest.param([1, 3, 2, 4, 5], checks.check_fifo, "a#2", "after a#3", [], id="fifo"),
    ],
)  # fmt: skip
def test_a_faulty_delivery_fails_its_check_naming_the_first_offender(
    delivered: list[int],
    check: Callable[[RunRecord], checks.CheckResult],
    offender: str,
    detail: str,
    context: list[str],
) -> None:
    """b receives a's five lines as ``delivered`` (seqs, in that order)."""
    rec, _, _ = two_party(delivered)
    result = check(rec)
    assert (result.status, result.offender) == (checks.FAIL, offender)
    assert detail in result.detail
    for piece in context:
        assert any(piece in line for line in result.context), result.context


def test_fifo_does_not_judge_a_nudge_numbered_before_lines_typed_ahead_of_it() -> None:
    """A hello is numbered by the thread that nudges, then typed after the talker's next
    lines: arriving after them is the order it was typed in, not a reordering."""
    rec, a, b = two_party([1, 2, 3])
    hello = make("a", 4, "nudge", HELLO)
    a.add_sent(0.5, hello)
    for seq in (5, 6):
        a.add_sent(0.4, make("a", seq, f"payload{seq}"))
        b.add_received(1.1, "<a> " + make("a", seq, f"payload{seq}").encode())
    b.add_received(1.2, "<a> " + hello.encode())
    assert checks.check_fifo(rec).status == checks.PASS
    b.add_received(1.3, "<a> " + make("a", 3, "payload3").encode())
    assert checks.check_fifo(rec).status == checks.FAIL  # a message out of order still fails


def test_damaged_token_fails_intact() -> None:
    rec, _, b = two_party([1, 2])
    b.add_received(2.0, "<a> " + make("a", 3, "payload3").encode().replace("3", "8", 1))
    result = checks.check_intact(rec)
    assert result.status == checks.FAIL
    assert "checksum mismatch" in result.detail or "broken" in result.detail


def test_spliced_line_fails_intact() -> None:
    rec, _, b = two_party([1])
    text = make("a", 2, "payload2").encode()
    b.add_received(2.0, "<a> " + text[:10] + "<a> " + text[10:])
    assert checks.check_intact(rec).status == checks.FAIL


def test_own_local_echo_is_kept_as_evidence_but_not_a_delivery_or_damage() -> None:
    rec, a, _ = two_party()
    a.add_received(3.0, "> ~cbx|a|9|m|typ")  # a redrawn, half-typed line of its own
    a.add_received(3.1, "> " + make("a", 1, "payload1").encode())  # typed text redrawn
    assert a.received == [] and a.damage == []
    assert [r.token.seq for r in a.own] == [1]
    assert checks.check_intact(rec).status == checks.PASS
    # Bare typed text is not the server's "<a> " decoration: a local echo, not a fault.
    assert checks.check_echo(rec).status == checks.PASS


def test_line_returned_to_its_sender_with_its_decoration_fails_no_echo() -> None:
    rec, a, _ = two_party()
    a.add_received(3.0, "<a> " + make("a", 2, "payload2").encode())
    result = checks.check_echo(rec)
    assert (result.status, result.offender) == (checks.FAIL, "a#2")
    rec.echo = True  # declared: the server echoes by design
    assert checks.check_echo(rec).status == checks.NOT_APPLICABLE


def test_echo_cannot_be_told_from_local_echo_without_decoration() -> None:
    rec = RunRecord("synthetic")
    a, b = PartyLog("a"), PartyLog("b")
    rec.parties = {"a": a, "b": b}
    tok = make("a", 1, "x")
    a.add_sent(0.1, tok)
    b.add_received(0.2, tok.encode())
    a.add_received(0.2, tok.encode())
    result = checks.check_echo(rec)
    assert result.status == checks.NOT_APPLICABLE
    assert result.detail.startswith("unknown")


def test_two_tokens_in_one_line_and_stray_bytes_fail_one_message_per_line() -> None:
    rec, _, b = two_party([1])
    b.add_received(2.0, "<a> " + make("a", 2, "p").encode() + "<a> " + make("a", 3, "q").encode())
    result = checks.check_framing(rec)
    assert (result.status, result.offender) == (checks.FAIL, "a#2")
    assert "merged: 2 tokens in one line" in result.detail
    rec2, _, b2 = two_party([1])
    b2.add_received(2.0, "<a> " + make("a", 2, "p").encode() + "<a> ")
    assert "stray bytes after a#2" in checks.check_framing(rec2).detail
    assert checks.check_framing(two_party()[0]).status == checks.PASS


def three_senders(decorate: dict[str, str]) -> tuple[RunRecord, PartyLog]:
    rec = RunRecord("synthetic")
    logs = {n: PartyLog(n) for n in ("a", "b", "r")}
    rec.parties = dict(logs)
    for seq in range(1, 6):
        for sender in ("a", "b"):
            tok = make(sender, seq, "x")
            logs[sender].add_sent(seq * 0.1, tok)
            logs["r"].add_received(
                seq * 0.1 + 0.05, decorate[sender].replace("%d", str(seq)) + tok.encode()
            )
    return rec, logs["r"]


def test_line_shown_as_another_senders_fails_right_sender() -> None:
    rec, r = three_senders({"a": "[12:0%d] alice> ", "b": "[12:0%d] bob> "})
    assert checks.check_attribution(rec).status == checks.PASS  # timestamps may vary
    r.add_received(1.0, "[12:09] bob> " + make("a", 6, "x").encode())
    result = checks.check_attribution(rec)
    assert (result.status, result.offender) == (checks.FAIL, "a#6")
    assert "how b's lines are shown" in result.detail


def test_right_sender_is_na_when_nothing_names_the_sender() -> None:
    rec, _ = three_senders({"a": "", "b": ""})
    assert checks.check_attribution(rec).status == checks.NOT_APPLICABLE


def test_expected_cut_on_the_last_line_is_honoured_not_edited() -> None:
    rec, _, b = two_party([1, 2])
    b.add_received(2.0, "<a> " + make("a", 3, "payload3").encode()[:12])
    assert checks.check_intact(rec).status == checks.FAIL
    rec.may_be_cut["b"] = "killed mid-stream"
    result = checks.check_intact(rec)
    assert result.status == checks.PASS and "killed mid-stream" in result.detail
    assert len(b.damage) == 1  # the evidence is still there
    b.add_received(2.1, "<a> " + make("a", 4, "payload4").encode()[:12])
    assert checks.check_intact(rec).status == checks.FAIL  # only the last line may be cut


def test_receivers_disagreeing_on_order_fail_same_order() -> None:
    rec = RunRecord("synthetic")
    s, r1, r2 = PartyLog("s"), PartyLog("r1"), PartyLog("r2")
    t = PartyLog("t")
    rec.parties = {"s": s, "t": t, "r1": r1, "r2": r2}
    m1, m2 = make("s", 1, "x"), make("t", 1, "y")
    s.add_sent(0.1, m1)
    t.add_sent(0.1, m2)
    r1.add_received(0.2, m1.encode())
    r1.add_received(0.3, m2.encode())
    r2.add_received(0.2, m2.encode())
    r2.add_received(0.3, m1.encode())
    result = checks.check_same_order(rec)
    assert result.status == checks.FAIL
    assert "r1 got s#1 where r2 got t#1" in result.detail


def duplex_record() -> tuple[RunRecord, PartyLog, PartyLog]:
    rec = RunRecord("synthetic", duplex_pairs=[("a", "b"), ("b", "a")])
    a, b = PartyLog("a"), PartyLog("b")
    rec.parties = {"a": a, "b": b}
    return rec, a, b


def duplex_verdict(
    typed: dict[str, list[float]], shown: dict[str, list[tuple[float, int]]]
) -> checks.CheckResult:
    """The full-duplex check on a talk between a and b (see `talk`)."""
    rec, _, _ = duplex_record()
    talk(rec, typed, shown)
    return checks.check_duplex(rec)


def talk(
    rec: RunRecord, typed: dict[str, list[float]], shown: dict[str, list[tuple[float, int]]]
) -> None:
    """``typed[p]``: when each of p's lines (#1, #2, ...) was typed; ``shown[p]``: (when,
    seq) of the peer's lines p displayed (the two parties are each other's peer)."""
    names = list(typed)
    for name in names:
        for seq, t in enumerate(typed[name], 1):
            rec.party(name).add_sent(t, make(name, seq, "x"))
    for name in names:
        peer = next(n for n in names if n != name)
        for t, seq in shown[name]:
            rec.party(name).add_received(t, make(peer, seq, "x").encode())


def test_full_duplex_is_a_line_carried_between_two_of_the_peers_quickly() -> None:
    """a shows b#2, then begins a#4 (after a#3 was typed), which b shows before it begins
    b#6, which a shows: the server read a#4 between b#2 and b#6. And the other way."""
    times = [0.1 * k for k in range(1, 7)]
    typed = {"a": times, "b": times}
    shown = {p: [(t + 0.05, seq) for seq, t in enumerate(times, 1)] for p in typed}
    result = duplex_verdict(typed, shown)
    assert (result.status, result.observed) == (checks.PASS, checks.FULL_DUPLEX)
    assert "a displayed b#2, then typed a#4, which b displayed before typing b#6" in (result.detail)
    assert "b's lines in between were read at most 0.250s apart" in result.detail


def test_full_duplex_is_not_proven_by_lines_that_waited_in_a_buffer() -> None:
    """A server serving one talker at a time, under load: b talks first, a's lines wait
    in a socket buffer; a starved b falls quiet, a's lines go through, then b's. Each
    party displayed a peer line before some of its own reached the peer - but all its
    lines had been typed before that display: nothing shows both directions at once.
    And a#1 was left unread for 1.8 s while b#2, begun after it, went through."""
    typed = {"a": [0.10, 0.11, 0.12, 0.13], "b": [0.10, 0.11, 2.60, 2.61]}
    shown = {"a": [(0.20, 1), (0.21, 2), (4.2, 3), (4.3, 4)]}
    shown["b"] = [(2.0, 1), (2.1, 2), (2.2, 3), (2.3, 4)]
    result = duplex_verdict(typed, shown)
    assert (result.status, result.observed) == (checks.FAIL, checks.HALF_DUPLEX)
    assert "a's lines were never carried between two of b's" in result.detail


def test_a_talk_too_short_for_either_proof_is_unknown_not_half_duplex() -> None:
    """Both parties type all their lines within a few milliseconds, before either has
    displayed a line of the other (a fast loopback: a window of lines goes into a pty
    at once). Nothing was carried between two of the other's lines, but nothing was held
    either: no evidence either way, so the verdict is unknown, never FAIL."""
    typed = {p: [0.100 + 0.001 * k for k in range(5)] for p in ("a", "b")}
    shown = {p: [(0.106 + 0.001 * k, k + 1) for k in range(5)] for p in typed}
    result = duplex_verdict(typed, shown)
    assert (result.status, result.observed) == (checks.NOT_APPLICABLE, "unknown")
    assert "a's lines were never seen carried between two of b's" in result.detail
    assert "the talk ended before either proof" in result.detail


def test_a_line_left_unread_while_the_peer_is_heard_is_half_duplex() -> None:
    """A server serving b alone while b talks: a's first line, typed at 0.1, is shown
    to b only at 3.5, after b stopped; meanwhile a displayed b's lines, begun after it,
    within 0.05 s. The talk never gave a chain, but a's line was left unread while b
    was heard: half duplex, with the evidence."""
    times = [0.1 * k for k in range(1, 31)]
    typed = {"a": [0.1, 0.2, 0.3], "b": times}
    shown = {"a": [(t + 0.05, seq) for seq, t in enumerate(times, 1)]}
    shown["b"] = [(3.5, 1), (3.5, 2), (3.5, 3)]
    result = duplex_verdict(typed, shown)
    assert (result.status, result.observed) == (checks.FAIL, checks.HALF_DUPLEX)
    assert "a's lines were never carried between two of b's, and one was left unread" in (
        result.detail
    )
    assert "b displayed a#1 3.40s after it was typed, 3.25s after a displayed b#2" in (
        result.detail
    )


def test_full_duplex_is_not_proven_by_turns_taken_at_a_pause() -> None:
    """The same server, switching at each 1.5 s pause of its talker: b talks, pauses
    (starved); a's lines go through; b talks again. The lines do interleave (a#4 begun
    after a showed b#2, shown to b before b began b#4), but slower than a server taking
    turns at pauses can also do it."""
    typed = {"a": [0.1, 0.2, 0.3, 0.4], "b": [0.1, 0.2, 0.3, 0.4, 0.5, 3.0, 3.1]}
    shown = {"a": [(0.1 * seq + 0.05, seq) for seq in range(1, 6)] + [(3.4, 6), (3.4, 7)]}
    shown["b"] = [(1.8, seq) for seq in (1, 2, 3, 4)]
    result = duplex_verdict(typed, shown)
    assert (result.status, result.observed) == (checks.FAIL, checks.HALF_DUPLEX)
    assert "a's lines were carried between b's only in turns" in result.detail
    assert "b#2, then typed a#4, which b displayed before typing b#7" in result.detail
    assert "b's lines may have paused 3.00s after b#5" in result.detail
    assert "full duplex needs under 1.4s" in result.detail


def test_full_duplex_is_unknown_where_every_line_is_slow_on_the_way() -> None:
    """Each line takes 1.5 s to be shown (a slow link, a loaded machine): the lines do
    interleave, but a pause that long is what any line's trip may hide here."""
    times = [0.1 * k for k in range(1, 61)]
    typed = {"a": times, "b": times}
    shown = {p: [(t + 1.5, seq) for seq, t in enumerate(times, 1)] for p in typed}
    result = duplex_verdict(typed, shown)
    assert (result.status, result.observed) == (checks.NOT_APPLICABLE, "unknown")
    assert "a's lines took too long on the way to tell" in result.detail


def test_a_line_whose_typing_may_have_begun_before_the_display_proves_nothing() -> None:
    """Sent.t is taken when the write is done: a#2 written by 0.3 may have been read by
    the server before b#1 (shown at 0.25) was; only a#3, begun after a#2 was done, counts."""
    rec, _, _ = duplex_record()
    typed = {"a": [0.10, 0.30], "b": [0.10, 0.20, 0.50, 0.60]}
    shown = {"a": [(0.25, 2), (0.55, 3), (0.65, 4)], "b": [(0.40, 2)]}
    talk(rec, typed, shown)
    assert checks.interleaving(rec, "a", "b") is None
    rec.party("a").add_sent(0.35, make("a", 3, "x"))
    rec.party("b").add_received(0.45, make("a", 3, "x").encode())
    found = checks.interleaving(rec, "a", "b")
    assert found is not None and (str(found.own), str(found.second.token)) == ("a#3", "b#4")


def test_one_direction_never_delivered_is_simplex() -> None:
    rec, a, b = duplex_record()
    a.add_sent(0.1, make("a", 1, "x"))
    b.add_sent(0.1, make("b", 1, "y"))
    b.add_received(0.2, make("a", 1, "x").encode())
    result = checks.check_duplex(rec)
    assert (result.status, result.observed) == (checks.FAIL, checks.SIMPLEX)


def test_lines_shown_only_after_typing_again_fail_the_quiet_phase() -> None:
    rec, a, b = duplex_record()
    for seq in (1, 2):
        a.add_sent(0.1 * seq, make("a", seq, "x"))
        b.add_sent(0.1 * seq, make("b", seq, "y"))
    b.add_received(0.15, make("a", 1, "x").encode())
    a.add_received(0.15, make("b", 1, "y").encode())
    b.add_received(0.3, make("a", 2, "x").encode())
    a.add_received(0.3, make("b", 2, "y").encode())
    rec.concurrent_until = 0.5
    for seq in (3, 4):
        b.add_sent(1.0, make("b", seq, "y"))
    rec.quiet_phases = [QuietPhase("a", "b", [3, 4], 1.0, 3.0)]
    a.add_received(1.1, make("b", 3, "y").encode())  # one read's worth during the phase
    a.add_received(3.5, make("b", 4, "y").encode())  # the rest once it typed again
    result = checks.check_duplex(rec)
    assert (result.status, result.observed) == (checks.FAIL, checks.HALF_DUPLEX)
    assert "displayed 1 of b's 2 lines; 1 more only after it typed again" in result.detail


def quiet_record(pace: float, during: list[float], late: list[float], end: float) -> RunRecord:
    """a and b stream 10 lines each at once, b's lines reaching a ``pace`` s apart (that
    path's pace); then a types nothing while b sends 20 lines from t=20: a displays them
    at ``during`` (in the phase, which ends at ``end``), then at ``late``."""
    rec, a, b = duplex_record()
    times = [pace * k for k in range(1, 11)]
    talk(
        rec,
        {"a": times, "b": times},
        {p: [(t + 0.05, s) for s, t in enumerate(times, 1)] for p in "ab"},
    )
    rec.concurrent_until = times[-1] + 0.1
    seqs = list(range(11, 31))
    for seq in seqs:
        b.add_sent(20.0, make("b", seq, "y"))
    rec.quiet_phases = [QuietPhase("a", "b", seqs, 20.0, end)]
    for t, seq in zip([*during, *late], seqs, strict=True):
        a.add_received(t, make("b", seq, "y").encode())
    return rec


def test_a_quiet_phase_on_a_slow_path_is_judged_at_that_paths_pace() -> None:
    """The shape of a full-duplex server seen through a throttled, sliced proxy at load
    17: b's lines reached a about 1 s apart while both talked; in a's quiet phase 11
    arrived, then none for 2.8 s (more than --settle), then the rest, as slowly. That is
    the path's pace, not a client waiting to type: no half duplex."""
    during = [20.1 + 0.1 * k for k in range(11)]  # the last at 21.1
    late = [23.9 + 0.5 * k for k in range(9)]  # 2.8 s of silence, then as slow as before
    result = checks.check_duplex(quiet_record(1.0, during, late, end=23.1))
    assert result.status != checks.FAIL, result.detail
    assert "quiet FAILED" not in result.detail
    assert "9 more after the phase, but at this path's pace (the first after 2.80s" in (
        result.detail
    )
    assert checks.quiet_patience(quiet_record(1.0, during, late, 23.1), "a", "b") == pytest.approx(
        4
    )


def test_lines_shown_only_after_typing_again_fail_the_quiet_phase_on_a_slow_path_too() -> None:
    """A client that displays only after it typed shows its late lines after the whole
    patience: on a fast path --settle, on a slow one QUIET_PATIENCE times its pace (at
    most QUIET_PATIENCE x --settle, so no path excuses a silence of 8 s or more)."""
    during = [20.1]  # one read's worth
    late = [22.5 + 0.001 * k for k in range(19)]  # all at once, once it typed again
    result = checks.check_duplex(quiet_record(0.1, during, late, end=22.2))
    assert (result.status, result.observed) == (checks.FAIL, checks.HALF_DUPLEX)
    assert "displayed 1 of b's 20 lines; 19 more only after it typed again" in result.detail
    assert "the first after 2.400s of silence (this path's pace allows 2.000s)" in result.detail
    late = [28.2 + 0.001 * k for k in range(19)]  # 8.1 s after: past even a slow path's
    result = checks.check_duplex(quiet_record(3.0, during, late, end=28.1))
    assert (result.status, result.observed) == (checks.FAIL, checks.HALF_DUPLEX)
    assert "this path's pace allows 8.000s" in result.detail


def test_turn_taken_before_the_cue_arrived_fails() -> None:
    rec = RunRecord("synthetic")
    a, b = PartyLog("a"), PartyLog("b")
    rec.parties = {"a": a, "b": b}
    rec.turns = [Turn("a", 1, None), Turn("b", 1, ("a", 1))]
    a.add_sent(0.1, make("a", 1, "hi"))
    b.add_sent(0.2, make("b", 1, "too early"))
    b.add_received(0.3, make("a", 1, "hi").encode())
    result = checks.check_turns(rec)
    assert (result.status, result.offender) == (checks.FAIL, "b#1")


def test_timeout_and_leftovers_and_dead_server_fail() -> None:
    rec = RunRecord("synthetic", timed_out=True, timeout=5, stalled=["3 of a's lines at b"])
    assert checks.check_bounded(rec).status == checks.FAIL
    assert "3 of a's lines" in checks.check_bounded(rec).detail
    rec.leftovers = ["party a (process group 123)"]
    assert checks.check_leftovers(rec).status == checks.FAIL
    rec.server_exit = "signal 9"
    assert checks.check_server_alive(rec).status == checks.FAIL


def test_project_specific_expectations_are_na_for_other_servers() -> None:
    rec = RunRecord("synthetic", specific=None)
    assert checks.check_specific(rec).status == checks.NOT_APPLICABLE
    rec.specific = {"welcome": (False, "no '* welcome' line")}
    assert checks.check_specific(rec).status == checks.FAIL


RESET_LINE = "impair: reset client 127.0.0.1:40312 after 2000 bytes (reset-after)"
PASSED_ON = "impair: reset client 127.0.0.1:40400 because one side reset"


def test_no_reset_is_na_without_the_impairment_proxy() -> None:
    rec, _, _ = two_party()
    assert checks.check_no_reset(rec).status == checks.NOT_APPLICABLE
    assert checks.cause(checks.run_checks(rec)) == ""


def test_a_reset_passed_on_by_the_proxy_is_not_an_impairment_reset() -> None:
    rec, _, _ = two_party()
    rec.impair_log = [(0.5, PASSED_ON)]
    assert checks.check_no_reset(rec).status == checks.PASS


def test_reset_after_is_named_as_the_cause_of_the_losses_it_makes() -> None:
    rec, _, _ = two_party([1, 2])
    rec.impair_log = [(0.25, "impair: something else"), (0.75, RESET_LINE), (0.8, RESET_LINE)]
    results = checks.run_checks(rec)
    reset = next(r for r in results if r.name == checks.NO_RESET)
    assert reset.status == checks.FAIL
    assert reset.detail.startswith("connection reset by impairment (reset-after=2000)")
    assert "2 connection(s) reset, the first at 0.7500s" in reset.detail
    assert reset.offender == "client 127.0.0.1:40312"
    assert any(RESET_LINE in line for line in reset.context)
    # The loss is still reported (exit 1), but the reset is what the run names as cause.
    assert {r.name for r in results if r.failed} == {checks.NO_RESET, checks.NO_LOSS}
    assert checks.cause(results) == "connection reset by impairment (reset-after=2000)"


def test_reset_after_zero_is_named_too() -> None:
    rec, _, _ = two_party()
    rec.impair_log = [(0.1, "impair: reset client 127.0.0.1:1 at once (reset-after=0)")]
    assert "reset-after=0" in checks.check_no_reset(rec).detail
