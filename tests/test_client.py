"""The chat client through pipes: arguments, the wire, delivery, and every way it ends.

Real processes and real sockets throughout: a real `chatbox.server` (port 0, its
`listening on` line read back), `nc` as a second party that speaks plain text, and small
socket servers inside the test where the server must misbehave on purpose (send control
characters, reset the connection). The processes are in client_parties.py and the
fixtures that end them in conftest.py; the terminal path is in test_client_tty.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
from collections.abc import Callable

import pytest
from client_parties import (
    TIMEOUT,
    OneShotServer,
    Party,
    Server,
    child_env,
    client_argv,
    run_client,
    welcomed_as,
)
from needs import missing

Spawn = Callable[..., Party]


# --- arguments -----------------------------------------------------------------------------

USAGE_ERRORS = [
    ([], "the following arguments are required: PORT"),
    (["http"], "invalid port 'http'"),
    (["0"], "invalid port '0'"),
    (["65536"], "invalid port '65536'"),
    (["127.0.0.1", "5000"], "the port comes first"),
    (["5000", "127.0.0.1", "extra"], "unrecognized arguments: extra"),
    (["--name", "two words", "5000"], "invalid name 'two words'"),
    (["--name", "", "5000"], "invalid name ''"),
    (["--colour", "5000"], "unrecognized arguments: --colour"),
    (["5000", ""], "empty server address"),
    (["--quit-timeout", "0", "5000"], "--quit-timeout: must be a finite number above 0"),
]


@pytest.mark.parametrize(("argv", "message"), USAGE_ERRORS)
def test_client_usage_error_exits_2_with_usage(argv: list[str], message: str) -> None:
    proc = run_client(*argv)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: chatbox-client")
    assert message in proc.stderr
    assert proc.stdout == ""


def test_client_help_explains_commands_and_arguments() -> None:
    proc = run_client("--help")
    assert proc.returncode == 0
    for word in ("PORT", "IP", "--name", "--timestamps", "NO_COLOR", "//TEXT"):
        assert word in proc.stdout
    for command in ("/nick NAME", "/who", "/msg NAME TEXT", "/me ACTION", "/quit", "/help"):
        assert re.search(rf"^\s+{re.escape(command)}\s", proc.stdout, re.M), command


# --- connecting ----------------------------------------------------------------------------


def test_client_refused_connection_names_host_and_port() -> None:
    # A bound socket that is not listening: the kernel refuses, and no one else can take
    # the port while we hold it.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        proc = run_client(str(port), "127.0.0.1")
    assert proc.returncode == 1
    assert proc.stderr == f"cannot connect to 127.0.0.1 port {port}: connection refused " + (
        "(is the server running?)\n"
    )


def test_client_refused_on_ipv6_literal_in_brackets() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with socket.socket(socket.AF_INET6) as holder:
        try:
            holder.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback on this machine")
        port = holder.getsockname()[1]
        proc = run_client(str(port), "[::1]")
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"cannot connect to ::1 port {port}: connection refused")


def _in_empty_netns(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the client in a new network namespace with no links (no DNS, no routes)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        missing("unshare (util-linux) is not installed")
    probe = subprocess.run([unshare, "--net", "true"], capture_output=True, timeout=TIMEOUT)
    if probe.returncode != 0:
        missing("cannot create a network namespace here (needs root)")
    return run_client(*args, wrapper=[unshare, "--net"])


@pytest.mark.netns
def test_client_unknown_host_is_one_line_naming_it() -> None:
    # In an empty namespace the resolver fails at once, and no query leaves the machine.
    proc = _in_empty_netns("5000", "no-such-host.invalid")
    assert proc.returncode == 1
    assert proc.stderr.startswith("cannot connect to no-such-host.invalid port 5000: unknown host")
    assert proc.stderr.count("\n") == 1


@pytest.mark.netns
def test_client_unreachable_network_is_one_line() -> None:
    proc = _in_empty_netns("5000", "198.18.0.1")
    assert proc.returncode == 1
    assert proc.stderr == "cannot connect to 198.18.0.1 port 5000: network is unreachable\n"


# --- the wire ------------------------------------------------------------------------------


def test_client_sends_plain_lines_then_quit_then_closes_its_half(spawn: Spawn) -> None:
    with OneShotServer() as srv:
        client = spawn(client_argv(str(srv.port)))
        srv.accept()
        client.send("hello\ncafé\n".encode())
        client.close_stdin()
        wire = srv.read_until_eof()  # the client half-closed: EOF after /quit
        assert wire == "hello\ncafé\n/quit\n".encode()
        assert srv.conn is not None
        srv.conn.close()  # the server's half: now the client may exit
        status, err = client.wait()
        assert (status, err) == (0, "")


# (what a server sends before it closes, what the client must show)
SERVER_LAST_WORDS = [
    pytest.param(
        b"<mallory> a\x1b[2Jb\x07c\x00\xc2\x9bd\xe2\x80\xaee\tf\n",
        "<mallory> a^[[2Jb^Gc^@<U+009B>d<U+202E>e\tf",
        id="control-characters-made-visible-even-if-the-server-sends-them",
    ),
    pytest.param(
        b"! server full (max 1 clients)",
        "! server full (max 1 clients)",
        id="last-line-shown-even-without-newline",
    ),
]


@pytest.mark.parametrize(("sent", "shown"), SERVER_LAST_WORDS)
def test_client_shows_what_the_server_sent_then_reports_the_close(
    spawn: Spawn, sent: bytes, shown: str
) -> None:
    with OneShotServer() as srv:
        client = spawn(client_argv(str(srv.port)))
        conn = srv.accept()
        conn.sendall(sent)
        conn.shutdown(socket.SHUT_WR)
        status, err = client.wait()
        assert client.lines == [shown]
        assert (status, err) == (1, "connection closed by server\n")


def test_client_reports_reset_connection(spawn: Spawn) -> None:
    with OneShotServer() as srv:
        client = spawn(client_argv(str(srv.port)))
        conn = srv.accept()
        client.send(b"ping\n")
        assert conn.recv(64) == b"ping\n"  # the client is connected and running
        # Linger 0: close sends RST instead of FIN, as a crashed peer's kernel would.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        srv.conn = None
        status, err = client.wait()
        assert (status, err) == (1, "connection lost: connection reset by peer\n")


# --- against the real server ---------------------------------------------------------------


def test_client_printf_line_reaches_another_client(server: Server, listener: Party) -> None:
    proc = run_client(str(server.port), "127.0.0.1", stdin=b"hi\n")
    assert proc.returncode == 0
    name = welcomed_as(proc.stdout)
    listener.expect(rf"<{name}> hi$")
    listener.expect(rf"\* {name} left \(quit\)$")
    assert "\x1b" not in "".join(listener.lines)  # a pipe gets no escape codes


@pytest.mark.parametrize("mode", ["fork", "thread"])
def test_client_seq_10000_all_delivered_in_order(
    start_server: Callable[..., Server], spawn: Spawn, mode: str
) -> None:
    if mode == "fork" and not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    srv = start_server(mode)
    listener = spawn(client_argv(str(srv.port)))
    listener.join()
    seq = b"".join(b"%d\n" % i for i in range(1, 10001))
    # 10,000 lines through a pty listener: beside CPU hogs on two cores this took over 20 s.
    proc = run_client(str(srv.port), "127.0.0.1", stdin=seq, timeout=6 * TIMEOUT)
    assert (proc.returncode, proc.stderr) == (0, "")
    name = welcomed_as(proc.stdout)
    # The server closed the sender only after taking /quit, so "left" follows every line.
    listener.expect(rf"\* {name} left \(quit\)$")
    got = [line[len(name) + 3 :] for line in listener.lines if line.startswith(f"<{name}> ")]
    assert got == [str(i) for i in range(1, 10001)]


def test_client_and_nc_talk_plain_text(server: Server, spawn: Spawn) -> None:
    nc = shutil.which("nc")
    if nc is None:
        missing("netcat (nc) is not installed")
    other = spawn([nc, "127.0.0.1", str(server.port)])
    client = spawn(client_argv(str(server.port)))
    nc_name = other.join()
    client_name = client.join()
    client.send(b"hello from the client\n")
    other.expect(rf"<{client_name}> hello from the client$")
    other.send(b"hello from nc\r\n")
    client.expect(rf"<{nc_name}> hello from nc$")
    client.close_stdin()
    assert client.wait() == (0, "")
    other.expect(rf"\* {client_name} left \(quit\)$")


def test_client_name_option_sets_nick_before_anything_is_said(
    server: Server, listener: Party
) -> None:
    name = f"amy{os.getpid()}"
    proc = run_client(str(server.port), "--name", name, stdin=b"hi\n")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert f"* you are now known as {name}" in proc.stdout
    listener.expect(rf"\* \S+ is now known as {name}$")
    listener.expect(rf"<{name}> hi$")
    assert not any(re.match(r"<guest\d+> hi$", line) for line in listener.lines)


def test_client_name_taken_exits_1_and_says_nothing(server: Server, spawn: Spawn) -> None:
    name = f"bea{os.getpid()}"
    holder = spawn(client_argv(str(server.port), "--name", name))
    holder.expect(rf"\* you are now known as {name}$")
    proc = run_client(str(server.port), "--name", name.upper(), stdin=b"secret\n")
    assert proc.returncode == 1
    assert proc.stderr == f"cannot use the name '{name.upper()}': name '{name.upper()}' is taken\n"
    refused = welcomed_as(proc.stdout)
    holder.expect(rf"\* {refused} left \(quit\)$")
    assert not any("secret" in line for line in holder.lines)


def test_client_quit_line_ends_session_and_rest_is_not_sent(
    server: Server, listener: Party
) -> None:
    proc = run_client(str(server.port), stdin=b"before\n/QUIT see you\nafter\n")
    assert (proc.returncode, proc.stderr) == (0, "")
    name = welcomed_as(proc.stdout)
    listener.expect(rf"\* {name} left \(see you\)$")
    said = [line for line in listener.lines if line.startswith(f"<{name}> ")]
    assert said == [f"<{name}> before"]


def test_client_timestamps_prefix_received_lines(server: Server, spawn: Spawn) -> None:
    stamped = spawn(client_argv(str(server.port), "--timestamps"))
    stamped.expect(r"\d\d:\d\d:\d\d \* welcome ")
    run_client(str(server.port), stdin=b"tick\n")
    stamped.expect(r"\d\d:\d\d:\d\d <guest\d+> tick$")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_client_interrupt_or_kill_quits_cleanly_exit_0(
    server: Server, listener: Party, spawn: Spawn, signum: signal.Signals
) -> None:
    """Ctrl-C and `kill` end the session as /quit does: every line kept, exit 0."""
    client = spawn(client_argv(str(server.port)))
    name = client.join()
    client.proc.send_signal(signum)
    assert client.wait() == (0, "")
    listener.expect(rf"\* {name} left \(quit\)$")


def test_client_server_shutdown_is_one_line_exit_1(server: Server, listener: Party) -> None:
    server.stop()
    status, err = listener.wait()  # stdin still open: the hang-up must end the read
    assert (status, err) == (1, "connection closed by server\n")


def test_client_without_stdin_quits_at_once(server: Server, listener: Party) -> None:
    proc = subprocess.run(
        client_argv(str(server.port)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=TIMEOUT,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    name = welcomed_as(proc.stdout)
    listener.expect(rf"\* {name} left \(quit\)$")


@pytest.mark.parametrize("address", ["::1", "[::1]"])
def test_client_reaches_an_ipv6_server(
    start_server: Callable[..., Server], spawn: Spawn, address: str
) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    srv = start_server(None, "::1")
    listener = spawn(client_argv(str(srv.port), "::1"))
    listener.join()
    proc = run_client(str(srv.port), address, stdin=b"over six\n")
    assert (proc.returncode, proc.stderr) == (0, "")
    listener.expect(r"<guest\d+> over six$")


def test_client_second_interrupt_stops_waiting_for_the_server_exit_130(spawn: Spawn) -> None:
    with OneShotServer() as srv:
        client = spawn(client_argv(str(srv.port)))
        srv.accept()
        client.close_stdin()
        assert srv.read_until_eof() == b"/quit\n"  # it quit; this server never closes
        client.proc.send_signal(signal.SIGINT)
        status, err = client.wait()
        assert (status, err) == (130, "")


def test_client_gives_up_on_a_server_that_never_closes_after_quit_exit_1(spawn: Spawn) -> None:
    """--quit-timeout: a server that takes /quit but keeps the connection open is waited
    for that long, then named as the reason, exit 1 (not a hang, not a clean 0)."""
    with OneShotServer() as srv:
        client = spawn(client_argv("--quit-timeout", "0.5", str(srv.port)))
        srv.accept()
        client.close_stdin()
        assert srv.read_until_eof() == b"/quit\n"  # it quit; this server never closes
        status, err = client.wait()
        assert (status, err) == (1, "the server did not close the connection within 0.5 s\n")


def test_client_reaches_the_server_by_host_name(server: Server, listener: Party) -> None:
    proc = run_client(str(server.port), "localhost", stdin=b"by name\n")
    assert (proc.returncode, proc.stderr) == (0, "")
    listener.expect(r"<guest\d+> by name$")


def test_client_name_takes_only_the_answer_to_its_own_request(spawn: Spawn) -> None:
    """Other people's renames (real or imitated) are not the server's verdict on ours."""
    with OneShotServer() as srv:
        client = spawn(client_argv(str(srv.port), "--name", "alice"))
        conn = srv.accept()
        client.close_stdin()
        conn.sendall(
            b"* welcome guest2; also here: alice, mallory\n"
            b"* <mallory> is now known as alice\n"
            b"* mallory is now known as alice\n"
            b"! name 'alice' is taken\n"
        )
        assert srv.read_until_eof() == b"/nick alice\n/quit\n"
        conn.close()
        assert client.wait() == (1, "cannot use the name 'alice': name 'alice' is taken\n")
