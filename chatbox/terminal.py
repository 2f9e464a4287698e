"""The user's side of the chat client: how typed lines are read and received lines shown.

Two consoles share one interface. `LineConsole` is for pipes, scripts and platforms
without readline: bytes in, plain lines out, flushed as they arrive, no prompt, no
escape codes. `ReadlineConsole` is for a person at a terminal: a prompt with readline's
line editing and history, and every received line printed *above* the input line with
what was typed so far redrawn intact.

The rule that keeps a terminal ungarbled: only the main thread ever draws. Readline
edits the line without holding the GIL, so a second thread drawing at the same moment
would interleave with it. The receiving thread therefore queues its lines and sends a
signal to the main thread (`MainThreadCall`); the signal interrupts readline's wait for
a key, Python runs the handler in the main thread *between two keystrokes*, and the
handler clears the input line, prints the queued lines and asks readline to redraw.
The same signal ends a blocking read when the server hangs up (`hang_up`).

Received text is always made visible before it is shown (`visible`): the server already
replaces control characters, but a client must not trust that (defence in depth).
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import io
import os
import re
import signal
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from types import FrameType
from typing import BinaryIO, TextIO, cast

# --- how received text looks ---------------------------------------------------------------

# C0 controls but TAB, DEL, C1 controls, and the bidirectional overrides and isolates that
# can make a line read differently from what it says ("Trojan Source").
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

# Bytes that need no second look in a received block: printable ASCII, TAB and LF.
_PLAIN_BYTES = bytes(range(0x20, 0x7F)) + b"\t\n"


def _show_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return "^" + chr(code + 0x40)  # ESC -> ^[, NUL -> ^@, as `cat -v` shows them
    if code == 0x7F:
        return "^?"
    return f"<U+{code:04X}>"


def visible(text: str) -> str:
    """TEXT with every control character spelled out, so it cannot drive the terminal."""
    return _UNSAFE.sub(_show_char, text)


# SGR colours, chosen to read on dark and light backgrounds alike.
_NAME_COLOURS = ("31", "32", "33", "34", "35", "36", "91", "92", "93", "94", "95", "96")
_RESET = "\x1b[0m"
_NOTICE = "\x1b[36m"
_ERROR = "\x1b[1;31m"
_PRIVATE = "\x1b[1;35m"
_DIM = "\x1b[2m"
_CHAT = re.compile(r"(\[private\] )?<([^>\s]{1,64})> ")


def colour_wanted(stream: TextIO | BinaryIO, environ: dict[str, str] | os._Environ[str]) -> bool:
    """Colour only on a terminal, never when NO_COLOR is set (no-color.org), never on dumb."""
    if environ.get("NO_COLOR", ""):
        return False
    if environ.get("TERM", "") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Style:
    """Turns one received line into what the user sees: visible, timestamped, coloured."""

    def __init__(self, *, colour: bool, timestamps: bool) -> None:
        self.colour = colour
        self.timestamps = timestamps

    def block(self, data: bytes) -> list[str]:
        """Complete received lines (each ending in LF) as display lines, without LFs."""
        text = data.decode("utf-8", "replace")
        return [self.line(line) for line in text[:-1].split("\n")]

    def plain_block(self, data: bytes) -> bytes:
        """Complete received lines as bytes for a pipe, in one pass when nothing needs doing.

        The common case - printable ASCII, no timestamps, no colour - is the block itself;
        everything else goes line by line.
        """
        if not self.timestamps and not self.colour and not data.translate(None, _PLAIN_BYTES):
            return data
        return "".join(line + "\n" for line in self.block(data)).encode("utf-8", "replace")

    def line(self, text: str) -> str:
        text = visible(text.removesuffix("\r"))
        if self.colour:
            text = self._paint(text)
        if self.timestamps:
            stamp = time.strftime("%H:%M:%S")
            text = f"{_DIM}{stamp}{_RESET} {text}" if self.colour else f"{stamp} {text}"
        return text

    @staticmethod
    def name_colour(name: str) -> str:
        # crc32, not hash(): the same name gets the same colour in every run.
        return _NAME_COLOURS[zlib.crc32(name.lower().encode()) % len(_NAME_COLOURS)]

    def _paint(self, text: str) -> str:
        if text.startswith("* "):
            return f"{_NOTICE}{text}{_RESET}"
        if text.startswith("! "):
            return f"{_ERROR}{text}{_RESET}"
        match = _CHAT.match(text)
        if match is None:
            return text
        private, name = match.group(1), match.group(2)
        head = f"{_PRIVATE}[private]{_RESET} " if private else ""
        body = text[match.end() :]
        return f"{head}<\x1b[1;{self.name_colour(name)}m{name}{_RESET}> {body}"


# --- waking the main thread ----------------------------------------------------------------


class Hangup(Exception):
    """Raised in the main thread, out of a blocking read, when the connection has ended."""


class MainThreadCall:
    """Runs a callback in the main thread soon, even while it is blocked reading input.

    POSIX only: `signal.pthread_kill` sends SIGUSR1 to the main thread itself, so its
    blocking read (readline's select, a pipe's read) returns EINTR and Python runs the
    handler there. A signal that lands just after readline's select returned, but before
    it waits again, is only noticed at the next EINTR; `call` therefore repeats the signal
    until the callback confirms it ran (`done`).

    Resource handling: installs a SIGUSR1 handler for the life of the process; call only
    from the main thread's setup, once.
    """

    SIGNAL = getattr(signal, "SIGUSR1", None)

    # How long a caller waits for the main thread before signalling again (the window
    # above is a few instructions wide, so this is a backstop, rarely taken).
    RESIGNAL_SECONDS = 0.05

    def __init__(self, callback: Callable[[], None]) -> None:
        assert self.SIGNAL is not None
        self._callback = callback
        self._main = threading.main_thread().ident
        self._done = threading.Event()
        signal.signal(self.SIGNAL, self._handle)

    @classmethod
    def available(cls) -> bool:
        return cls.SIGNAL is not None and hasattr(signal, "pthread_kill")

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        try:
            self._callback()
        finally:
            self._done.set()

    def call(self, *, wait: bool = True) -> None:
        """From any thread: run the callback in the main thread; with WAIT, until it did."""
        assert self._main is not None and self.SIGNAL is not None
        self._done.clear()
        signal.pthread_kill(self._main, self.SIGNAL)
        while wait and not self._done.wait(self.RESIGNAL_SECONDS):
            signal.pthread_kill(self._main, self.SIGNAL)


# --- consoles ------------------------------------------------------------------------------


class Console(abc.ABC):
    """Where typed lines come from and received lines go.

    `read_line` and `status` belong to the main thread; `show` and `hang_up` may be called
    from the receiving thread.
    """

    def __init__(self, style: Style) -> None:
        self.style = style
        self._hung_up = False
        self._reading = False
        self._wake: MainThreadCall | None = None

    @abc.abstractmethod
    def read_line(self) -> bytes | None:
        """The next line the user typed, with its LF; None at end of input.

        Error handling: raises `Hangup` once `hang_up` was called, and KeyboardInterrupt
        on Ctrl-C, whether or not a read was in progress.
        """

    @abc.abstractmethod
    def show(self, data: bytes) -> None:
        """Show complete received lines (each ending in LF)."""

    def hang_up(self) -> bool:
        """From any thread: make the current or next `read_line` raise `Hangup`.

        Returns False where a blocked read cannot be interrupted (no POSIX signals); the
        caller must then end the process itself.
        """
        self._hung_up = True
        if self._wake is None:
            return False
        self._wake.call()
        return True

    def status(self, text: str) -> None:
        """A line from the client itself (not from the server), on stderr."""
        print(text, file=sys.stderr, flush=True)

    def _check_hangup(self) -> None:
        # Runs in the main thread, in the signal handler or before a read.
        if self._hung_up and self._reading:
            raise Hangup

    @contextlib.contextmanager
    def _read_guard(self) -> Iterator[None]:
        self._reading = True
        try:
            self._check_hangup()
            yield
        finally:
            self._reading = False


class LineConsole(Console):
    """Pipes and scripts: plain lines in and out, no prompt, no escape codes but colour.

    Received lines are written by the receiving thread itself (nothing else draws), one
    write and one flush per received block, so no line waits in a buffer.
    """

    def __init__(self, style: Style, stdin: BinaryIO, stdout: BinaryIO) -> None:
        super().__init__(style)
        # read1 is what BufferedReader (sys.stdin.buffer) adds over BinaryIO.
        self._stdin = cast(io.BufferedReader, stdin)
        self._stdout = stdout
        self._pending = b""
        self._out_lock = threading.Lock()
        if MainThreadCall.available():
            self._wake = MainThreadCall(self._check_hangup)

    def read_line(self) -> bytes | None:
        # read1 takes whatever the pipe has (many lines at once, so `seq 1 10000` is sent in
        # a few large writes), yet returns as soon as a line typed at a terminal is there.
        with self._read_guard():
            while b"\n" not in self._pending:
                chunk = self._stdin.read1(65536)
                if not chunk:
                    rest, self._pending = self._pending, b""
                    return rest + b"\n" if rest else None
                self._pending += chunk
            cut = self._pending.rindex(b"\n") + 1
            lines, self._pending = self._pending[:cut], self._pending[cut:]
            return lines

    def show(self, data: bytes) -> None:
        out = self.style.plain_block(data)
        with self._out_lock:
            try:
                self._stdout.write(out)
                self._stdout.flush()
            except (BrokenPipeError, ValueError):
                # Nobody reads our output any more (`| head`): keep chatting, show nothing,
                # and don't let the interpreter complain about the pipe at exit.
                self._stdout = open(os.devnull, "wb")  # noqa: SIM115 - lives as long as we do


class ReadlineConsole(Console):
    """A person at a terminal: readline editing and history, arrivals drawn above the input.

    Resource handling: readline puts the terminal in its own mode only while `input()`
    runs and restores it when `input()` returns or raises (also for `Hangup` and Ctrl-C),
    so the terminal is never left raw.
    """

    PROMPT = "> "

    def __init__(self, style: Style) -> None:
        super().__init__(style)
        import readline  # noqa: F401 - importing it is what gives input() line editing

        self._queue: list[str] = []
        self._queue_lock = threading.Lock()
        self._wake = MainThreadCall(self._draw)
        self._rl = _ReadlineLib.load()

    @classmethod
    def available(cls) -> bool:
        try:
            import readline  # noqa: F401
        except ImportError:
            return False
        return MainThreadCall.available()

    def read_line(self) -> bytes | None:
        with self._read_guard():
            try:
                text = input(self.PROMPT)
            except EOFError:
                sys.stdout.write("\n")  # Ctrl-D leaves the cursor after the prompt
                return None
            except KeyboardInterrupt:
                sys.stdout.write("\n")  # keep what was typed, with the ^C the tty echoed
                raise
            except Hangup:
                sys.stdout.write("\r\x1b[K")  # the prompt goes; the reason takes its place
                raise
        try:
            return text.encode("utf-8", "surrogateescape") + b"\n"
        except UnicodeEncodeError:
            return text.encode("utf-8", "replace") + b"\n"

    def show(self, data: bytes) -> None:
        lines = self.style.block(data)
        with self._queue_lock:
            self._queue.extend(lines)
        assert self._wake is not None
        self._wake.call()

    def status(self, text: str) -> None:
        sys.stdout.flush()
        super().status(text)

    def _draw(self) -> None:
        # In the main thread, between keystrokes: see the module docstring.
        with self._queue_lock:
            lines, self._queue = self._queue, []
        if lines:
            text = "".join(line + "\n" for line in lines)
            if self._reading:
                self._draw_above_input(text)
            else:
                sys.stdout.write(text)
                sys.stdout.flush()
        self._check_hangup()

    def _draw_above_input(self, text: str) -> None:
        if self._rl is not None:
            sys.stdout.flush()
            self._rl.clear_visible_line()  # cursor to the start of the prompt, lines erased
            sys.stdout.write(text)
            sys.stdout.flush()
            self._rl.forced_update_display()  # prompt, typed text and cursor as they were
            return
        # Without the C entry points (libedit): redraw by hand, cursor at the end of the line.
        import readline

        sys.stdout.write("\r\x1b[K" + text + self.PROMPT + readline.get_line_buffer())
        sys.stdout.flush()


class _ReadlineLib:
    """GNU readline's own redraw entry points, which Python's readline module lacks.

    Python's module exposes no way to erase the visible input line or to redraw it from
    scratch with the cursor where it was; libreadline has both, and the module has
    already loaded it, so ctypes finds the same library and the same state.
    """

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._clear = lib.rl_clear_visible_line
        self._redraw = lib.rl_forced_update_display

    @classmethod
    def load(cls) -> _ReadlineLib | None:
        import readline

        if "libedit" in (readline.__doc__ or ""):
            return None
        path = getattr(readline, "__file__", None)
        if path is None:
            return None
        try:
            # Symbols are looked up in the module and the libraries it loaded, so this is
            # the very libreadline that input() is using, whatever its version or path.
            lib = ctypes.CDLL(path)
            if ctypes.c_int.in_dll(lib, "rl_readline_version").value < 0x0700:
                return None  # rl_clear_visible_line came with readline 7
            return cls(lib)
        except (OSError, AttributeError, ValueError):
            return None

    def clear_visible_line(self) -> None:
        self._clear()

    def forced_update_display(self) -> None:
        self._redraw()


def open_console(*, timestamps: bool, environ: dict[str, str] | os._Environ[str]) -> Console:
    """The console for this process: a readline one only when a person is at a terminal."""
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and environ.get("TERM") != "dumb"
    style = Style(colour=colour_wanted(sys.stdout, environ), timestamps=timestamps)
    if interactive and ReadlineConsole.available():
        return ReadlineConsole(style)
    return LineConsole(style, sys.stdin.buffer, sys.stdout.buffer)
