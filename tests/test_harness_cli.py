"""The harness's command line: scenarios list, exit codes, reports a person and CI can read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from faulty_relays import ROOT, relay_cmd, run_harness
from needs import needs

SCENARIOS = [
    "duplex",
    "conversation",
    "broadcast",
    "churn",
    "slow-reader",
    "bad-input",
    "crash",
    "failover",
]


def harness(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.run", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip


def test_list_names_every_scenario_with_one_line_each() -> None:
    out = harness("--list")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == SCENARIOS
    assert all(len(line.split(None, 1)[1]) > 10 for line in lines)


@pytest.mark.parametrize(
    "args",
    [
        ["--scenario", "nosuch"],
        ["--messages", "0"],
        ["--clients", "many"],
        ["--timeout", "-1"],
        ["--hosts", "carrier-pigeon"],
    ],
)
def test_usage_errors_exit_2_with_one_line_and_no_traceback(args: list[str]) -> None:
    out = harness(*args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "error:" in out.stderr


def test_server_that_fails_to_start_is_a_setup_error_showing_its_stderr(tmp_path: Path) -> None:
    cmd = f"{sys.executable} -c 'import sys; sys.exit(\"no such database: {{port}}\")'"
    out = run_harness(str(tmp_path), "--server-cmd", cmd)
    assert out.code == 2
    assert "no such database" in out.stderr
    assert "Traceback" not in out.stderr


def test_server_command_that_does_not_exist_is_a_setup_error(tmp_path: Path) -> None:
    out = run_harness(str(tmp_path), "--server-cmd", "/nonexistent/chat-server {port}")
    assert out.code == 2
    assert "cannot start server" in out.stderr


def test_client_command_that_cannot_connect_is_a_setup_error(tmp_path: Path) -> None:
    # A client that exits at once (connection refused on port 1) never joins the room.
    client = f"{sys.executable} -m chatbox.client 1 127.0.0.1"
    out = run_harness(str(tmp_path), "--client-cmd", client, "--messages", "5")
    assert out.code == 2, out.stdout + out.stderr
    assert "exited before joining" in out.stderr


def test_client_that_closes_its_terminal_and_lingers_is_a_setup_error(tmp_path: Path) -> None:
    # Its terminal closes a second before it exits: the harness must wait for the exit,
    # not take it for a client still in the room and FAIL the server.
    client = "sh -c 'exec </dev/null >/dev/null 2>&1; sleep 1'"
    out = run_harness(str(tmp_path), "--client-cmd", client, "--messages", "5")
    assert out.code == 2, out.stdout + out.stderr
    assert "exited before joining" in out.stderr


def test_bad_conversation_script_is_a_usage_error(tmp_path: Path) -> None:
    script = tmp_path / "monologue.txt"
    script.write_text("alice: hello?\nalice: anyone?\n")
    out = harness("--scenario", "conversation", "--script", str(script))
    assert out.returncode == 2
    assert "exactly two speakers" in out.stderr


def test_reports_json_junit_and_artifacts(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    artifacts = tmp_path / "artifacts"
    out = run_harness(
        str(tmp_path),
        "--scenario", "conversation", "--junit", str(junit), "--artifacts", str(artifacts),
    )  # fmt: skip
    assert out.code == 0, out.stdout + out.stderr
    # Terminal: where things ran and one row per check.
    assert "server: loopback" in out.stdout
    assert "turn taking" in out.stdout and "PASS" in out.stdout
    # JSON: per-party counts and the network description.
    run = out.report["runs"][0]
    assert set(run["parties"]) == {"alice", "bob"}
    assert run["network"]["kind"] == "loopback"
    # JUnit: one case per check, n/a ones skipped.
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    names = [case.get("name") for case in suite.iter("testcase")]
    assert "no loss" in names and "turn taking" in names
    assert suite.get("failures") == "0"
    # Artifacts: timestamped transcripts and a sequence diagram with an arrow per delivery.
    folder = artifacts / "conversation-run1"
    alice = (folder / "alice.log").read_text()
    assert "> ~cbx|alice|" in alice and "< " in alice
    svg = (folder / "sequence.svg").read_text()
    ET.fromstring(svg)  # well-formed, self-contained
    assert svg.count("<line") >= run["deliveries"]
    assert ">server<" in svg
    assert json.loads((folder / "result.json").read_text())["passed"] is True


def test_failed_check_exits_1_and_junit_records_the_failure(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    out = run_harness(
        str(tmp_path), "--server-cmd", relay_cmd("drop", every=5), "--messages", "20",
        "--settle", "0.5", "--junit", str(junit),
    )  # fmt: skip
    assert out.code == 1
    failures = [f.get("message", "") for f in ET.parse(junit).getroot().iter("failure")]
    assert any("deliveries missing" in m for m in failures)


@needs(None if shutil.which("ncat") else "ncat is not installed")
def test_another_implementation_ncat_chat_is_held_to_the_same_checks(tmp_path: Path) -> None:
    """ncat --chat relays what each read() brought: lines a 16 KB burst (one write, as a
    paste) straddles across its reads arrive broken, with their rest missing. The
    default broadcast's burst shows it; everything else holds."""
    out = run_harness(
        str(tmp_path), "--scenario", "broadcast", "--settle", "0.5",
        "--server-cmd", "ncat -l --chat {host} {port}", "--client-cmd", "ncat {host} {port}",
    )  # fmt: skip
    assert out.code == 1, out.stdout + out.stderr
    # Where a read ends mid-line, ncat puts the next sender's name into the line (stray
    # bytes after a token): whether a run's reads end so depends on timing.
    allowed = {"payload intact", "no loss", "one message per line"}
    assert {"payload intact"} <= out.failed() <= allowed, out.stdout
    assert out.statuses()["this project's server"] == "n/a"
    assert out.statuses()["same order at every receiver"] == "pass"


