"""Checks on synthetic transcripts: each catches its fault and names the first offender."""

from __future__ import annotations

from harness import checks
from harness.tokens import make
from harness.transcript import Expectation, PartyLog, RunRecord, Turn


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


def test_loss_names_the_first_missing_message_with_both_transcripts() -> None:
    rec, _, _ = two_party([1, 2, 4])
    result = checks.check_no_loss(rec)
    assert result.status == checks.FAIL
    assert result.offender == "a#3"
    assert "2 of 5" in result.detail
    assert any("a transcript" in c for c in result.context)
    assert any("b transcript" in c for c in result.context)


def test_duplicate_names_the_repeated_message() -> None:
    rec, _, _ = two_party([1, 2, 2, 3, 4, 5])
    result = checks.check_no_duplicates(rec)
    assert (result.status, result.offender) == (checks.FAIL, "a#2")
    assert any("=>" in line for line in result.context)


def test_fifo_names_the_message_that_overtook() -> None:
    rec, _, _ = two_party([1, 3, 2, 4, 5])
    result = checks.check_fifo(rec)
    assert (result.status, result.offender) == (checks.FAIL, "a#2")
    assert "after a#3" in result.detail


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


def test_own_echo_is_not_a_delivery_or_damage() -> None:
    rec, a, _ = two_party()
    a.add_received(3.0, "> ~cbx|a|9|m|typ")  # a redrawn, half-typed line of its own
    assert a.received == [] and a.damage == []
    assert checks.check_intact(rec).status == checks.PASS


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


def test_full_duplex_needs_a_receipt_before_the_last_send() -> None:
    rec = RunRecord("synthetic", duplex_pairs=[("a", "b")])
    a, b = PartyLog("a"), PartyLog("b")
    rec.parties = {"a": a, "b": b}
    for seq in (1, 2, 3):
        a.add_sent(0.1 * seq, make("a", seq, "x"))
    a.add_received(0.5, make("b", 1, "y").encode())  # after a's last line: half duplex
    assert checks.check_duplex(rec).status == checks.FAIL
    a.add_sent(0.6, make("a", 4, "x"))  # now a heard b while it still had a line to send
    result = checks.check_duplex(rec)
    assert result.status == checks.PASS
    assert "1 lines still to send" in result.detail


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
