"""A server that dies is the cause, wherever it died; readiness never kills a server.

Each test runs `python -m harness.run` as a user would against a relay from
tests/faulty_relays.py (or a shell one-liner) and reads what the user reads: the exit code,
the cause line, the server's stderr in the report and in the JSON.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from faulty_relays import DIES_FIRST, DIES_LAST, DIES_LINES, relay_cmd, run_harness

from harness.processes import end_group

SHORT = ["--messages", "30", "--settle", "0.5"]


def test_a_server_killed_by_a_connection_closed_unspoken_passes_with_the_default_readiness(
    tmp_path: Path,
) -> None:
    """The relay announces itself, so the harness waits for that line and never probes."""
    out = run_harness(str(tmp_path), "--server-cmd", relay_cmd("probedie"), *SHORT)
    assert out.code == 0, out.stdout + out.stderr
    ready = out.report["runs"][0]["server"]["ready"]
    assert ready.startswith("line ('listening on 127.0.0.1:"), ready
    assert "server ready: line" in out.stdout


def test_the_port_probe_kills_it_and_the_death_is_the_cause_not_a_client(tmp_path: Path) -> None:
    """--ready=port connects and closes: this relay dies of it. The clients then cannot
    join, but what the user is told is that the server died, with its traceback."""
    args = ["--server-cmd", relay_cmd("probedie"), "--ready", "port", *SHORT]
    out = run_harness(str(tmp_path), *args)
    assert out.code == 1, out.stdout + out.stderr
    run = out.report["runs"][0]
    assert run["cause"] == "the server died (exit 1) while the parties were joining"
    assert "cause (run 1): the server died (exit 1) while the parties were joining" in out.stdout
    assert out.statuses()["server survived"] == "fail"
    assert run["server"]["ready"].startswith("port (")
    assert "setup failed" not in out.stderr
    # The head of its stderr, where a traceback starts, is in the report.
    assert "\n  Traceback (most recent call last):\n" in out.stdout
    assert run["server"]["stderr_head"].startswith("Traceback (most recent call last):")
    assert "BrokenPipeError: user1 closed before it said anything" in out.stdout


def test_a_server_that_aborts_mid_run_fails_server_survived_with_its_whole_stderr(
    tmp_path: Path,
) -> None:
    artifacts = tmp_path / "artifacts"
    args = ["--server-cmd", relay_cmd("dies", after=30), "--messages", "60", "--settle", "0.5"]
    out = run_harness(str(tmp_path), *args, "--artifacts", str(artifacts))
    assert out.code == 1, out.stdout + out.stderr
    run = out.report["runs"][0]
    assert run["cause"] == "the server died (signal 6, SIGABRT) during the run"
    assert out.statuses()["server survived"] == "fail"
    assert out.stdout.splitlines()[-1].endswith(
        "(the server died (signal 6, SIGABRT) during the run)"
    )
    # Its first and its last words, in the report and in the JSON.
    assert DIES_FIRST in out.stdout and DIES_LAST in out.stdout
    assert run["server"]["stderr_head"].splitlines()[0] == DIES_FIRST
    assert run["server"]["stderr_tail"].splitlines()[-1] == DIES_LAST
    assert run["server"]["stderr_lines"] == DIES_LINES
    whole = (artifacts / "duplex-run1" / "server.stderr").read_text().splitlines()
    assert len(whole) == DIES_LINES and whole[0] == DIES_FIRST and whole[-1] == DIES_LAST
    # Once it was gone nothing waited for what it could no longer relay: no nudge got
    # its own --settle, and the quiet phases, typed after its death, were not waited out.
    outcomes = [(p["name"], p["outcome"]) for p in run["phases"]]
    settles = [o for name, o in outcomes if name == "settle"]
    assert settles and all(o.startswith("gave up waiting: the server had exited") for o in settles)
    quiet = [o for name, o in outcomes if name.startswith("quiet: ")]
    assert len(quiet) == 2, outcomes
    assert all(o == "not waited for: the server had exited before a line was typed" for o in quiet)


@pytest.fixture
def cpu_load() -> object:
    """Two busy processes per core, for as long as the test runs (ended and reaped)."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(4)
    ]
    try:
        yield hogs
    finally:
        for hog in hogs:
            end_group(hog.pid, lambda hog=hog: hog.poll() is not None, grace=0.5)  # type: ignore[misc]


def test_a_server_that_exits_at_once_is_a_setup_error_with_its_stderr_even_under_load(
    tmp_path: Path, cpu_load: object
) -> None:
    """Its stderr is read to the end before the message is made, however busy the CPUs."""
    for _ in range(5):
        out = run_harness(str(tmp_path), "--server-cmd", 'sh -c "echo boom >&2; exit 3"')
        assert out.code == 2, out.stdout + out.stderr
        assert "the server exited (exit 3) before it was ready; its stderr:\nboom" in out.stderr


def test_a_fixed_delay_readiness_is_reported(tmp_path: Path) -> None:
    out = run_harness(
        str(tmp_path), "--server-cmd", relay_cmd("ok"), "--ready", "delay:0.5", *SHORT
    )
    assert out.code == 0, out.stdout + out.stderr
    assert out.report["runs"][0]["server"]["ready"].startswith("delay (0.5 s")


@pytest.mark.parametrize("value", ["sometimes", "delay:", "delay:-1", "line:2"])
def test_a_bad_readiness_is_a_usage_error(tmp_path: Path, value: str) -> None:
    out = run_harness(str(tmp_path), "--ready", value)
    assert out.code == 2
    assert "--ready" in out.stderr and "Traceback" not in out.stderr
