"""The harness must catch real faults: each faulty relay fails exactly the right checks.

Each test runs `python -m harness.run` exactly as a user would, with the DEFAULT options
of the scenario that must catch the fault (`harness.selftest.matrix.FAULTS`), against a
relay of `harness.selftest.relays` with one deliberate fault, and reads the JSON report.
``--settle`` is lowered only for faults whose verdict it does not change (it only
shortens the wait before missing lines are declared lost).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from faulty_relays import ROOT, relay_cmd, run_harness

from harness.selftest.matrix import FAULTS, OURS, Fault

# Faults whose runs wait out --settle (lines that never come): a shorter wait, same verdict.
QUICK_SETTLE = {"simplex", "drop", "split", "truncate", "chunkprefix", "nulswallow"}


@pytest.mark.parametrize("fault", FAULTS, ids=[f.mode for f in FAULTS])
def test_fault_fails_exactly_its_checks_under_default_options(
    tmp_path: object, fault: Fault
) -> None:
    settle = ["--settle", "0.5"] if fault.mode in QUICK_SETTLE else []
    out = run_harness(str(tmp_path), *fault.argv(fault.scenario), *settle)
    # Exactly its checks (plus, for chunkprefix, one that only some runs' timing shows).
    assert fault.fails <= out.failed() <= fault.fails | fault.may_also, out.stdout + out.stderr
    assert out.code == (1 if fault.fails else 0), out.stdout + out.stderr
    for check in fault.fails:
        # The terminal report names the check and the first offending message.
        assert f"FAIL {check}" in out.stdout
    if fault.fails:
        assert "first offending message" in out.stdout
    if fault.mode == "ok":
        assert out.statuses()["this project's server"] == "n/a"


def test_duplex_verdict_names_what_was_observed(tmp_path: object) -> None:
    """Simplex, half duplex (a relay serving one talker; a client reading only after it
    sent) and full duplex are told apart, in the JSON as in the table."""
    observed = {}
    for mode in ("halfduplex", "halfclient", OURS):
        fault = next(f for f in FAULTS if f.mode == mode)
        out = run_harness(str(tmp_path), *fault.argv("duplex"))
        check = next(c for c in out.report["runs"][0]["checks"] if c["name"] == "full duplex")
        observed[mode] = check["observed"]
        assert check["detail"].startswith(f"observed {check['observed']}")
    assert observed == {
        "halfduplex": "half duplex",
        "halfclient": "half duplex",
        OURS: "full duplex",
    }


def test_a_hello_a_one_way_relay_cannot_carry_is_settled_not_waited_out(
    tmp_path: object,
) -> None:
    """Against a relay that carries only the first client's lines, under the default
    options (--settle 2), each hello sync that waits for the dead direction ends on
    evidence - both ends were seen served by the relay after the hello was said - and
    the record says so, instead of waiting out 5x --settle (10 s each: 33 s a run, past
    the default --timeout on a heavily loaded machine). The verdict is unchanged."""
    fault = next(f for f in FAULTS if f.mode == "simplex")
    out = run_harness(str(tmp_path), *fault.argv(fault.scenario))
    assert out.failed() == fault.fails, out.stdout + out.stderr
    phases = out.report["runs"][0]["phases"]
    hellos = {p["name"]: p["outcome"] for p in phases if p["name"].startswith("hello: ")}
    # Which direction is dead depends on which client connected first: p1's hello to p2
    # then never arrives, or p2's to p1. The burst party (the third) is never relayed.
    settled = {name for name, outcome in hellos.items() if outcome.startswith("settled: ")}
    assert settled in (
        {"hello: p1 to p2", "hello: burst to p1, p2"},
        {"hello: p2 to p1", "hello: burst to p1, p2"},
    ), hellos
    if "hello: p1 to p2" in settled:
        assert "hello: p2 to p1" not in hellos, hellos  # the room sync stopped there
    else:
        assert hellos["hello: p1 to p2"] == "every listener heard it", hellos
    assert not any(o.startswith("no progress") for o in hellos.values()), hellos
    assert "settled 2s later, not waited out to 10s" in out.stdout
    # Every step of the run is in the record, in order, each with how it ended.
    names = [p["name"] for p in phases]
    assert names[-5:] == [
        "quiet: p2 listens to p1",
        "start: burst",
        "hello: burst to p1, p2",
        "burst",
        "settle",
    ], names
    assert all(p["end"] >= p["start"] and p["outcome"] for p in phases), phases


@pytest.mark.parametrize("scenario", ["broadcast", "churn", "crash", "slow-reader"])
def test_correct_relay_with_other_decoration_passes(tmp_path: object, scenario: str) -> None:
    """A relay that decorates lines its own way (<userN>) is judged on tokens alone, and
    this project's specific expectations are n/a for it, not failures."""
    args = ["--scenario", scenario, "--messages", "30", "--repeat", "2"]
    out = run_harness(str(tmp_path), "--server-cmd", relay_cmd("ok"), *args)
    assert out.code == 0, out.stdout + out.stderr
    assert out.statuses()["this project's server"] == "n/a"


def test_server_asking_for_a_nickname_first_without_join_is_told_to_use_join(
    tmp_path: object,
) -> None:
    """A relay that relays nothing until a client names itself (its matrix row passes
    with --join, the byte-exact burst party's name included): without --join the
    verdict's cause says what is wrong and quotes the server."""
    args = ["--server-cmd", relay_cmd("nickname"), "--scenario", "duplex", "--messages", "30"]
    out = run_harness(str(tmp_path), *args, "--settle", "0.5")
    assert out.code == 1, out.stdout + out.stderr
    cause = out.report["runs"][0]["cause"]
    assert cause.startswith("nothing was relayed: no party ever received another's line")
    assert "--join" in cause and "who are you? send your name first" in cause


def test_selftest_prints_the_matrix(tmp_path: object) -> None:
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "harness.selftest", "--fault", "ok", "--fault", "echo",
         "--scenario", "duplex"],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split("|")[1].strip() == "duplex"
    assert any(line.startswith("echo") and "*no echo" in line for line in lines), done.stdout
    assert any(line.startswith("ok") and "pass" in line for line in lines), done.stdout
    assert "selftest: every fault caught as expected" in done.stdout
