"""The harness with hundreds of parties: descriptors past 1023, limits it cannot raise,
and a room of 150 that all hear everyone (slow: ~1 minute on a busy 2-core machine)."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from collections.abc import Iterator

import pytest
from faulty_relays import relay_cmd, run_harness

from harness import checks
from harness.party import SELECT_LIMIT
from harness.pytest_plugin import Room
from harness.tokens import make
from harness.transcript import PartyLog, RunRecord


@pytest.fixture
def high_descriptors() -> Iterator[None]:
    """Hold enough descriptors open that the next ones opened (a party's pty) are above
    1023, as they are in a run of hundreds of parties."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = SELECT_LIMIT + 256
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.fail(f"the open-file hard limit {hard} is below {want}: raise it to run this")
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    held: list[int] = []
    try:
        while not held or held[-1] < SELECT_LIMIT:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_parties_on_descriptors_above_1023_still_hear_each_other(
    high_descriptors: None, chatbox_room: Room
) -> None:
    alice, bob = chatbox_room.join("alice", "bob")
    assert bob.child is not None and bob.child.child_fd >= SELECT_LIMIT
    hi = chatbox_room.say(alice, "hello from far up the descriptor table")
    assert chatbox_room.heard(bob, hi)
    back = chatbox_room.say(bob, "heard you")
    assert chatbox_room.heard(alice, back)


def _low_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_an_open_file_limit_too_low_for_the_parties_is_a_clear_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness.run", "--scenario", "broadcast", "--clients", "300"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_low_open_files,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "300 parties need about" in out and "hard limit is 256" in out, out
    assert "Traceback" not in out


@pytest.mark.slow
def test_a_room_of_150_parties_all_hear_everyone() -> None:
    """A broadcast among 150 client processes in ptys passes every check (the default
    timeout grows with the parties; joining waits while listeners still arrive)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.run",
            "--scenario",
            "broadcast",
            "--clients",
            "150",
            "--messages",
            "1",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "PASS: 1/1 runs passed" in out, out


def _room_record(parties: int, lines: int) -> RunRecord:
    """A broadcast's record: every party sends ``lines`` lines and every other party
    receives them all, in one order (no echo)."""
    rec = RunRecord("synthetic")
    names = [f"p{i + 1}" for i in range(parties)]
    rec.parties = {name: PartyLog(name) for name in names}
    sent = [make(name, seq, f"line {seq}") for seq in range(1, lines + 1) for name in names]
    for i, token in enumerate(sent):
        rec.parties[token.sender].add_sent(i * 0.001, token)
        for name in names:
            if name != token.sender:
                rec.parties[name].add_received(1 + i * 0.001, f"<{token.sender}> {token.encode()}")
    return rec


def test_a_room_of_200_in_one_order_passes_same_order() -> None:
    result = checks.check_same_order(_room_record(200, 3))
    assert result.status == checks.PASS, result.detail
    assert "200 receivers agree on one order of the 600 lines" in result.detail


def test_one_receiver_of_200_with_two_senders_swapped_fails_same_order() -> None:
    """Without comparing all 19,900 pairs, the one receiver that saw two senders' lines
    the other way round is named, with a receiver that saw them in the room's order."""
    rec = _room_record(200, 3)
    received = rec.parties["p150"].received
    received[300], received[301] = received[301], received[300]
    first, second = received[301].token, received[300].token
    result = checks.check_same_order(rec)
    assert result.status == checks.FAIL
    assert f"got {first} where p150 got {second}" in result.detail, result.detail
    assert "p150 transcript:" in "\n".join(result.context)


def test_two_small_receivers_that_disagree_where_no_big_one_looks_still_fail() -> None:
    """The receivers with the most lines agree with everyone on what they share; two
    others disagree on lines none of those got: the check still finds them."""
    rec = RunRecord("synthetic")
    big = {f"r{i}": PartyLog(f"r{i}") for i in range(1, 4)}
    a, b = PartyLog("a"), PartyLog("b")
    rec.parties = {**big, "a": a, "b": b}
    shared = [make(s, q, "x") for q in range(1, 6) for s in ("s", "t")]
    for log in big.values():
        for i, token in enumerate(shared):
            log.add_received(1 + i * 0.01, token.encode())
    u, v = make("u", 1, "y"), make("v", 1, "z")
    for log, tail in ((a, (u, v)), (b, (v, u))):
        for i, token in enumerate((shared[0], shared[1], *tail)):
            log.add_received(2 + i * 0.01, token.encode())
    result = checks.check_same_order(rec)
    assert result.status == checks.FAIL
    assert "a got u#1 where b got v#1" in result.detail, result.detail


def test_a_relay_that_reorders_for_some_receivers_fails_same_order_in_a_room_of_40(
    tmp_path: object,
) -> None:
    """At scale the order check compares receivers with a few references, not every
    pair: a relay that delays every other sender/receiver pair still fails it (and only
    it), naming two receivers and the lines they disagree on."""
    out = run_harness(
        str(tmp_path),
        "--scenario",
        "broadcast",
        "--clients",
        "40",
        "--messages",
        "5",
        "--server-cmd",
        relay_cmd("crossorder"),
        timeout=300,
    )
    assert out.failed() == {checks.SAME_ORDER}, out.stdout + out.stderr
    check = next(c for c in out.report["runs"][0]["checks"] if c["name"] == checks.SAME_ORDER)
    assert re.match(r"p\d+ got \S+#\d+ where (p\d+|burst) got \S+#\d+ \(among", check["detail"])
    assert "40 parties started in" in " ".join(out.report["runs"][0]["notes"]), out.stdout
