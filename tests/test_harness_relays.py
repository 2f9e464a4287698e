"""The harness must catch real faults: each faulty relay fails, with the right check named.

Each test runs `python -m harness.run` exactly as a user would, against a relay from
tests/faulty_relays.py that has one deliberate fault, and reads the JSON report.
"""

from __future__ import annotations

import pytest
from faulty_relays import relay_cmd, run_harness

# (relay mode, harness arguments, the checks that must fail, whether only those may)
FAULTS = [
    ("drop", ["--scenario", "duplex", "--messages", "30"], {"no loss"}, False),
    ("duplicate", ["--scenario", "duplex", "--messages", "30"], {"no duplicates"}, False),
    ("reorder", ["--scenario", "duplex", "--messages", "30"], {"per-sender FIFO"}, False),
    ("simplex", ["--scenario", "duplex", "--messages", "20"], {"no loss", "full duplex"}, False),
    # Serialised directions lose nothing: full duplex is the one thing wrong.
    ("halfduplex", ["--scenario", "duplex", "--messages", "20"], {"full duplex"}, True),
    (
        "chunkprefix",
        ["--scenario", "broadcast", "--clients", "4", "--messages", "100"],
        {"payload intact"},
        False,
    ),
]


@pytest.mark.parametrize(("mode", "args", "checks", "only"), FAULTS, ids=[f[0] for f in FAULTS])
def test_harness_fails_faulty_relay_naming_the_check(
    tmp_path: object, mode: str, args: list[str], checks: set[str], only: bool
) -> None:
    out = run_harness(str(tmp_path), "--server-cmd", relay_cmd(mode), "--settle", "0.5", *args)
    assert out.code == 1, out.stdout + out.stderr
    if only:
        assert out.failed() == checks, out.stdout
    else:
        assert checks <= out.failed(), out.stdout
    for check in checks:
        # The terminal report names the check and the first offending message.
        assert f"FAIL {check}" in out.stdout
    assert "first offending message" in out.stdout


@pytest.mark.parametrize("scenario", ["duplex", "broadcast", "churn", "crash", "slow-reader"])
def test_correct_relay_with_other_decoration_passes(tmp_path: object, scenario: str) -> None:
    """A relay that decorates lines its own way (<userN>) is judged on tokens alone, and
    this project's specific expectations are n/a for it, not failures."""
    args = ["--scenario", scenario, "--messages", "30", "--repeat", "2"]
    out = run_harness(str(tmp_path), "--server-cmd", relay_cmd("ok"), *args)
    assert out.code == 0, out.stdout + out.stderr
    assert out.statuses()["this project's server"] == "n/a"


def test_server_that_never_finishes_fails_bounded_time(tmp_path: object) -> None:
    """Always making progress, so never declared lost: only the deadline can stop it."""
    args = ["--scenario", "duplex", "--messages", "30", "--timeout", "4", "--settle", "0.5"]
    out = run_harness(str(tmp_path), "--server-cmd", relay_cmd("trickle"), *args)
    assert out.code == 1, out.stdout + out.stderr
    assert "bounded time" in out.failed()
    bounded = next(c for c in out.report["runs"][0]["checks"] if c["name"] == "bounded time")
    assert "waiting for" in bounded["detail"]
