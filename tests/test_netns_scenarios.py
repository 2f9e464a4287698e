"""Every harness scenario across a namespace network, as a user runs it
(`python -m harness.run --hosts netns`), with and without impairment; and nothing of the
run left behind - after a pass, a failed check, or the harness killed with SIGKILL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netns_fixture import REPO, WAIT_S, child_env, needs_netns, wait_pid_gone

from harness.hosts.namespaces import list_named
from harness.processes import children_of

pytestmark = [pytest.mark.netns, needs_netns]

RUN_TIMEOUT_S = 150.0
FAULTY = REPO / "tests" / "faulty_relays.py"


def scenario_names() -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "harness.run", "--list"],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO,
        timeout=WAIT_S,
        check=True,
    )
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    # failover needs a cluster (--cluster N, a redis-server): tests/test_cluster_harness.py
    return [name for name in names if name != "failover"]


@contextlib.contextmanager
def harness(tmp: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """``python -m harness.run --hosts netns ARGS`` with a JSON report; killed on exit."""
    report = tmp / "report.json"
    argv = [sys.executable, "-m", "harness.run", "--hosts", "netns", "--quiet"]
    proc = subprocess.Popen(
        [*argv, "--json", str(report), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=REPO,
    )
    try:
        yield proc, report
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def finish(proc: subprocess.Popen[str], report: Path) -> tuple[int, dict[str, Any], str]:
    out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    doc = json.loads(report.read_text()) if report.exists() else {}
    return proc.returncode, doc, out + err


def assert_nothing_left(harness_pid: int) -> None:
    assert list_named(f"cbx{harness_pid}-") == []


@pytest.mark.parametrize("scenario", scenario_names())
def test_every_scenario_passes_across_namespaces(scenario: str, tmp_path: Path) -> None:
    with harness(tmp_path, "--scenario", scenario, "--messages", "60") as (proc, report):
        code, doc, output = finish(proc, report)
    assert code == 0, output
    network = doc["runs"][0]["network"]
    assert network["kind"] == "netns"
    assert network["server"]["namespace"].startswith(f"cbx{proc.pid}-")
    assert network["connect_address"] == network["server"]["address"]
    assert network["round_trip_ms"] > 0
    assert_nothing_left(proc.pid)


@pytest.mark.parametrize(
    "spec", ["delay=20ms,jitter=10ms", "slice=1", "bandwidth=512kbit,slice=5", "delay=5ms,slice=1"]
)
def test_checks_pass_through_impairments_tcp_survives(spec: str, tmp_path: Path) -> None:
    """Where TCP promises delivery, impairment slows things down but every check holds."""
    with harness(tmp_path, "--scenario", "duplex", "--messages", "40", "--impair", spec) as (
        proc,
        report,
    ):
        code, doc, output = finish(proc, report)
    assert code == 0, output
    network = doc["runs"][0]["network"]
    assert network["impair"] == spec
    if network["impaired_by"].startswith("TCP proxy"):
        assert network["round_trip_proxy_ms"] > 0  # measured through the proxy's path
    else:
        assert "round_trip_proxy_ms" not in network  # netem: the link's round trip has it
    assert_nothing_left(proc.pid)


def test_a_reset_fails_the_run(tmp_path: Path) -> None:
    """reset-after cuts the connections: the run must fail, never pass silently."""
    args = ["--scenario", "duplex", "--messages", "100", "--settle", "0.5"]
    with harness(tmp_path, *args, "--impair", "reset-after=2000") as (proc, report):
        code, doc, output = finish(proc, report)
    assert code == 1, output
    assert not doc["passed"]
    assert doc["runs"][0]["cause"] == "connection reset by impairment (reset-after=2000)"
    assert_nothing_left(proc.pid)


def test_a_failed_check_leaves_nothing(tmp_path: Path) -> None:
    """A relay that drops lines: the harness fails the run and still removes its network."""
    relay = f"{sys.executable} {FAULTY} drop {{port}} --host {{host}} --every 5"
    args = ["--scenario", "duplex", "--messages", "40", "--settle", "0.5", "--server-cmd", relay]
    with harness(tmp_path, *args) as (proc, report):
        code, doc, output = finish(proc, report)
    assert code == 1, output
    assert "no loss" in {c["name"] for c in doc["runs"][0]["checks"] if c["status"] == "fail"}
    assert_nothing_left(proc.pid)


def test_harness_killed_mid_run_leaves_nothing(tmp_path: Path) -> None:
    """kill -9 of the harness while its network is up: the janitor removes the network."""
    args = ["--scenario", "slow-reader", "--messages", "100000", "--timeout", "120"]
    with harness(tmp_path, *args) as (proc, _):
        janitor = _wait_for_janitor(proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=WAIT_S)
    assert wait_pid_gone(janitor), "the janitor did not finish"
    assert_nothing_left(proc.pid)


def _wait_for_janitor(proc: subprocess.Popen[str]) -> int:
    """The harness's janitor child, once its namespaces exist.

    Polling with a deadline: the creation of a namespace in another process has no event
    we could wait on.
    """
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if len(list_named(f"cbx{proc.pid}-")) >= 3:
            for pid in children_of(proc.pid):
                with contextlib.suppress(OSError):
                    if b"harness.hosts.janitor" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        return pid
        time.sleep(0.05)
    raise AssertionError("the harness never built its network")
