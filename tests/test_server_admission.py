"""Who may connect, over real sockets: connections per address, the connect rate, and
the access lists. Different addresses are different source addresses on loopback
(127.0.0.2, 127.0.0.3, ...: Linux routes all of 127.0.0.0/8 to this machine).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_server import MODES, WAIT, Peer, ServerProcess, child_env, running_server, wait_until

SERVER = ("0", "--host", "127.0.0.1")


def _from(srv: ServerProcess, source: str) -> Peer:
    sock = socket.create_connection(
        ("127.0.0.1", srv.port), timeout=WAIT, source_address=(source, 0)
    )
    return Peer(sock)


def _closed_unspoken(peer: Peer) -> bool:
    """The server closed (or reset) the connection without a line."""
    try:
        return peer.read_to_eof() == []
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("mode", MODES)
def test_one_connection_past_max_per_ip_is_told_and_other_addresses_get_in(mode: str) -> None:
    with running_server(*SERVER, "--mode", mode, "--max-per-ip", "2") as srv:
        first = _from(srv, "127.0.0.2")
        first.expect("* welcome")
        second = _from(srv, "127.0.0.2")
        second.expect("* welcome")
        third = _from(srv, "127.0.0.2")
        assert third.read_to_eof() == ["! too many connections from your address (max 2)"]
        other = _from(srv, "127.0.0.3")
        assert other.line().startswith("* welcome")
        # A slot given back is a slot again (the server frees it once the worker ended).
        first.send(b"/quit\n")
        other.expect("* guest1 left (quit)")

        def joins() -> bool:
            peer = _from(srv, "127.0.0.2")
            try:
                return peer.line().startswith("* welcome")
            except (EOFError, ConnectionResetError):
                return False  # refused again (told once a second, then closed unspoken)
            finally:
                peer.close()

        wait_until(joins, "a connection from 127.0.0.2 to be admitted again")
        assert "Traceback" not in srv.stderr()


def test_this_machines_own_address_is_exempt_by_default() -> None:
    """127.0.0.1 is this machine's own (a local proxy, tests): not limited per address."""
    with running_server(*SERVER, "--max-per-ip", "1") as srv:
        peers = [srv.connect() for _ in range(3)]
        for peer in peers:
            peer.expect("* welcome")


def test_exempt_none_limits_this_machines_address_too() -> None:
    with running_server(*SERVER, "--max-per-ip", "1", "--exempt", "none") as srv:
        # Held open: a dropped peer's connection would close and free its slot.
        first = srv.connect()
        first.expect("* welcome")
        assert srv.connect().read_to_eof() == ["! too many connections from your address (max 1)"]
        first.close()


@pytest.mark.parametrize("mode", MODES)
def test_an_address_connecting_too_fast_is_refused_and_others_are_not(mode: str) -> None:
    # One connection a minute after a burst of 3: the 4th, at once, is too fast.
    args = ("--connect-rate", "0.016", "--connect-burst", "3")
    with running_server(*SERVER, "--mode", mode, *args) as srv:
        for _ in range(3):
            peer = _from(srv, "127.0.0.2")
            peer.expect("* welcome")
            peer.close()
        refused = _from(srv, "127.0.0.2")
        assert refused.read_to_eof() == ["! connecting too fast, try again later"]
        _from(srv, "127.0.0.3").expect("* welcome")


def test_refusals_are_logged_rate_limited() -> None:
    """Refused again within a second, an address is neither told nor logged again; and
    the log line itself is rate-limited across addresses."""
    with running_server(*SERVER, "--connect-rate", "0.016", "--connect-burst", "1") as srv:
        sources = [f"127.0.0.{n}" for n in range(10, 40)]
        for source in sources:
            _from(srv, source).expect("* welcome")
            told = _from(srv, source)
            assert told.read_to_eof() == ["! connecting too fast, try again later"]
            for _ in range(5):
                assert _closed_unspoken(_from(srv, source))
        # Every refusal was handled (and logged, or not) before this one is admitted.
        _from(srv, "127.0.0.3").expect("* welcome")
        assert srv.terminate() == 0
        logged = srv.stderr().splitlines()
        refusals = [line for line in logged if "connecting too fast" in line]
        assert 1 <= len(refusals) <= 21, refusals[-3:]
        assert any("more like this were not logged" in line for line in logged), logged[-5:]


@pytest.mark.parametrize("mode", MODES)
def test_a_denied_address_is_closed_at_once_and_others_get_in(mode: str) -> None:
    with running_server(*SERVER, "--mode", mode, "--deny", "127.0.0.2/31") as srv:
        assert _closed_unspoken(_from(srv, "127.0.0.2"))
        assert _closed_unspoken(_from(srv, "127.0.0.3"))
        inside = _from(srv, "127.0.0.4")
        inside.expect("* welcome")
        if mode == "fork":
            # The fork server and the one worker it had forked before the welcome.
            assert len(srv.descendants()) == 2, "a denied connection got a worker"


