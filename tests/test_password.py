"""The password gate (`--password-file`, `CHATBOX_PASSWORD`) on a real server, in both
modes, with raw peers and chatbox-client; and its rules on plain values."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_parties import child_env, client_argv
from live_server import WAIT, Peer, ServerProcess, running_server
from tls_certs import make_certificate

from chatbox import protocol
from chatbox.server import gate
from chatbox.server.channel import ChannelReader, Ready, Refused, ready_note, refused_note

SECRET = "open sesame"  # a space in it: everything after "/pass " is the password
REQUIRED = protocol.PASSWORD_REQUIRED.decode().rstrip("\n")
WRONG = protocol.WRONG_PASSWORD.decode().rstrip("\n")


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(SECRET + "\n")
    return path


@pytest.fixture
def server(mode: str, password_file: Path) -> Iterator[ServerProcess]:
    args = ["0", "--host", "127.0.0.1", "--mode", mode, "--password-file", str(password_file)]
    with running_server(*args) as srv:
        yield srv


def logged_in(server: ServerProcess) -> tuple[Peer, str]:
    """A raw peer past the gate and in the room; its name."""
    peer = server.connect()
    assert peer.line() == REQUIRED
    peer.send(f"/pass {SECRET}\n".encode())
    welcome = peer.line()
    assert welcome.startswith("* welcome "), welcome
    return peer, welcome.split()[2].rstrip(";")


def test_the_right_password_lets_a_client_in_and_chat(server: ServerProcess) -> None:
    alice, alice_name = logged_in(server)
    bob = server.connect()
    assert bob.line() == REQUIRED
    # The password and the first lines in one write: they follow it into the room.
    bob.send(f"/PASS {SECRET}\nhello\n/who\n".encode())
    welcome = bob.line()
    bob_name = welcome.split()[2].rstrip(";")
    assert welcome == f"* welcome {bob_name}; also here: {alice_name}"
    assert bob.line() == f"* here (2): {alice_name}, {bob_name}"
    assert alice.lines(2) == [f"* {bob_name} joined", f"<{bob_name}> hello"]


def test_nothing_before_the_password_is_relayed_and_a_wrong_one_is_closed(
    server: ServerProcess,
) -> None:
    member, member_name = logged_in(server)
    intruder = server.connect()
    assert intruder.line() == REQUIRED
    intruder.send(b"hello everyone\n/pass " + SECRET.encode() + b"\n")
    # A first line that is not the password is a wrong one; nothing more is read.
    assert intruder.read_to_eof() == [WRONG]
    wrong = server.connect()
    assert wrong.line() == REQUIRED
    wrong.send(b"/pass open sesame!\n")
    assert wrong.read_to_eof() == [WRONG]
    # Neither ever reached the room: the member hears of nobody, and is alone.
    member.send(b"/who\n")
    assert member.line() == f"* here (1): {member_name}"


def test_a_verdict_that_waits_never_holds_the_room(server: ServerProcess) -> None:
    alice, alice_name = logged_in(server)
    bob, _ = logged_in(server)
    alice.line()  # bob joined
    # Two wrong answers from this address: the third waits 4 s for its verdict.
    for _ in range(2):
        wrong = server.connect()
        wrong.line()
        wrong.send(b"/pass guess\n")
        assert wrong.read_to_eof() == [WRONG]
    waiting = server.connect()
    assert waiting.line() == REQUIRED
    waiting.send(b"/pass guess\n")
    alice.send(b"still chatting\n")
    assert bob.line() == f"<{alice_name}> still chatting"
    # The room went on while that verdict is still being held back.
    waiting.sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        waiting.sock.recv(100)
    waiting.sock.setblocking(True)
    assert waiting.read_to_eof() == [WRONG]


def test_the_password_can_come_from_the_environment(mode: str) -> None:
    python_code = (
        "import os, sys; os.environ['CHATBOX_PASSWORD'] = 'from env'; "
        "from chatbox.server.__main__ import main; sys.exit(main())"
    )
    with running_server("0", "--host", "127.0.0.1", "--mode", mode, python_code=python_code) as srv:
        peer = srv.connect()
        assert peer.line() == REQUIRED
        peer.send(b"/pass from env\n")
        assert peer.line().startswith("* welcome ")
        proc = subprocess.run(
            client_argv(str(srv.port), "127.0.0.1"),
            input="hi\n",
            capture_output=True,
            text=True,
            env=child_env(CHATBOX_PASSWORD="from env"),
            timeout=WAIT,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("* welcome ")


def test_chatbox_client_gives_the_password_file(
    server: ServerProcess, password_file: Path, tmp_path: Path
) -> None:
    member, _ = logged_in(server)
    proc = subprocess.run(
        client_argv(str(server.port), "127.0.0.1", "--password-file", str(password_file)),
        input="from the client\n",
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=WAIT,
    )
    assert proc.returncode == 0, proc.stderr
    assert REQUIRED not in proc.stdout  # answered, not shown
    name = proc.stdout.split()[2].rstrip(";")
    assert member.lines(2) == [f"* {name} joined", f"<{name}> from the client"]
    wrong_file = tmp_path / "wrong"
    wrong_file.write_text("not it\n")
    proc = subprocess.run(
        client_argv(str(server.port), "127.0.0.1", "--password-file", str(wrong_file)),
        input="never sent\n",
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=WAIT,
    )
    assert proc.returncode == 1
    assert proc.stderr == "the server refused the password (wrong password)\n"


def test_tls_and_password_together(mode: str, password_file: Path, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    args = ["0", "--host", "127.0.0.1", "--mode", mode, "--password-file", str(password_file)]
    with running_server(*args, "--tls-cert", str(cert), "--tls-key", str(key)) as srv:
        proc = subprocess.run(
            client_argv(
                str(srv.port),
                "127.0.0.1",
                "--tls-ca",
                str(cert),
                "--password-file",
                str(password_file),
            ),
            input="/who\n",
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=WAIT,
        )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("* welcome ") and lines[1].startswith("* here (1): ")


@pytest.mark.parametrize(
    "content, why",
    [(None, "cannot read password file"), ("", "is empty"), ("\nsecond\n", "is empty")],
)
def test_an_unusable_password_file_is_one_line_and_exit_2(
    tmp_path: Path, content: str | None, why: str
) -> None:
    path = tmp_path / "password"
    if content is not None:
        path.write_text(content)
    argv = [sys.executable, "-m", "chatbox.server", "0", "--host", "127.0.0.1"]
    proc = subprocess.run(
        [*argv, "--password-file", str(path)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=child_env(),
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and why in proc.stderr, proc.stderr


def test_a_gated_server_says_so_to_a_client_without_a_password(server: ServerProcess) -> None:
    proc = subprocess.run(
        client_argv(str(server.port), "127.0.0.1"),
        input="hello\n",
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=WAIT,
    )
    # The person sees the prompt and the verdict on what they typed first.
    assert proc.stdout.splitlines()[:2] == [REQUIRED, WRONG]


# --- the rules on plain values ------------------------------------------------------------


def test_login_takes_only_the_password_as_the_first_line() -> None:
    login = gate.Login(b"s3cret")
    assert login.feed([]) == (None, [])
    verdict, rest = login.feed([protocol.Lines(b"/pass s3cret\nhi\n")])
    assert verdict is True and rest == [protocol.Lines(b"hi\n")]
    assert gate.Login(b"s3cret").feed([protocol.Lines(b"/pass s3cret\n")]) == (True, [])
    for wrong in [b"/pass s3cre\n", b"/pass s3cret \n", b"/pass\n", b"hello\n/pass s3cret\n"]:
        assert gate.Login(b"s3cret").feed([protocol.Lines(wrong)]) == (False, [])
    too_long = [protocol.LineTooLong(10), protocol.Lines(b"/pass s3cret\n")]
    assert gate.Login(b"s3cret").feed(too_long) == (False, [])


def test_penalties_double_per_address_up_to_a_cap_and_are_forgotten() -> None:
    penalties = gate.Penalties()
    delays = [penalties.fail("198.51.100.7", float(t)) for t in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert penalties.fail("198.51.100.8", 8.0) == 1.0  # another address starts afresh
    later = 8.0 + gate.FORGET_AFTER + 1
    assert penalties.fail("198.51.100.7", later) == 1.0  # a quiet while forgives


def test_penalties_remember_a_bounded_number_of_addresses() -> None:
    penalties = gate.Penalties()
    for n in range(gate.MAX_ADDRESSES + 50):
        penalties.fail(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 0.0)
    assert len(penalties) == gate.MAX_ADDRESSES


def test_the_secret_is_read_from_the_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"two words\r\nignored\n")
    assert gate.read_secret(str(path), {}) == b"two words"
    assert gate.read_secret(None, {"CHATBOX_PASSWORD": "env"}) == b"env"
    assert gate.read_secret(None, {}) is None
    with pytest.raises(gate.PasswordError, match="set but empty"):
        gate.read_secret(None, {"CHATBOX_PASSWORD": ""})


def test_the_channel_carries_ready_and_refused_in_their_place() -> None:
    reader = ChannelReader()
    events = reader.feed(ready_note() + b"hi\n" + refused_note())
    assert events == [Ready(), protocol.Lines(b"hi\n"), Refused()]


def test_a_password_never_reaches_a_server_that_did_not_ask() -> None:
    from chatbox.client.login import log_in

    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"* welcome guest1; nobody else is here yet\n")
        assert log_in(ours, "secret") == b"* welcome guest1; nobody else is here yet\n"
        theirs.setblocking(False)
        with pytest.raises(BlockingIOError):
            theirs.recv(100)  # nothing was sent


def test_a_pass_line_in_the_room_is_answered_never_relayed() -> None:
    assert protocol.parse_line("/pass hunter2") == protocol.Invalid("no password is asked for now")
    assert protocol.parse_line("/PASS") == protocol.Invalid("no password is asked for now")
