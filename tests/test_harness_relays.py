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