def test_with_an_allow_list_only_allowed_addresses_get_in_and_deny_wins(
    tmp_path: Path,
) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text("# the office\n127.0.0.2\n\n127.0.0.8/29   # the lab\n")
    deny = tmp_path / "deny.txt"
    deny.write_text("127.0.0.9\n")
    args = ("--allow-file", str(allow), "--deny-file", str(deny), "--allow", "::1")
    with running_server(*SERVER, *args) as srv:
        _from(srv, "127.0.0.2").expect("* welcome")
        _from(srv, "127.0.0.10").expect("* welcome")
        assert _closed_unspoken(_from(srv, "127.0.0.3"))
        assert _closed_unspoken(_from(srv, "127.0.0.9"))  # allowed and denied: denied
        assert _closed_unspoken(srv.connect())  # 127.0.0.1 is not on the list


def test_access_lists_take_ipv6() -> None:
    with running_server("0", "--host", "::1", "--deny", "::1/128") as srv:
        sock = socket.create_connection(("::1", srv.port), timeout=WAIT)
        assert _closed_unspoken(Peer(sock))
    with running_server("0", "--host", "::1", "--deny", "2001:db8::/32") as srv:
        sock = socket.create_connection(("::1", srv.port), timeout=WAIT)
        Peer(sock).expect("* welcome")


def test_ipv4_clients_of_a_dual_stack_server_match_ipv4_rules() -> None:
    """On '::' an IPv4 client arrives as ::ffff:127.0.0.2; the IPv4 rule still applies."""
    with running_server("0", "--host", "::", "--deny", "127.0.0.2") as srv:
        assert _closed_unspoken(_from(srv, "127.0.0.2"))
        _from(srv, "127.0.0.3").expect("* welcome")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--allow", "10.0.0.300/8"], "--allow: not an address or network: '10.0.0.300/8'"),
        (["--deny", "10.0.0.1/8"], "--deny: '10.0.0.1/8' has host bits set"),
        (["--allow-file", "/nonexistent/list"], "--allow-file: cannot read"),
        (["--max-per-ip", "-1"], "--max-per-ip"),
    ],
)
def test_bad_admission_options_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "chatbox.server", "0", "--host", "127.0.0.1", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=WAIT,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    # argparse's usage, then the one line that says what is wrong.
    assert message in proc.stderr.strip().splitlines()[-1]


def test_a_bad_line_in_a_list_file_names_the_file_and_line(tmp_path: Path) -> None:
    listing = tmp_path / "deny.txt"
    listing.write_text("10.0.0.0/8\nnot-an-address\n")
    proc = subprocess.run(
        [sys.executable, "-m", "chatbox.server", "0", "--deny-file", str(listing)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=WAIT,
    )
    assert proc.returncode == 2
    assert f"{listing}:2: not an address or network: 'not-an-address'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_churner_gets_few_workers_and_cannot_keep_anyone_else_out() -> None:
    """300 connections opened and reset at once from one address: past the burst they
    are refused without a worker, and a connection from elsewhere is admitted."""
    args = ("--connect-rate", "0.016", "--connect-burst", "20")
    with running_server(*SERVER, "--mode", "fork", "--log-level", "info", *args) as srv:
        began = time.monotonic()
        for _ in range(300):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", srv.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        other = _from(srv, "127.0.0.3")
        assert other.line().startswith("* welcome")
        assert srv.terminate() == 0
        joins = [line for line in srv.stderr().splitlines() if " joined (" in line]
        # The burst from the churner, what its rate gave back meanwhile (once blocked,
        # its connects wait out the block in SYN retries, so a loaded run is long), and
        # the other one.
        refilled = int(0.016 * (time.monotonic() - began)) + 1
        assert 1 <= len(joins) <= 21 + refilled, (len(joins), refilled)


def _handshake(srv: ServerProcess, source: str, timeout: float) -> bool:
    """Whether a connection from ``source`` completes its TCP handshake within
    ``timeout`` (then reset, as a churner does)."""
    sock = socket.socket()
    try:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", srv.port))
        return True
    except TimeoutError:
        return False
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


@pytest.mark.parametrize("mode", MODES)
def test_an_address_that_keeps_churning_gets_no_handshake_for_a_while(mode: str) -> None:
    """Told it connects too fast, an address that goes on connecting and resetting is
    blocked: its connection attempts are dropped before they are connections (no
    handshake, nothing for the server to accept), while other addresses get in; once
    the block is over, it can connect again."""
    args = ("--connect-rate", "0.016", "--connect-burst", "3", "--log-level", "info")
    with running_server(*SERVER, "--mode", mode, *args) as srv:
        # A handshake on loopback takes microseconds; one the server drops gets its
        # first retransmission only after a second. (The block starts once the server
        # has accepted enough of them, which on a loaded machine may be well after they
        # were made: so the churn goes on until it takes, bounded in count and time.)
        attempts, deadline = 0, time.monotonic() + WAIT
        while attempts < 20_000 and time.monotonic() < deadline:
            if not _handshake(srv, "127.0.0.2", 0.5):
                break
            attempts += 1
        else:
            raise AssertionError(f"all {attempts} connections from the churner got a handshake")
        _from(srv, "127.0.0.3").expect("* welcome")
        assert _handshake(srv, "127.0.0.2", WAIT)  # the block ends (retried by the kernel)
        assert srv.terminate() == 0
        log = srv.stderr()
        assert "dropping connection attempts from 127.0.0.2 for 2 s" in log, log[-500:]
        assert "Traceback" not in log
