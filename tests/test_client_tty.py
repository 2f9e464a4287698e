"""The chat client through a real pseudo-terminal: the path a person uses.

The client runs under pexpect in a pty with TERM=xterm. What it draws is fed to a
terminal emulator (pyte), so the tests look at the screen a person would see, not at
escape codes; where pyte is missing only the screen assertions are skipped, never the
behaviour (what was sent, what arrived, how it ended).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterator
from typing import Any

import pexpect
import pytest
from test_client import TIMEOUT, OneShotServer, Party, Server, child_env, client_argv, joined

try:
    import pyte
except ImportError:  # pragma: no cover - depends on the test environment
    pyte = None

ROWS, COLS = 24, 80
CTRL_B = "\x02"  # readline: cursor one character left
UP = "\x1b[A"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    try:
        yield srv
    finally:
        srv.stop()


class _ScreenFeed:
    """pexpect's logfile_read: everything the client draws, into a pyte screen."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self.screen: Any = None
        self._stream: Any = None
        if pyte is not None:
            self.screen = pyte.Screen(COLS, ROWS)
            self._stream = pyte.ByteStream(self.screen)

    def write(self, data: bytes) -> None:
        self.raw += data
        if self._stream is not None:
            self._stream.feed(data)

    def flush(self) -> None:
        pass


class Tty:
    """A chat client in a pty. Resource handling: `close` kills and reaps it."""

    def __init__(self, *args: str, **env: str) -> None:
        argv = client_argv(*args)
        self.feed = _ScreenFeed()
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


def needs_screen() -> None:
    if pyte is None:
        pytest.skip("pyte (terminal emulator) is not installed")


def test_tty_half_typed_line_survives_an_arriving_message(server: Server) -> None:
    listener = Party(client_argv(str(server.port)))
    tty = Tty(str(server.port))
    try:
        other = joined(listener)
        me = tty.ready()
        tty.type("hello wor")
        listener.send(b"incoming message\n")
        tty.child.expect(f"{other}(\x1b\\[0m)?> incoming message")  # coloured name
        tty.child.expect_exact("> hello wor")  # the input line, redrawn under the message
        if pyte is not None:
            rows = tty.rows()
            message_row = rows.index(f"<{other}> incoming message")
            assert rows[message_row + 1] == "> hello wor"
            assert tty.cursor() == (message_row + 1, len("> hello wor"))
        tty.type("ld\r")
        listener.expect(rf"<{me}> hello world$")
        assert listener.lines[-1] == f"<{me}> hello world"
        tty.child.sendeof()
        assert tty.exit_status() == 0
    finally:
        tty.close()
        listener.close()


def test_tty_cursor_position_is_kept_across_an_arrival(server: Server) -> None:
    listener = Party(client_argv(str(server.port)))
    tty = Tty(str(server.port), NO_COLOR="1")
    try:
        other = joined(listener)
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
    finally:
        tty.close()
        listener.close()


def test_tty_wrapped_long_input_survives_an_arrival(server: Server) -> None:
    listener = Party(client_argv(str(server.port)))
    tty = Tty(str(server.port), NO_COLOR="1")
    typed = "".join(f"{i:02d}-" for i in range(40))[:110]  # wraps: longer than 80 columns
    try:
        other = joined(listener)
        me = tty.ready()
        tty.type(typed)
        listener.send(b"while you type\n")
        tty.child.expect(f"<{other}> while you type")
        tty.child.expect_exact(typed[-10:])
        if pyte is not None:
            rows = tty.rows()
            top = rows.index(f"<{other}> while you type") + 1
            shown = "> " + typed
            assert rows[top] == shown[:COLS]
            assert rows[top + 1] == shown[COLS:]
            assert not any(typed[:10] in row for row in rows[:top])  # no stale copy above
        tty.type("\r")
        listener.expect(rf"<{me}> {re.escape(typed)}$")
    finally:
        tty.close()
        listener.close()


def test_tty_history_recalls_the_previous_line(server: Server) -> None:
    listener = Party(client_argv(str(server.port)))
    tty = Tty(str(server.port))
    try:
        joined(listener)
        me = tty.ready()
        tty.type("say it once\r")
        listener.expect(rf"<{me}> say it once$")
        tty.child.send(UP)
        tty.child.expect_exact("say it once")
        tty.type(" more\r")
        listener.expect(rf"<{me}> say it once more$")
    finally:
        tty.close()
        listener.close()


