"""This project's server passes every scenario, in both modes, repeatedly, with no flake."""

from __future__ import annotations

import sys

import pytest
from faulty_relays import run_harness

# {server_options}: what a scenario asks of our server (slow-reader: a small --sendq).
SERVER = "{python} -m chatbox.server {port} --host {host} --mode %s {server_options}"
SCENARIOS = ["duplex", "conversation", "broadcast", "churn", "slow-reader", "bad-input", "crash"]


@pytest.mark.parametrize("mode", ["fork", "thread"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_our_server_passes_every_check(tmp_path: object, scenario: str, mode: str) -> None:
    if mode == "fork" and not hasattr(__import__("os"), "fork"):
        pytest.skip("no os.fork here")
    repeat = "3" if scenario == "duplex" else "1"
    out = run_harness(
        str(tmp_path),
        "--scenario", scenario,
        "--messages", "40",
        "--repeat", repeat,
        "--server-cmd", SERVER % mode,
    )  # fmt: skip
    assert out.code == 0, out.stdout + out.stderr
    statuses = out.statuses()
    for check in ("no loss", "no duplicates", "payload intact", "per-sender FIFO"):
        assert statuses[check] == "pass", out.stdout
    assert statuses["nothing left running"] == "pass"
    # The server's own promises are checked (not n/a) when the server is ours.
    if scenario in ("duplex", "churn", "bad-input", "slow-reader"):
        assert statuses["this project's server"] == "pass", out.stdout
    assert not out.report["flaky"]


def test_duplex_proves_full_duplex_for_our_server(tmp_path: object) -> None:
    out = run_harness(str(tmp_path), "--scenario", "duplex", "--messages", "60")
    assert out.code == 0, out.stdout
    check = next(c for c in out.report["runs"][0]["checks"] if c["name"] == "full duplex")
    assert (check["status"], check["observed"]) == ("pass", "full duplex")
    assert "lines in between were read at most" in check["detail"]
    assert "quiet: p1, typing nothing" in check["detail"]


def test_crash_scenario_kills_a_forked_worker(tmp_path: object) -> None:
    out = run_harness(
        str(tmp_path), "--scenario", "crash", "--messages", "40",
        "--server-cmd", SERVER % "fork",
    )  # fmt: skip
    assert out.code == 0, out.stdout
    assert any("killed server worker" in n for n in out.report["runs"][0]["notes"])


def test_default_server_and_client_use_this_interpreter(tmp_path: object) -> None:
    out = run_harness(str(tmp_path), "--scenario", "duplex", "--messages", "10")
    assert out.code == 0
    assert out.report["runs"][0]["server"]["command"].startswith(sys.executable)


def test_through_the_impairment_proxy_one_byte_per_write_still_passes(tmp_path: object) -> None:
    """--impair puts harness.impair between clients and server; TCP still promises delivery."""
    out = run_harness(
        str(tmp_path), "--scenario", "duplex", "--messages", "20", "--impair", "slice=1"
    )
    assert out.code == 0, out.stdout + out.stderr
    run = out.report["runs"][0]
    assert run["network"]["impair"] == "slice=1"
    assert "impairment: slice=1" in out.stdout


def test_slow_reader_whose_terminal_fills_up_still_gets_lines_in_order(tmp_path: object) -> None:
    """Enough traffic that the stalled party's pty (about 17 KiB) fills and its client
    blocks writing: once it reads again, what it shows must still be in order."""
    out = run_harness(str(tmp_path), "--scenario", "slow-reader", "--messages", "300")
    assert out.code == 0, out.stdout + out.stderr
    slow = out.report["runs"][0]["parties"]["slow"]
    assert slow["received"] > 17 * 1024 // 100  # it really had a full terminal to catch up on


def test_slow_reader_is_cut_off_and_the_others_are_told(tmp_path: object) -> None:
    """With the default server command the scenario runs our server with a small --sendq:
    a reader that stopped is disconnected, the others see '* stalled left (too slow)' and
    lose nothing - the flood sent to overflow its queue included."""
    out = run_harness(str(tmp_path), "--scenario", "slow-reader", "--messages", "20")
    assert out.code == 0, out.stdout + out.stderr
    run = out.report["runs"][0]
    assert "--sendq 16384 --slow-timeout 0.5" in run["server"]["command"]
    specific = next(c for c in run["checks"] if c["name"] == "this project's server")
    assert specific["status"] == "pass"
    assert "saw '* stalled left (too slow)'" in specific["detail"]
    assert out.statuses()["no loss"] == "pass"
    assert run["parties"]["p1"]["received"] > run["parties"]["flood"]["sent"]  # flood arrived
    assert any("connection was closed by the server" in n for n in run["notes"])


def test_a_server_that_never_cuts_off_a_stopped_reader_fails(tmp_path: object) -> None:
    """The check can fail: the same server with a queue too big to overflow keeps the
    stopped reader, so nobody is told it left."""
    huge = "{python} -m chatbox.server {port} --host {host} {server_options} --sendq 100000000"
    out = run_harness(
        str(tmp_path), "--scenario", "slow-reader", "--messages", "10", "--settle", "0.5",
        "--server-cmd", huge,
    )  # fmt: skip
    assert out.code == 1, out.stdout + out.stderr
    assert out.failed() == {"this project's server"}, out.stdout
    assert "never saw '* stalled left (too slow)'" in out.stdout


def test_a_server_command_without_the_placeholder_is_run_as_given(tmp_path: object) -> None:
    plain = "{python} -m chatbox.server {port} --host {host}"
    out = run_harness(
        str(tmp_path), "--scenario", "slow-reader", "--messages", "10", "--server-cmd", plain
    )
    assert out.code == 0, out.stdout + out.stderr
    run = out.report["runs"][0]
    assert "--sendq" not in run["server"]["command"]
    assert "flood" not in run["parties"]
    assert any("was not cut off" in n for n in run["notes"])


def test_slow_reader_through_the_impairment_proxy_says_the_cut_off_is_not_checked(
    tmp_path: object,
) -> None:
    """The proxy reads for a stopped reader and buffers megabytes: the server's queue
    cannot overflow behind it, so the run says so instead of failing our server."""
    out = run_harness(
        str(tmp_path), "--scenario", "slow-reader", "--messages", "10", "--impair", "delay=1ms"
    )
    assert out.code == 0, out.stdout + out.stderr
    run = out.report["runs"][0]
    assert "stalled" not in run["parties"]
    assert any("not checked through the impairment proxy" in n for n in run["notes"])
