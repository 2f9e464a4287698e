"""The client's consoles: where typed lines come from and where received lines are shown.

Two consoles share one interface. `LineConsole` is for pipes, scripts and platforms
without readline: bytes in, plain lines out, flushed as they arrive, no prompt, no
escape codes. `ReadlineConsole` is for a person at a terminal: a prompt with readline's
line editing, history and Tab completion of commands and names, and every received
line printed *above* the input line with what was typed so far redrawn intact.

The rule that keeps a terminal ungarbled: while a prompt is up, only the main thread
draws. So the main thread never blocks inside readline: it drives GNU readline's
callback interface itself (`GnuReadline`), waiting in `select` on the terminal *and* on a
wake-up socket. The receiving thread queues its lines and writes one byte to that
socket; the main thread wakes, erases the input line, prints the queued lines and has
readline redraw the prompt, the typed text and the cursor exactly as they were. The same
socket ends a blocked read when the server hangs up (`hang_up`). Signals (Ctrl-C) reach a
plain Python `select`, so they take effect at once, with no blind spot.

Received text is made visible and styled by `chatbox.client.display` before it is drawn.
The signal helpers live here too: which thread gets Ctrl-C is part of who may draw.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import io
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import BinaryIO

from chatbox.client.completion import Completer
from chatbox.client.display import Style, colour_wanted, visible
from chatbox.client.gnu_readline import GnuReadline

# --- signals: the main thread takes them ---------------------------------------------------


class Hangup(Exception):
    """Raised in the main thread, out of `read_line`, once the connection has ended."""


_PROCESS_SIGNALS = {
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGWINCH", "SIGTSTP")
    if hasattr(signal, name)
}


def keep_signals_off_this_thread() -> None:
    """Block process signals in a helper thread, so the kernel delivers them to the main one.

    A Ctrl-C delivered to a helper thread would not interrupt the main thread's wait.
    """
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, _PROCESS_SIGNALS)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and the like until the block is done; they act right after.

    Also, a thread started inside starts with them blocked, as a helper thread should.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _PROCESS_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# --- consoles ------------------------------------------------------------------------------


class Console(abc.ABC):
    """Where typed lines come from and received lines go.

    `read_line` and `status` belong to the main thread; `show` and `hang_up` are called
    from the receiving thread.

    Resource handling: on POSIX a console owns a socketpair (the wake-up line from the
    receiving thread to the main thread's `select`); it lives as long as the process.
    It is also the process's signal wake-up fd: a signal that lands just before the main
    thread blocks in `select` - after Python's last look for pending signals - would
    otherwise take effect only when something else wakes it (a Ctrl-C seemingly lost).
    """

    def __init__(self, style: Style) -> None:
        self.style = style
        self._hung_up = False
        # Where select() on standard input works (POSIX), a blocked read can be woken.
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        if os.name == "posix":
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_w.setblocking(False)  # a full pipe already means "wake up"
            with contextlib.suppress(ValueError):  # only the main thread may; it does
                signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

    @abc.abstractmethod
    def read_line(self) -> bytes | None:
        """The next line(s) the user typed, each with its LF; None at end of input.

        Error handling: raises `Hangup` once `hang_up` was called, KeyboardInterrupt on
        Ctrl-C.
        """

    @abc.abstractmethod
    def show(self, data: bytes) -> None:
        """Show complete received lines (each ending in LF)."""

    @abc.abstractmethod
    def close(self) -> None:
        """The main thread reads no more input: give the terminal back (safe to repeat)."""

    def hang_up(self) -> bool:
        """From any thread: make the current or next `read_line` raise `Hangup`.

        Returns False where a blocked read cannot be woken (no select() on standard input,
        as on Windows); the caller must then end the process itself.
        """
        self._hung_up = True
        self.wake()
        return self._wake_w is not None

    def status(self, text: str) -> None:
        """A line from the client itself (not from the server), on stderr."""
        sys.stdout.flush()
        print(text, file=sys.stderr, flush=True)

    def wake(self) -> None:
        """From any thread: end the main thread's current wait (`wait_for`, `read_line`)."""
        if self._wake_w is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                self._wake_w.send(b"!")

    def wait_for(self, event: threading.Event, timeout: float) -> bool:
        """Main thread: wait until EVENT is set (True) or TIMEOUT seconds pass (False).

        Whoever sets EVENT calls `wake`. Unlike `Event.wait`, a signal that arrives just
        before the wait starts still ends it at once (it writes to the wake-up socket).
        """
        if self._wake_r is None:
            return event.wait(timeout)
        deadline = time.monotonic() + timeout
        while not event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([self._wake_r], [], [], left)
            if ready:
                self._wake_r.recv(4096)
        return True

    def _wait_for_input(self, fd: int) -> bool:
        """Block until FD is readable (True) or a wake-up came (False); Hangup if hung up."""
        if self._hung_up:
            raise Hangup
        if self._wake_r is None:
            return True  # nothing to select on: the caller's read blocks
        wake = self._wake_r.fileno()
        ready, _, _ = select.select([fd, wake], [], [])
        if wake in ready:
            self._wake_r.recv(4096)
            if self._hung_up:
                raise Hangup
        return fd in ready


class LineConsole(Console):
    """Pipes and scripts: plain lines in and out, no prompt, and no escape codes but colour.

    Received lines are written by the receiving thread itself (nothing else draws), one
    write and one flush per received block, so no line waits in a buffer.
    """

    def __init__(self, style: Style, stdin: BinaryIO, stdout: BinaryIO) -> None:
        super().__init__(style)
        self._stdin_fd = stdin.fileno()
        self._stdout = stdout
        self._pending = b""
        self._out_lock = threading.Lock()

    def read_line(self) -> bytes | None:
        # Whatever the pipe holds (many lines at once, so `seq 1 10000` is sent in a few
        # large writes), yet a line typed at a terminal is returned as soon as it is there.
        while b"\n" not in self._pending:
            try:
                if not self._wait_for_input(self._stdin_fd):
                    continue
                chunk = os.read(self._stdin_fd, 65536)
            except OSError:
                chunk = b""  # no standard input at all (closed): nothing more to say
            if not chunk:
                rest, self._pending = self._pending, b""
                return rest + b"\n" if rest else None
            self._pending += chunk
        cut = self._pending.rindex(b"\n") + 1
        lines, self._pending = self._pending[:cut], self._pending[cut:]
        return lines

    def close(self) -> None:
        pass  # the terminal, if any, was never taken out of its own mode

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


# At most this much text waits for the main thread to draw it; past it, `show` blocks the
# receiving thread, which then stops reading the socket. A terminal that does not take
# output (Ctrl-S, a pty nobody reads) must hold back the server as a full pipe does: the
# server's slow-reader cut-off then applies, and the client's memory stays bounded. 256 KiB
# is many screens of a burst (a large /who, a paste), so a person never waits on it.
QUEUE_LIMIT = 256 * 1024


class ReadlineConsole(Console):
    """A person at a terminal: readline editing and history, arrivals drawn above the input.

    The terminal stays in readline's mode from the moment the console opens until `close`
    (or process exit), between lines too, not only while a prompt is up. In the kernel's
    normal mode a key typed ahead while no prompt is up - after Enter, before the next
    prompt; or while `--name` waits for its verdict - would be taken by the kernel's own
    line editing: echoed twice, Backspace and Ctrl-U applied by the kernel, and Ctrl-D
    turned into an end-of-file mark that reads as a NUL once readline's mode is back, so
    a quick "line, Enter, Ctrl-D" would never end the client.

    Resource handling: `close` gives the terminal back, and so does `read_line` on every
    way out but a line (end of input, Ctrl-C, `Hangup`); an exit hook does it if neither
    ran. Ctrl-Z gives it to the shell while stopped.
    """

    PROMPT = "> "

    def __init__(self, style: Style, rl: GnuReadline) -> None:
        super().__init__(style)
        self._rl = rl
        self._stdin_fd = sys.stdin.fileno()
        self._rl.hold_terminal()
        atexit.register(self._rl.release_terminal)
        self._completer = Completer()
        self._completer.install()
        self._queue: list[str] = []
        self._queued = 0  # characters in `_queue`
        # Held while deciding who draws: the main thread while a prompt is up, else the
        # receiving thread directly.
        self._screen = threading.Lock()
        # Signalled when the queue shrinks or no prompt is up any more: a `show` waiting
        # for room goes on.
        self._room = threading.Condition(self._screen)
        self._reading = False
        self._resized = False
        if hasattr(signal, "SIGWINCH"):
            signal.signal(signal.SIGWINCH, self._on_resize)
        if hasattr(signal, "SIGTSTP"):
            signal.signal(signal.SIGTSTP, self._on_suspend)

    @classmethod
    def open(cls, style: Style) -> ReadlineConsole | None:
        if os.name != "posix":
            return None
        rl = GnuReadline.load(sys.stdin.fileno())
        return None if rl is None else cls(style, rl)

    def read_line(self) -> bytes | None:
        if self._hung_up:
            raise Hangup
        with self._screen:
            if self._resized:
                self._resized = False
                self._rl.reset_screen_size()
            self._rl.start(self.PROMPT)
            self._reading = True
        try:
            while not self._rl.done:
                with self._screen:
                    lines = self._take_queued()
                self._draw(lines)
                if not self._rl.pending_input() and self._wait_for_input(self._stdin_fd):
                    try:
                        data = os.read(self._stdin_fd, 4096)
                    except OSError:
                        data = b""  # EIO: the terminal is gone
                    if not data:
                        self._rl.abandon()
                        self.close()
                        return None
                    self._rl.take_input(data)
                self._rl.feed()
        except KeyboardInterrupt:
            self._rl.abandon()
            sys.stdout.write("\n")  # leave what was typed on screen, cursor below it
            self.close()
            raise
        except Hangup:
            self._rl.abandon()
            self._rl.clear_line()  # the prompt goes, all its rows; the reason takes its place
            sys.stdout.write("\r")
            self.close()
            raise
        finally:
            with self._screen:
                self._rl.stop()
                self._reading = False
                # Drawn before a waiting `show` goes on, to keep the order of the lines.
                self._draw(self._take_queued())
        line = self._rl.line
        if line is None:
            sys.stdout.write("\r\x1b[K")  # Ctrl-D: no empty prompt left behind
            sys.stdout.flush()
            self.close()
            return None
        # Bytes typed after Enter stay buffered in `_rl` for the next `read_line`.
        return line + b"\n"

    def close(self) -> None:
        with self._screen:
            sys.stdout.flush()
            self._rl.release_terminal()

    def show(self, data: bytes) -> None:
        """Draw the lines, or queue them for the main thread while a prompt is up.

        Resource handling: blocks while `QUEUE_LIMIT` is queued, until the main thread has
        drawn it or takes the prompt down (every way out of `read_line` does), so the
        socket is not read while the terminal takes no output.
        """
        lines = self.style.block(data)
        for line in data.decode("utf-8", "replace")[:-1].split("\n"):
            self._completer.learn(visible(line))
        with self._room:
            while self._reading and self._queued >= QUEUE_LIMIT:
                self.wake()  # the main thread may not have seen what is queued yet
                self._room.wait()
            if not self._reading:
                sys.stdout.write("".join(line + "\n" for line in lines))
                sys.stdout.flush()
                return
            self._queue.extend(lines)
            self._queued += sum(len(line) + 1 for line in lines)
        self.wake()

    def _take_queued(self) -> list[str]:
        # Under `_screen`: the queued lines, now the main thread's to draw; room for more.
        lines, self._queue, self._queued = self._queue, [], 0
        self._room.notify_all()
        return lines

    def _draw(self, lines: list[str]) -> None:
        # Main thread only, with the prompt up (or just taken down, under `_screen`).
        if not lines:
            return
        text = "".join(line + "\n" for line in lines)
        if not self._reading:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        self._rl.clear_line()  # cursor to the start of the prompt, input lines erased
        sys.stdout.write(text)
        sys.stdout.flush()
        self._rl.redraw()  # prompt, typed text and cursor as they were

    def _on_suspend(self, signum: int, frame: FrameType | None) -> None:
        # Ctrl-Z: give the shell a sane terminal while stopped, take it back on `fg`.
        # (Python handlers run in the main thread between two steps, never inside readline.)
        held = self._rl.held
        if self._reading:
            sys.stdout.write("\n")  # the half-typed line stays on screen above the shell's
            sys.stdout.flush()
        if held:
            self._rl.release_terminal()
        os.kill(os.getpid(), signal.SIGSTOP)
        if held:
            self._rl.hold_terminal()
        if self._reading:
            self._rl.redraw()

    def _on_resize(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two Python steps, never inside readline.
        if self._reading:
            self._rl.resize()
        else:
            self._resized = True


def open_console(*, timestamps: bool, environ: dict[str, str] | os._Environ[str]) -> Console:
    """The console for this process: a readline one only when a person is at a terminal."""
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and environ.get("TERM") != "dumb"
    style = Style(colour=colour_wanted(sys.stdout, environ), timestamps=timestamps)
    console = ReadlineConsole.open(style) if interactive else None
    if console is None:
        return LineConsole(style, sys.stdin.buffer, sys.stdout.buffer)
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A terminal whose encoding lacks a received character shows '?', not a crash.
        sys.stdout.reconfigure(errors="replace")
    return console