@pytest.mark.parametrize(
    ("keys", "reason"),
    [("/quit\r", "quit"), ("/quit gone fishing\r", "gone fishing"), ("\x04", "quit")],
    ids=["slash-quit", "slash-quit-reason", "ctrl-d"],
)
def test_tty_quit_exits_0_after_a_clean_quit(server: Server, keys: str, reason: str) -> None:
    listener = Party(client_argv(str(server.port)))
    tty = Tty(str(server.port))
    try:
        joined(listener)
        me = tty.ready()
        tty.child.send(keys)
        assert tty.exit_status() == 0
        listener.expect(rf"\* {me} left \({reason}\)$")
    finally:
        tty.close()
        listener.close()


def test_tty_ctrl_c_exits_0_after_a_clean_quit(server: Server) -> None:
    listener = Party(client_argv(str(server.port)))
    tty = Tty(str(server.port))
    try:
        joined(listener)
        me = tty.ready()
        tty.type("half a thought")
        tty.child.sendintr()
        assert tty.exit_status() == 0
        listener.expect(rf"\* {me} left \(quit\)$")
        assert not any("half a thought" in line for line in listener.lines)
        assert b"Traceback" not in tty.feed.raw
    finally:
        tty.close()
        listener.close()


def test_tty_server_gone_is_one_line_exit_1(server: Server) -> None:
    tty = Tty(str(server.port))
    try:
        tty.ready()
        tty.type("unfinished")
        server.stop()
        tty.child.expect_exact("connection closed by server")
        assert tty.exit_status() == 1
        assert b"Traceback" not in tty.feed.raw
        if pyte is not None:
            rows = [row for row in tty.rows() if row]
            assert rows[-1] == "connection closed by server"
    finally:
        tty.close()


SGR = re.compile(rb"\x1b\[[0-9;]*m")


def test_tty_names_are_coloured(server: Server) -> None:
    listener = Party(client_argv(str(server.port)))
    tty = Tty(str(server.port))
    try:
        other = joined(listener)
        tty.ready()
        listener.send(b"in colour\n")
        tty.child.expect(f"{other}.*> in colour")
        coloured = re.compile(rb"<\x1b\[1;\d+m" + other.encode() + rb"\x1b\[0m> in colour")
        assert coloured.search(tty.feed.raw)
    finally:
        tty.close()
        listener.close()


def test_tty_no_color_means_no_colour(server: Server) -> None:
    listener = Party(client_argv(str(server.port)))
    tty = Tty(str(server.port), NO_COLOR="1")
    try:
        other = joined(listener)
        tty.ready()
        listener.send(b"plain please\n")
        tty.child.expect_exact(f"<{other}> plain please")
        assert not SGR.search(tty.feed.raw)
    finally:
        tty.close()
        listener.close()


def test_tty_control_characters_are_shown_not_obeyed() -> None:
    with OneShotServer() as srv:
        tty = Tty(str(srv.port), NO_COLOR="1")
        try:
            conn = srv.accept()
            tty.child.expect("> ")
            conn.sendall(b"<mallory> clear\x1b[2J\x1b[Hscreen\x07\n")
            tty.child.expect_exact("<mallory> clear^[[2J^[[Hscreen^G")
            if pyte is not None:
                assert "<mallory> clear^[[2J^[[Hscreen^G" in tty.rows()
            conn.close()
            srv.conn = None
            assert tty.exit_status() == 1
        finally:
            tty.close()


def test_tty_screen_assertions_can_run() -> None:
    """The screen checks above are skipped without pyte: make that visible, once."""
    needs_screen()
    assert sys.stdout is not None


def test_tty_ctrl_z_then_fg_keeps_the_half_typed_line(server: Server) -> None:
    listener = Party(client_argv(str(server.port)))
    tty = Tty(str(server.port), NO_COLOR="1")
    try:
        joined(listener)
        me = tty.ready()
        tty.type("before ")
        tty.child.send("\x1a")  # Ctrl-Z
        _, status = os.waitpid(tty.child.pid, os.WUNTRACED)  # the event: it has stopped
        assert os.WIFSTOPPED(status)
        os.kill(tty.child.pid, signal.SIGCONT)  # what the shell's `fg` does
        tty.child.expect_exact("> before ")  # redrawn on resume
        tty.type("after\r")
        listener.expect(rf"<{me}> before after$")
    finally:
        tty.close()
        listener.close()


def test_tty_tab_completes_commands_and_names(server: Server) -> None:
    friend = f"zelda{os.getpid()}"
    listener = Party(client_argv(str(server.port), "--name", friend))
    tty = Tty(str(server.port), NO_COLOR="1")
    try:
        listener.expect(rf"\* you are now known as {friend}$")
        me = tty.ready()  # the welcome names everyone here, so the client knows zelda
        tty.child.send("/ms\t")
        tty.child.expect_exact("/msg ")
        tty.child.send("zel\t")
        tty.child.expect_exact(f"{friend} ")
        tty.type("psst\r")
        listener.expect(rf"\[private\] <{me}> psst$")
    finally:
        tty.close()
        listener.close()