def test_a_reset_by_impairment_is_reported_as_the_cause(tmp_path: Path) -> None:
    """--impair reset-after=N: exit 1, and the report says the proxy reset the connection,
    with the proxy's own line, rather than only "no loss" failing."""
    artifacts = tmp_path / "artifacts"
    out = run_harness(
        str(tmp_path), "--messages", "100", "--settle", "0.5",
        "--impair", "reset-after=2000", "--artifacts", str(artifacts),
    )  # fmt: skip
    assert out.code == 1, out.stdout + out.stderr
    run = out.report["runs"][0]
    assert run["cause"] == "connection reset by impairment (reset-after=2000)"
    assert out.statuses()["no connection reset"] == "fail"
    assert "cause (run 1): connection reset by impairment (reset-after=2000)" in out.stdout
    assert "(connection reset by impairment (reset-after=2000))" in out.stdout.splitlines()[-1]
    proxy_line = "after 2000 bytes (reset-after)"
    assert any(proxy_line in e["line"] for e in run["impair_log"])
    assert any(proxy_line in n for n in run["notes"])
    assert proxy_line in (artifacts / "duplex-run1" / "impair.stderr").read_text()


def test_a_reset_before_anyone_joins_is_a_failed_run_not_a_setup_error(tmp_path: Path) -> None:
    out = run_harness(str(tmp_path), "--messages", "5", "--impair", "reset-after=0")
    assert out.code == 1, out.stdout + out.stderr
    assert out.report["runs"][0]["cause"] == "connection reset by impairment (reset-after=0)"
    assert "at once (reset-after=0)" in out.stdout


def test_round_trip_is_measured_through_the_impairment_proxy_too(tmp_path: Path) -> None:
    """delay=25ms applies each way, so the proxy path's round trip is at least 50 ms while
    the link's stays what it is; both are in the report, saying what was measured."""
    out = run_harness(str(tmp_path), "--messages", "10", "--impair", "delay=25ms")
    assert out.code == 0, out.stdout + out.stderr
    assert out.statuses()["no connection reset"] == "pass"
    assert out.report["runs"][0]["cause"] == ""
    network = out.report["runs"][0]["network"]
    assert network["round_trip_proxy_ms"] >= 50
    assert network["round_trip_ms"] < network["round_trip_proxy_ms"]
    assert "round trip through the impairment proxy: " in out.stdout
    assert "through a second proxy with the same spec" in out.stdout


def test_without_impairment_only_the_link_round_trip_is_reported(tmp_path: Path) -> None:
    out = run_harness(str(tmp_path), "--messages", "5")
    assert out.code == 0, out.stdout + out.stderr
    assert "round_trip_proxy_ms" not in out.report["runs"][0]["network"]
    assert "round trip: " in out.stdout
    assert "round trip through the impairment proxy" not in out.stdout


def test_ssh_flags_map_onto_the_network_options() -> None:
    from harness.run import build_parser, network_options

    args = build_parser().parse_args(
        ["--hosts", "ssh", "--server-host", "me@box", "--client-host", "me@other",
         "--ssh-port", "2222", "--ssh-identity", "/keys/id", "--ssh-python", "/opt/py3",
         "--server-address", "198.18.0.9", "--ssh-option", "ConnectTimeout=3"]
    )  # fmt: skip
    opts = network_options(args, clients=3)
    assert (opts.kind, opts.server_host, opts.client_hosts) == ("ssh", "me@box", ["me@other"])
    assert (opts.ssh_port, opts.ssh_identity, opts.ssh_python) == (2222, "/keys/id", "/opt/py3")
    assert opts.server_address == "198.18.0.9"
    assert opts.ssh_options == ["ConnectTimeout=3"]
    assert opts.clients == 3
    defaults = network_options(build_parser().parse_args([]), clients=2)
    assert (defaults.ssh_port, defaults.ssh_identity, defaults.server_address) == (None,) * 3
    assert defaults.ssh_python == "python3"


@pytest.mark.parametrize("port", ["0", "65536", "ssh"])
def test_bad_ssh_port_is_a_usage_error(port: str) -> None:
    out = harness("--ssh-port", port)
    assert out.returncode == 2
    assert "--ssh-port" in out.stderr and "Traceback" not in out.stderr
