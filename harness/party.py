"""A party: one real client process in a pseudo-terminal, driven like a person would.

The client runs in a new pty (`harness.ptychild`, echo off), started on its host's
command line. A pty reader (`harness.ptyreader`, one per few parties) reads its output
*continuously* - an unread pty blocks the client at about 17 KiB, which would turn a
slow harness into a false deadlock - and the party records each line, timestamped, in
its `PartyLog`.
Scenario threads write lines and wait for tokens, on a condition each read signals. One
wait polls, for want of an event: `wait_exit` reaps the process (a child's exit has
no event to wait on with others) in 10 ms steps after its terminal has closed.

Only the slow-reader scenario stops reading on purpose (`pause_reading`).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import resource
import select
import threading
import time
from collections.abc import Callable, Sequence

from harness.processes import Lifeline, end_group
from harness.ptychild import PtyChild
from harness.ptyreader import PtyReader
from harness.tokens import MESSAGE, Token
from harness.transcript import PartyLog

# Wide enough that no token wraps: a line-editing client redraws long lines with cursor
# movements that would cut a token in two.
PTY_SIZE = (50, 4000)
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
EOF_BYTE = b"\x04"


SELECT_LIMIT = 1024  # select() cannot take a descriptor from here on


def ready(fd: int, events: int, timeout: float) -> bool:
    """Whether ``fd`` is ready for ``events`` (select.POLLIN or POLLOUT) within
    ``timeout`` s, as select() says it. A run of hundreds of parties (a pty each) has
    descriptors above 1023, which select() cannot take: those are polled, and a hang-up
    counts as select() counts it (readable, never writable)."""
    if fd < SELECT_LIMIT:
        watch = [fd]
        if events == select.POLLIN:
            return bool(select.select(watch, [], [], timeout)[0])
        return bool(select.select([], watch, [], timeout)[1])
    poller = select.poll()
    poller.register(fd, events)
    wanted = events | select.POLLERR | (select.POLLHUP if events == select.POLLIN else 0)
    return any(mask & wanted for _, mask in poller.poll(timeout * 1000))


class PartyError(Exception):
    """A party's process could not be started or driven; the message says why."""


def visible_lines(text: str) -> list[str]:
    """Split terminal output into the lines a person would see (escapes removed).

    A carriage return starts a new visible segment: line editors redraw the input line
    with ``\\r``, and each redraw is judged on its own.
    """
    text = _ESCAPES.sub("", text)
    out: list[str] = []
    for segment in text.split("\r"):
        segment = _CONTROLS.sub("", segment)
        if segment.strip():
            out.append(segment)
    return out


FDS_PER_PARTY = 3  # its pty, and its terminal's side while it starts (and a margin)
FD_MARGIN = 64  # the server's pipes, the proxy, the report files...
PTY_MAX = "/proc/sys/kernel/pty/max"
PTY_NR = "/proc/sys/kernel/pty/nr"


