"""The chat client through a real pseudo-terminal: the path a person uses.

The client runs under pexpect in a pty with TERM=xterm. What it draws is fed to a
terminal emulator (pyte, a test dependency), so the tests look at the screen a person
would see, not at escape codes, as well as at what was sent, what arrived and how it
ended. Every client a test opens (`open_tty`) is killed and reaped at teardown.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import termios
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pexpect
import pyte
import pytest
from client_parties import TIMEOUT, OneShotServer, Party, Server, child_env, client_argv

ROWS, COLS = 24, 80
CTRL_B = "\x02"  # readline: cursor one character left
UP = "\x1b[A"


class _ScreenFeed:
    """pexpect's logfile_read: everything the client draws, kept raw and, where ``screen``
    is asked for, fed into a pyte screen."""

    def __init__(self, screen: bool = True) -> None:
        self.raw = bytearray()
        self.screen: Any = None
        self._stream: Any = None
        if screen:
            self.screen = pyte.Screen(COLS, ROWS)
            self._stream = pyte.ByteStream(self.screen)

    def write(self, data: bytes) -> None:
        self.raw += data
        if self._stream is not None:
            self._stream.feed(data)

    def flush(self) -> None:
        pass


class Tty:
    """A chat client in a pty. Resource handling: `close` kills and reaps it.

    ``screen=False`` keeps only the raw output: pyte draws about 0.3 MB/s, too slow for a
    test that makes the client print megabytes."""

    def __init__(self, *args: str, screen: bool = True, **env: str) -> None:
        argv = client_argv(*args)
        self.feed = _ScreenFeed(screen)
        self.child = pexpect.spawn(
            argv[0],
            argv[1:],
            env=child_env(TERM="xterm", **env),
            dimensions=(ROWS, COLS),
            timeout=TIMEOUT,
        )
        self.child.logfile_read = self.feed

    def ready(self) -> str:
        """Wait for the welcome and the prompt; the name the server gave us."""
        self.child.expect(r"welcome (\S+?);")
        name = self.child.match.group(1).decode()
        self.child.expect("> ")
        return str(name)

    def type(self, text: str) -> None:
        """Type TEXT and wait until the terminal has echoed its end."""
        self.child.send(text)
        printable = text.rstrip("\r\x02")
        if printable:
            self.child.expect_exact(printable[-8:])

    def rows(self) -> list[str]:
        return [row.rstrip() for row in self.feed.screen.display]

    def cursor(self) -> tuple[int, int]:
        return self.feed.screen.cursor.y, self.feed.screen.cursor.x

    def exit_status(self) -> int:
        self.child.expect(pexpect.EOF)
        self.child.close()
        status = self.child.exitstatus
        assert isinstance(status, int), f"client died of signal {self.child.signalstatus}"
        return status

    def close(self) -> None:
        if self.child.isalive():
            self.child.close(force=True)

    def in_readline_mode(self) -> bool:
        """The pty is in readline's mode: no kernel line editing, no kernel echo.

        (On Linux the master end reports the terminal's settings.)
        """
        lflag = termios.tcgetattr(self.child.child_fd)[3]
        return not lflag & (termios.ICANON | termios.ECHO)


OpenTty = Callable[..., Tty]


@pytest.fixture
def open_tty() -> Iterator[OpenTty]:
    """Start clients in ptys (`Tty`'s arguments); all are killed and reaped at teardown."""
    started: list[Tty] = []

    def start(*args: str, screen: bool = True, **env: str) -> Tty:
        started.append(Tty(*args, screen=screen, **env))
        return started[-1]

    try:
        yield start
    finally:
        for tty in started:
            tty.close()


def test_tty_half_typed_line_survives_an_arriving_message(
    server: Server, listener: Party, open_tty: OpenTty
) -> None:
    tty = open_tty(str(server.port))
    other = listener.name
    me = tty.ready()
    tty.type("hello wor")
    listener.send(b"incoming message\n")
    tty.child.expect(f"{other}(\x1b\\[0m)?> incoming message")  # coloured name
    tty.child.expect_exact("> hello wor")  # the input line, redrawn under the message
    rows = tty.rows()
    message_row = rows.index(f"<{other}> incoming message")
    assert rows[message_row + 1] == "> hello wor"
    assert tty.cursor() == (message_row + 1, len("> hello wor"))
    tty.type("ld\r")
    listener.expect(rf"<{me}> hello world$")
    assert listener.lines[-1] == f"<{me}> hello world"
    tty.child.sendeof()
    assert tty.exit_status() == 0


def test_tty_cursor_position_is_kept_across_an_arrival(
    server: Server, listener: Party, open_tty: OpenTty
) -> None:
    tty = open_tty(str(server.port), NO_COLOR="1")
    other = listener.name
    me = tty.ready()
    tty.type("hello world")
    tty.child.send(CTRL_B * 5)  # cursor before "world"
    tty.child.expect_exact("\b" * 5)
    listener.send(b"meanwhile\n")
    tty.child.expect(f"<{other}> meanwhile")
    tty.child.expect_exact("> hello world")
    tty.type("big ")
    tty.type("\r")
    listener.expect(rf"<{me}> hello big world$")


def test_tty_wrapped_long_input_survives_an_arrival(
    server: Server, listener: Party, open_tty: OpenTty
) -> None:
    tty = open_tty(str(server.port), NO_COLOR="1")
    typed = "".join(f"{i:02d}-" for i in range(40))[:110]  # wraps: longer than 80 columns
    other = listener.name
    me = tty.ready()
    tty.type(typed)
    listener.send(b"while you type\n")
    tty.child.expect(f"<{other}> while you type")
    tty.child.expect_exact(typed[-10:])
    rows = tty.rows()
    top = rows.index(f"<{other}> while you type") + 1
    shown = "> " + typed
    assert rows[top] == shown[:COLS]
    assert rows[top + 1] == shown[COLS:]
    assert not any(typed[:10] in row for row in rows[:top])  # no stale copy above
    tty.type("\r")
    listener.expect(rf"<{me}> {re.escape(typed)}$")


def test_tty_history_recalls_the_previous_line(
    server: Server, listener: Party, open_tty: OpenTty
) -> None:
    tty = open_tty(str(server.port))
    me = tty.ready()
    tty.type("say it once\r")
    listener.expect(rf"<{me}> say it once$")
    tty.child.send(UP)
    tty.child.expect_exact("say it once")
    tty.type(" more\r")
    listener.expect(rf"<{me}> say it once more$")


@pytest.mark.parametrize(
    ("keys", "reason"),
    [("/quit\r", "quit"), ("/quit gone fishing\r", "gone fishing"), ("\x04", "quit")],
    ids=["slash-quit", "slash-quit-reason", "ctrl-d"],
)
def test_tty_quit_exits_0_after_a_clean_quit(
    server: Server, listener: Party, open_tty: OpenTty, keys: str, reason: str
) -> None:
    tty = open_tty(str(server.port))
    me = tty.ready()
    tty.child.send(keys)
    assert tty.exit_status() == 0
    listener.expect(rf"\* {me} left \({reason}\)$")


def test_tty_ctrl_c_exits_0_after_a_clean_quit(
    server: Server, listener: Party, open_tty: OpenTty
) -> None:
    tty = open_tty(str(server.port))
    me = tty.ready()
    tty.type("half a thought")
    tty.child.sendintr()
    assert tty.exit_status() == 0
    listener.expect(rf"\* {me} left \(quit\)$")
    assert not any("half a thought" in line for line in listener.lines)
    assert b"Traceback" not in tty.feed.raw


def test_tty_server_gone_is_one_line_exit_1(server: Server, open_tty: OpenTty) -> None:
    tty = open_tty(str(server.port))
    tty.ready()
    tty.type("unfinished")
    server.stop()
    tty.child.expect_exact("connection closed by server")
    assert tty.exit_status() == 1
    assert b"Traceback" not in tty.feed.raw
    rows = [row for row in tty.rows() if row]
    assert rows[-1] == "connection closed by server"


SGR = re.compile(rb"\x1b\[[0-9;]*m")


def test_tty_names_are_coloured(server: Server, listener: Party, open_tty: OpenTty) -> None:
    tty = open_tty(str(server.port))
    other = listener.name
    tty.ready()
    listener.send(b"in colour\n")
    tty.child.expect(f"{other}.*> in colour")
    coloured = re.compile(rb"<\x1b\[1;\d+m" + other.encode() + rb"\x1b\[0m> in colour")
    assert coloured.search(tty.feed.raw)


def test_tty_no_color_means_no_colour(server: Server, listener: Party, open_tty: OpenTty) -> None:
    tty = open_tty(str(server.port), NO_COLOR="1")
    other = listener.name
    tty.ready()
    listener.send(b"plain please\n")
    tty.child.expect_exact(f"<{other}> plain please")
    assert not SGR.search(tty.feed.raw)


def test_tty_control_characters_are_shown_not_obeyed(open_tty: OpenTty) -> None:
    with OneShotServer() as srv:
        tty = open_tty(str(srv.port), NO_COLOR="1")
        conn = srv.accept()
        tty.child.expect("> ")
        conn.sendall(b"<mallory> clear\x1b[2J\x1b[Hscreen\x07\n")
        tty.child.expect_exact("<mallory> clear^[[2J^[[Hscreen^G")
        assert "<mallory> clear^[[2J^[[Hscreen^G" in tty.rows()
        conn.close()
        srv.conn = None
        assert tty.exit_status() == 1


def test_tty_ctrl_z_then_fg_keeps_the_half_typed_line(
    server: Server, listener: Party, open_tty: OpenTty
) -> None:
    tty = open_tty(str(server.port), NO_COLOR="1")
    me = tty.ready()
    tty.type("before ")
    tty.child.send("\x1a")  # Ctrl-Z
    _, status = os.waitpid(tty.child.pid, os.WUNTRACED)  # the event: it has stopped
    assert os.WIFSTOPPED(status)
    assert not tty.in_readline_mode()  # the shell gets a terminal in its normal mode
    os.kill(tty.child.pid, signal.SIGCONT)  # what the shell's `fg` does
    tty.child.expect_exact("> before ")  # redrawn on resume
    assert tty.in_readline_mode()
    tty.type("after\r")
    listener.expect(rf"<{me}> before after$")


def test_tty_tab_completes_commands_and_names(
    server: Server, spawn: Callable[..., Party], open_tty: OpenTty
) -> None:
    friend = f"zelda{os.getpid()}"
    listener = spawn(client_argv(str(server.port), "--name", friend))
    tty = open_tty(str(server.port), NO_COLOR="1")
    listener.expect(rf"\* you are now known as {friend}$")
    me = tty.ready()  # the welcome names everyone here, so the client knows zelda
    tty.child.send("/ms\t")
    tty.child.expect_exact("/msg ")
    tty.child.send("zel\t")
    tty.child.expect_exact(f"{friend} ")
    tty.type("psst\r")
    listener.expect(rf"\[private\] <{me}> psst$")


# --- keys typed ahead ----------------------------------------------------------------------
# A person types faster than the client turns around: Enter then Ctrl-D at once, a pasted
# burst, keys while no prompt is up. Every byte must keep its meaning.


def _said_then_left(listener: Party, me: str, lines: list[str]) -> None:
    """LISTENER saw ME say LINES, in order, then leave with a plain quit."""
    for line in lines:
        listener.expect(rf"<{me}> {re.escape(line)}$")
    listener.expect(rf"\* {me} left \(quit\)$")
    said = [line for line in listener.lines if line.startswith(f"<{me}> ")]
    assert said == [f"<{me}> {line}" for line in lines]


@pytest.mark.parametrize(
    "writes",
    [
        ["line\r\x04"],
        ["a\rb\rc\r\x04"],
        ["a\rb\rc\r", "\x04"],
        ["one\r", "two\r", "\x04"],
    ],
    ids=["line-eof-one-write", "three-lines-eof-one-write", "three-lines-then-eof", "writes"],
)
def test_tty_lines_then_ctrl_d_typed_ahead_all_sent_then_exit_0(
    server: Server, listener: Party, open_tty: OpenTty, writes: list[str]
) -> None:
    tty = open_tty(str(server.port), NO_COLOR="1")
    me = tty.ready()
    for data in writes:  # no wait in between: type-ahead, as fast as a pty takes it
        tty.child.send(data)
    assert tty.exit_status() == 0
    lines = "".join(writes).rstrip("\x04").split("\r")[:-1]
    _said_then_left(listener, me, lines)


def test_tty_keys_typed_while_no_prompt_is_up_keep_their_meaning(open_tty: OpenTty) -> None:
    # `--name` holds the prompt back until the server's verdict: a window in which the
    # client reads no keys, as between one line and the next prompt, only longer and
    # under the test's control. Keys typed now must reach readline untouched; in the
    # kernel's line mode a Ctrl-D would become a NUL and never end the client.
    name = f"early{os.getpid()}"
    with OneShotServer() as srv:
        tty = open_tty(str(srv.port), "--name", name, NO_COLOR="1")
        conn = srv.accept()
        wire = b""
        while not wire.endswith(b"\n"):
            chunk = conn.recv(4096)
            assert chunk, f"connection closed; got {wire!r}"
            wire += chunk
        assert wire == f"/nick {name}\n".encode()
        assert tty.in_readline_mode()
        tty.child.send("early\r\x04")
        conn.sendall(f"* you are now known as {name}\n".encode())
        assert srv.read_until_eof() == b"early\n/quit\n"
        conn.shutdown(socket.SHUT_WR)
        assert tty.exit_status() == 0


def test_tty_terminal_stays_in_readline_mode_between_lines(
    server: Server, listener: Party, open_tty: OpenTty
) -> None:
    tty = open_tty(str(server.port), NO_COLOR="1")
    me = tty.ready()
    for n in range(3):
        tty.type(f"line {n}\r")
        listener.expect(rf"<{me}> line {n}$")
        assert tty.in_readline_mode()  # at any moment, not only while a prompt is up
    tty.child.sendeof()
    assert tty.exit_status() == 0


def test_tty_pasted_burst_longer_than_one_read_all_sent_in_order(
    server: Server, listener: Party, open_tty: OpenTty
) -> None:
    tty = open_tty(str(server.port), NO_COLOR="1")
    lines = [f"pasted line {n:03d} " + "x" * 60 for n in range(120)]  # ~10 KB, > 4 KB reads
    me = tty.ready()
    tty.child.send("\r".join(lines) + "\r\x04")
    assert tty.exit_status() == 0
    _said_then_left(listener, me, lines)


def test_tty_utf8_character_split_across_reads_is_sent_whole(
    server: Server, listener: Party, open_tty: OpenTty
) -> None:
    tty = open_tty(str(server.port), NO_COLOR="1")
    me = tty.ready()
    tty.child.send(b"caf\xc3")  # the first byte of "é"
    tty.child.expect_exact("caf")  # read and drawn; the rest of "é" comes in a later read
    tty.child.send(b"\xa9 cr\xc3\xa8me\r")
    listener.expect(rf"<{me}> café crème$")
    tty.child.sendeof()
    assert tty.exit_status() == 0


def test_tty_terminal_is_given_back_once_nothing_more_is_read(open_tty: OpenTty) -> None:
    with OneShotServer() as srv:
        tty = open_tty(str(srv.port), NO_COLOR="1")
        conn = srv.accept()
        tty.child.expect("> ")
        assert tty.in_readline_mode()
        tty.child.send("/quit\r")
        assert srv.read_until_eof() == b"/quit\n"
        # The client now only waits for the server to close: the terminal is back in
        # its normal mode, as the shell will want it.
        assert not tty.in_readline_mode()
        conn.shutdown(socket.SHUT_WR)
        assert tty.exit_status() == 0


def _resident_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        match = re.search(r"^VmRSS:\s+(\d+) kB", status.read(), re.M)
    assert match is not None
    return int(match.group(1))


def _reads_until(sock: socket.socket, token: bytes) -> threading.Thread:
    """A thread that reads SOCK (as fast as the server sends) until TOKEN has come."""

    def read() -> None:
        seen = b""
        while token not in seen:
            data = sock.recv(65536)
            if not data:
                return
            seen = seen[-len(token) :] + data

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def test_tty_unread_terminal_holds_back_the_server_which_cuts_the_client_off(
    start_server: Callable[..., Server], open_tty: OpenTty
) -> None:
    # A terminal that takes no output (Ctrl-S; here, a pty the test stops reading) must
    # stop the client reading the socket, as a full pipe does: memory stays bounded and
    # the server's slow-reader cut-off ends the session.
    server = start_server(
        None, "127.0.0.1", "--sendq", "16384", "--slow-timeout", "0.5",
        "--flood-lines", "0", "--flood-bytes", "0",  # the pusher's 40 MB is no flood here
    )  # fmt: skip
    tty = open_tty(str(server.port), screen=False)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as pusher:
        name = tty.ready()
        # Another party, reading everything at once, sees the server cut the client off.
        watcher = _reads_until(pusher, f"* {name} left (too slow)".encode())
        # From here on nothing reads the pty until the server has given up on the client.
        block = (b"y" * 200 + b"\n") * 500
        for _ in range(400):  # 40 MB; sendall blocks only while the server reads no more
            pusher.sendall(block)
        watcher.join(TIMEOUT)
        assert not watcher.is_alive(), "the server never cut off the client"
        assert _resident_kib(tty.child.pid) < 100 * 1024
        # Reads the pty again: the client first shows what was already in its socket's
        # receive buffer (megabytes on loopback), then says why it ends.
        tty.child.expect_exact("connection closed by server", searchwindowsize=64)
        assert tty.exit_status() == 1
        assert b"Traceback" not in tty.feed.raw