def make_room(count: int) -> None:
    """Make sure ``count`` more parties can be started: raise the open-file limit up to
    its hard limit if need be, and check the free ptys.

    Error handling: a limit the harness cannot raise itself raises `PartyError` saying
    which and how to raise it, instead of parties failing one by one half-way.
    """
    need = count * FDS_PER_PARTY + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise PartyError(
                f"{count} parties need about {need} open files, and the hard limit is "
                f"{hard}: raise it (ulimit -Hn, or LimitNOFILE) or start fewer parties"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        with open(PTY_MAX) as f_max, open(PTY_NR) as f_nr:
            free = int(f_max.read()) - int(f_nr.read())
    except (OSError, ValueError):
        return  # not Linux, or no such counters: starting a party says so if it runs out
    if free < count:
        raise PartyError(
            f"{count} parties need {count} pseudo-terminals and only {free} are free "
            f"(sysctl kernel.pty.max): raise it or start fewer parties"
        )


class Party:
    """One client process and its transcript.

    Resource handling: `start` spawns the process in its own session (process group),
    registered with the lifeline; `close` asks it to leave (quit line, then EOF), then
    ends its group (SIGTERM, SIGKILL) and reaps it. Safe to call twice.

    Error handling: `start` raises `PartyError` when the command cannot be run; writes to
    a dead party return False instead of raising, and the checks report the consequence.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: PartyLog,
        clock: Callable[[], float],
        *,
        env: dict[str, str],
        known_crcs: dict[str, tuple[str, int]],
        quit_line: str | None = None,
        eof_ends: bool = True,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.clock = clock
        self.env = env
        self.known_crcs = known_crcs
        self.quit_line = quit_line
        # Whether Ctrl-D ends the client (not a byte-exact one, whose raw terminal passes
        # it on as a byte): without it and without a quit line, close ends it at once.
        self.eof_ends = eof_ends
        self.child: PtyChild | None = None
        self.pid = 0
        self.cond = threading.Condition()
        self.eof = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # the start of a line whose end has not been read yet
        self._last_output = time.monotonic()  # when the terminal last showed anything
        self.first_output: float | None = None  # when it first did (monotonic)
        self.started_at = 0.0  # when its process was started (monotonic)
        self._reader: PtyReader | None = None
        self._write_lock = threading.Lock()
        self._received_keys: set[tuple[str, int]] = set()
        self._messages_from: dict[str, int] = {}
        self._text_seen: list[str] = []
        self.closed = False

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        try:
            child = PtyChild(self.argv, self.env, PTY_SIZE, echo=False)
        except OSError as exc:
            raise PartyError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from None
        self.started_at = time.monotonic()
        self.child = child
        self.pid = child.pid
        Lifeline.get().register(self.pid)
        self.log.add_note(self.clock(), "started: " + " ".join(self.argv))
        self._reader = PtyReader.get()
        self._reader.add(child.child_fd, self._on_output)

    @property
    def alive(self) -> bool:
        return self.child is not None and self.child.isalive()

    def kill(self) -> None:
        """kill -9 the party's whole process group, as a crash would."""
        if self.pid:
            with contextlib.suppress(OSError):
                os.killpg(self.pid, 9)
            self.log.add_note(self.clock(), "killed with SIGKILL")

    def close(self, grace: float = 3.0, busy_until: float | None = None) -> None:
        """Ask the client to leave and end it; it is ended by force ``grace`` s after the
        request, or - with ``busy_until`` - ``grace`` s after it last showed anything,
        but no later than ``busy_until``: a client still showing a backlog of others'
        lines reaches its quit line, and sends the lines typed before it, only after
        that (ended by force at 3 s, a leaver on a busy machine lost its last lines)."""
        if self.closed or self.child is None:
            return
        self.closed = True
        child = self.child
        reader = self._reader
        assert reader is not None  # started: it has its reader
        reader.resume(child.child_fd)  # a paused party must drain to act on /quit
        if child.isalive() and (self.quit_line or self.eof_ends):
            deadline = time.monotonic() + grace
            if busy_until is not None:
                deadline = max(deadline, busy_until)
            if self.quit_line:
                self.send_text(self.quit_line, deadline)
            if self.eof_ends:
                self._write_raw(EOF_BYTE, deadline)
            while True:
                until = deadline
                if busy_until is not None:
                    until = min(busy_until, max(self._last_output, time.monotonic()) + grace)
                if self.wait_exit(until) or self._last_output + grace <= time.monotonic():
                    break
                if busy_until is None or time.monotonic() >= busy_until:
                    break
        end_group(self.pid, lambda: not child.isalive())
        reader.remove(child.child_fd)  # before the descriptor is closed and reused
        child.close()
        Lifeline.get().unregister(self.pid)
        status = (
            f"exit {child.exitstatus}"
            if child.exitstatus is not None
            else f"signal {child.signalstatus}"
        )
        self.log.exit_status = status
        self.log.add_note(self.clock(), f"ended: {status}")

    def wait_exit(self, deadline: float) -> bool:
        """Wait until the process has closed its terminal (the drain sees EOF)."""
        with self.cond:
            self.cond.wait_for(lambda: self.eof, timeout=max(0.0, deadline - time.monotonic()))
        # EOF on the pty comes as the process exits; reap it (bounded).
        while self.child is not None and self.child.isalive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.child is not None and not self.child.isalive()

    # -- reading -------------------------------------------------------------------

    def pause_reading(self) -> None:
        if self.child is not None and self._reader is not None:
            self._reader.pause(self.child.child_fd)
        self.log.add_note(self.clock(), "stopped reading")

    def resume_reading(self) -> None:
        if self.child is not None and self._reader is not None:
            self._reader.resume(self.child.child_fd)
        self.log.add_note(self.clock(), "reading again")

    @property
    def last_output(self) -> float:
        """When the terminal last showed anything (monotonic; its start before that)."""
        return self._last_output

    def quiet_since(self, t: float) -> bool:
        """Whether the terminal has shown nothing since ``t`` (monotonic)."""
        return self._last_output <= t

    def _on_output(self, data: bytes) -> None:
        """What the pty reader read from this party's terminal; b"" when it closed."""
        t = self.clock()
        self._last_output = time.monotonic()
        if data and self.first_output is None:
            self.first_output = self._last_output
        if not data:
            if self._pending:
                self._record(t, self._pending)
                self._pending = ""
            with self.cond:
                self.eof = True
                self.cond.notify_all()
            return
        pending = self._pending + self._decoder.decode(data)
        *complete, self._pending = pending.split("\n")
        for line in complete:
            self._record(t, line)

    def _record(self, t: float, raw: str) -> None:
        fresh: list[Token] = []
        shown = visible_lines(raw)
        for text in shown:
            fresh.extend(self.log.add_received(t, text, self.known_crcs))
        with self.cond:
            self._received_keys.update(tok.key for tok in fresh)
            for tok in fresh:
                if tok.kind == MESSAGE:
                    self._messages_from[tok.sender] = self._messages_from.get(tok.sender, 0) + 1
            self._text_seen.extend(shown)
            self.cond.notify_all()

    def wait_messages(self, sender: str, count: int, deadline: float) -> bool:
        """Wait until ``count`` counted messages from ``sender`` have arrived."""
        with self.cond:
            return (
                bool(
                    self.cond.wait_for(
                        lambda: self._messages_from.get(sender, 0) >= count or self.eof,
                        timeout=max(0.0, deadline - time.monotonic()),
                    )
                )
                and self._messages_from.get(sender, 0) >= count
            )

    def heard_messages(self, sender: str) -> int:
        with self.cond:
            return self._messages_from.get(sender, 0)

    def not_received(self, keys: set[tuple[str, int]]) -> set[tuple[str, int]]:
        """Those of ``keys`` that have not arrived (a look costs ``len(keys)``)."""
        with self.cond:
            return keys - self._received_keys

    def count_from(self, keys: set[tuple[str, int]]) -> int:
        with self.cond:
            return len(keys & self._received_keys)

    def wait_tokens(self, keys: set[tuple[str, int]], deadline: float) -> bool:
        """Wait until every token in ``keys`` has arrived (or the deadline passes)."""
        with self.cond:
            return (
                self.cond.wait_for(
                    lambda: keys <= self._received_keys or self.eof,
                    timeout=max(0.0, deadline - time.monotonic()),
                )
                and keys <= self._received_keys
            )

    def wait_heard_any(self, keys: set[tuple[str, int]], deadline: float) -> bool:
        """Wait until one of ``keys`` has arrived (or the deadline passes)."""
        with self.cond:
            return self.cond.wait_for(
                lambda: not keys.isdisjoint(self._received_keys) or self.eof,
                timeout=max(0.0, deadline - time.monotonic()),
            ) and not keys.isdisjoint(self._received_keys)

    def wait_text(self, needle: str, deadline: float) -> bool:
        """Wait until a visible line contains ``needle`` (project-specific expectations)."""
        with self.cond:
            return bool(
                self.cond.wait_for(
                    lambda: any(needle in s for s in self._text_seen) or self.eof,
                    timeout=max(0.0, deadline - time.monotonic()),
                )
            ) and any(needle in s for s in self._text_seen)

    def seen_text(self, needle: str) -> bool:
        with self.cond:
            return any(needle in s for s in self._text_seen)

    def text_with(self, needle: str) -> str | None:
        """The first visible line containing ``needle``, if one arrived."""
        with self.cond:
            return next((s for s in self._text_seen if needle in s), None)

    # -- writing -------------------------------------------------------------------

    def _write_raw(self, data: bytes, deadline: float) -> bool:
        """Write all of ``data`` to the terminal; False if the party died or time ran out.

        Error handling: a client that stops reading its terminal makes the pty buffer
        fill; the write then waits (select) until the deadline instead of blocking forever.
        """
        if self.child is None:
            return False
        fd = self.child.child_fd
        view = memoryview(data)
        with self._write_lock:
            while view:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.eof:
                    return False
                try:
                    if not ready(fd, select.POLLOUT, min(remaining, 0.5)):
                        continue
                    n = os.write(fd, view)
                except BlockingIOError:
                    continue
                except OSError:
                    return False
                view = view[n:]
        return True

    def send(self, token: Token, deadline: float) -> bool:
        """Type one token as a line; record when the line was handed over."""
        ok = self._write_raw(token.encode().encode() + b"\n", deadline)
        if ok:
            self.log.add_sent(self.clock(), token)
        return ok

    def send_block(self, prefix: bytes, tokens: list[Token], deadline: float) -> bool:
        """Hand ``prefix`` and the lines of ``tokens`` over in ONE write (a paste, a pipe);
        every token is recorded as sent when the write completes."""
        data = prefix + b"".join(tok.encode().encode() + b"\n" for tok in tokens)
        ok = self._write_raw(data, deadline)
        if ok:
            t = self.clock()
            if prefix:
                self.log.add_sent_raw(t, f"{len(prefix)} bytes before the lines below, same write")
            for tok in tokens:
                self.log.add_sent(t, tok)
        return ok

    def send_text(self, text: str, deadline: float) -> bool:
        ok = self._write_raw(text.encode() + b"\n", deadline)
        if ok:
            self.log.add_sent_raw(self.clock(), text)
        return ok

    def send_bytes(self, data: bytes, deadline: float, label: str) -> bool:
        ok = self._write_raw(data, deadline)
        if ok:
            self.log.add_sent_raw(self.clock(), label)
        return ok
