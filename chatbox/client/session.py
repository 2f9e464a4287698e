"""The client's network side: one session with a chat box, from connect to exit code.

Full duplex with plain blocking I/O, so it behaves the same everywhere (Windows has no
select() on standard input): a receiving thread reads the socket and hands complete lines
to the console, while the main thread reads what the user types and sends it. Neither
ever waits for the other. How lines are read and drawn is the consoles' business
(`chatbox.client.consoles`); this module owns the connection and how a session ends.

Ending is the delicate part, because a line must never be lost and the exit code must
say what happened:

- the user ends it (`/quit`, end of input, Ctrl-C): everything read so far is sent, then
  `/quit`, then our half of the connection is closed, and the client waits for the server
  to close its half - proof that the server has taken every line. Exit 0.
- the server ends it, or the network does: one line saying so, exit 1. The receiving
  thread notices first and interrupts the main thread's blocking read (`Console.hang_up`).

Which of the two happened is decided under one lock (`Session._lock`), so a server that
closes right as the user quits is never reported as a failure, nor the other way round.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import re
import socket
import threading
import time

from chatbox import protocol
from chatbox.client.consoles import (
    Console,
    Hangup,
    keep_signals_off_this_thread,
    signals_held,
)
from chatbox.client.reconnect import Reconnector

# A server that neither answers nor refuses within this time is unreachable for a person.
CONNECT_TIMEOUT = 10.0
# How long --name waits for the server to accept or refuse the name before going on
# anyway: a server that does not speak this protocol's /nick never answers.
NICK_TIMEOUT = 5.0
# How long to wait, by default, after /quit, for the server to close: it has to take every
# line we sent first (10,000 from a pipe), so be generous; only a broken server takes this
# long, or a relay that never closes on /quit (--quit-timeout shortens the wait for those).
QUIT_TIMEOUT = 30.0
RECV_SIZE = 65536
# A server that sends bytes without ever a newline must not grow our memory without bound:
# past this much, what has arrived is shown as a line of its own.
MAX_PARTIAL = 1 << 20

# After this long without sending anything, the client sends a bare newline: servers
# ignore empty lines, and this one closes a connection silent for --idle-timeout (5 min).
KEEPALIVE_INTERVAL = 60.0
KEEPALIVE_LINE = b"\n"

QUIT_LINE = b"/quit\n"
RESUME_LINE = b"/resume"
# The place asked for after a connection that ended before the server's first `[id]`
# mark (a server stopped right after we joined, before it read our /resume): an ID that
# is before everything on a single server and in a cluster, so the server replays all it
# keeps and nothing said while we were away is lost; what we had shown is left out.
NO_PLACE = b"0-0"
# Public lines shown since the last [id] mark, kept to leave them out of the replay after
# a reconnect; marks come once per server turn, so this bound is never reached in practice.
MAX_UNCONFIRMED = 10_000
_PUBLIC = (b"<", b"* <")
# After a failover in a cluster the dead node holds our name until its lease ends: the
# client asks for it again this often, this many times, showing the first refusal only.
RECLAIM_INTERVAL = 1.0
RECLAIM_TRIES = 30
_END_OF_HISTORY = protocol.notice("end of history")[:-1]
# Errors that mean no replay is coming: a server that does not know /resume (or our ID),
# a cluster node that cannot reach Redis now.
_NO_REPLAY = (b"! unknown command '/resume'", b"! usage: /resume", b"! cluster unavailable")
# A line that ends the session; commands are case-insensitive on the wire.
_QUIT = re.compile(rb"^/quit(?:[ \t\r].*)?$", re.MULTILINE | re.IGNORECASE)


class ConnectError(Exception):
    """The server could not be reached; the message is one line naming host and port."""


def connect(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """A connected, blocking TCP socket to HOST:PORT (every address HOST resolves to is tried).

    Error handling: every failure - unknown host, refused, unreachable, no answer - is one
    `ConnectError` whose message names host and port.
    """
    where = f"cannot connect to {host} port {port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        raise ConnectError(f"{where}: unknown host ({exc.strerror})") from None
    except TimeoutError:
        raise ConnectError(f"{where}: no answer within {timeout:g} s") from None
    except ConnectionRefusedError:
        raise ConnectError(f"{where}: connection refused (is the server running?)") from None
    except OSError as exc:
        raise ConnectError(f"{where}: {describe(exc)}") from None
    sock.settimeout(None)
    # Each typed line should leave at once; pipes are batched by the caller instead.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def describe(exc: OSError) -> str:
    """An OSError as a short lower-case phrase: 'connection reset by peer'."""
    text = exc.strerror or (errno.errorcode.get(exc.errno, "") if exc.errno else "") or str(exc)
    return text[:1].lower() + text[1:] if text else type(exc).__name__


class Session:
    """One connection from connect to exit code.

    Resource handling: owns the socket and closes it in `run`, whatever happens; the
    receiving thread is a daemon, so a wedged read can never keep the process alive.
    """

    def __init__(
        self,
        sock: socket.socket,
        console: Console,
        name: str | None,
        quit_timeout: float = QUIT_TIMEOUT,
        keepalive: float = KEEPALIVE_INTERVAL,
        received: bytes = b"",
        reconnector: Reconnector | None = None,
    ) -> None:
        """``received``: what the server said before the session began (while logging
        in), shown first. ``reconnector``: where to go on when the server goes away
        (--resume, --fallback), resuming where this client was; None: the session ends."""
        self.sock = sock
        self._received = received
        self.console = console
        self.name = name
        self.quit_timeout = quit_timeout
        self.keepalive = keepalive
        # Guards the choice between "we quit" and "the server closed on us".
        self._lock = threading.Lock()
        self._quitting = False
        # One sender at a time (the user's lines, the keepalive), so lines never mix.
        self._send_lock = threading.Lock()
        self._sent_at = time.monotonic()
        self._ended = threading.Event()
        self._end_reason = "connection closed by server"
        self._end_clean = True
        # Watched from the first byte: the receiver starts before /nick is sent, and a
        # quick server's answer must not slip past unwatched.
        self._nick_pending = name is not None
        self._nick_answered = threading.Event()
        self._nick_refusal: str | None = None
        self._receiver = threading.Thread(target=self._receive, name="receive", daemon=True)
        # Resuming: the last place the server marked (`[id] ID`), the public lines shown
        # since (in the room's order), those of them the replay after a reconnect has
        # yet to reach (it leaves them out), and the name to take back there (the latest
        # one the server accepted).
        self._reconnector = reconnector
        self._place: bytes | None = None
        self._unconfirmed: list[bytes] = []
        self._already_shown: collections.deque[bytes] = collections.deque()
        # After a reconnect, the live lines that arrive before the replay (said between
        # our arrival and our /resume reaching the server) wait for it to end, so that
        # everything is shown in the room's order; None when not waiting.
        self._held: list[bytes] | None = None
        # A cluster node behind the one we came from replays nothing and then sends live
        # what follows our place: the lines we were shown after it come again, these.
        self._replay_lags = False
        self._coming_again: collections.deque[bytes] = collections.deque()
        self._name_now = name
        self._reclaiming: str | None = None
        self._reclaim_tries = 0

    def run(self) -> int:
        """Chat until the user or the server ends it; the process's exit status."""
        try:
            return self._run()
        except KeyboardInterrupt:
            return 130  # interrupted again while already ending
        finally:
            self.sock.close()

    def _run(self) -> int:
        try:
            # Ctrl-C or SIGTERM wait until the thread exists, or `_quit` would wait for a
            # receiver that never started.
            with signals_held():
                self._receiver.start()
                if self.keepalive > 0:
                    threading.Thread(target=self._keep_alive, name="keepalive", daemon=True).start()
            if self._reconnector is not None:
                self._send(RESUME_LINE + b"\n")  # from now on the server marks our place
            if self.name is not None and not self._claim_name(self.name):
                self._quit(QUIT_LINE)
                return 1
            quit_line = self._pump()
        except KeyboardInterrupt:
            quit_line = QUIT_LINE
        except Hangup:
            return self._report_end()
        except OSError as exc:
            return self._report_end(exc)
        finally:
            # Nothing more is read: the terminal goes back to its own mode for the wait.
            self.console.close()
        try:
            return self._quit(quit_line)
        except KeyboardInterrupt:
            return 130  # a second Ctrl-C: stop waiting for the server

    def _claim_name(self, name: str) -> bool:
        """Send /nick NAME and wait for the verdict; False (reported) if it was refused."""
        self._send(b"/nick " + name.encode("utf-8", "surrogateescape") + b"\n")
        self.console.wait_for(self._nick_answered, NICK_TIMEOUT)
        refusal = self._nick_refusal
        if refusal is None:
            if self._ended.is_set():
                raise Hangup
            return True
        self.console.status(f"cannot use the name {name!r}: {refusal}")
        return False

    def _pump(self) -> bytes | None:
        """Send what the user types until they quit; the quit line still to send, if any."""
        while True:
            lines = self.console.read_line()
            if lines is None:
                return QUIT_LINE
            match = _QUIT.search(lines)
            if match is None:
                self._send(lines)
                continue
            # Everything before /quit is said; /quit itself goes out in `_quit`, and the
            # rest of the input is not read, as a person typing /quit would expect.
            end = match.end() + 1
            self._send(lines[: match.start()])
            return lines[match.start() : end]

    def _send(self, data: bytes) -> None:
        if data:
            with self._send_lock:
                self.sock.sendall(data)
                self._sent_at = time.monotonic()

    def _keep_alive(self) -> None:
        """Send a bare newline whenever nothing was sent for `keepalive` seconds, until
        the session ends or we quit (after /quit one more newline is harmless, and once
        our half is closed the send fails and this ends)."""
        keep_signals_off_this_thread()
        wait = self.keepalive
        while not self._ended.wait(wait):
            with self._send_lock:
                if self._quitting:
                    return
                wait = self._sent_at + self.keepalive - time.monotonic()
                if wait > 0:
                    continue
                try:
                    self.sock.sendall(KEEPALIVE_LINE)
                except OSError:
                    return  # the receiving thread reports the end
                self._sent_at = time.monotonic()
                wait = self.keepalive

    def _quit(self, quit_line: bytes | None) -> int:
        """Say goodbye and wait until the server has closed; the exit status."""
        with self._lock:
            self._quitting = not self._ended.is_set()
            if self._reconnector is not None:
                self._reconnector.stop.set()
        if not self._quitting:
            return self._report_end()
        try:
            self._send(quit_line or b"")
            # Our half closed: a server that ignores /quit still sees the end of input.
            with self._send_lock:
                self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            return self._report_end(exc)
        if not self.console.wait_for(self._ended, self.quit_timeout):
            self.console.status(
                f"the server did not close the connection within {self.quit_timeout:g} s"
            )
            return 1
        if not self._end_clean:
            self.console.status(self._end_reason)
            return 1
        return 0

    def _report_end(self, exc: OSError | None = None) -> int:
        """The server or the network ended the session: say so once; exit status 1."""
        # A failed send usually means the receiver is about to see why; let it tell.
        if not self._ended.wait(1.0 if exc is not None else 0) and exc is not None:
            self._end_reason = f"connection lost: {describe(exc)}"
        self.console.status(self._end_reason)
        return 1

    # --- the receiving thread ---------------------------------------------------------

    def _reclaim_later(self) -> bool:
        """Ask for our name again in a while (the dead node's claim lapses with its
        lease); True when giving up."""
        name = self._reclaiming
        if name is None or self._reclaim_tries >= RECLAIM_TRIES:
            self._reclaiming = None
            return True
        self._reclaim_tries += 1

        def ask() -> None:
            keep_signals_off_this_thread()
            if self._reclaiming != name or self._ended.is_set() or self._quitting:
                return
            with contextlib.suppress(OSError):
                self._send(b"/nick " + name.encode("utf-8", "surrogateescape") + b"\n")

        timer = threading.Timer(RECLAIM_INTERVAL, ask)
        timer.daemon = True
        timer.start()
        return False

    def _receive(self) -> None:
        keep_signals_off_this_thread()
        try:
            self._receive_until_closed()
        finally:
            # Always, even after a bug above: the main thread must learn the session ended.
            self._end_receiving()

    def _receive_until_closed(self) -> None:
        while True:
            self._receive_one_connection(self._received)
            if not self._reconnected():
                return

    def _reconnected(self) -> bool:
        """The connection ended without our /quit: go on on the next server (--resume,
        --fallback), asking for what was said since our place; False to end."""
        if self._reconnector is None:
            return False
        with self._lock:
            if self._quitting:
                return False
        if self._held:
            # The replay they waited for never came (the server went away again).
            self.console.show(b"".join(line + b"\n" for line in self._held))
        # Everything shown since the place, in the room's order, for the next replay
        # (from the same place) to leave out: if a replay was under way, what it had
        # replayed, then the lines shown before that it had not reached, then the live
        # lines held for it; after a lagging node's replay, the lines it had still to
        # send again.
        self._unconfirmed += self._coming_again
        self._unconfirmed += self._already_shown
        self._unconfirmed += self._held or ()
        self._coming_again.clear()
        self._already_shown.clear()
        self._held = None
        # The user's lines wait meanwhile: they go to the new server, not into the void.
        with self._send_lock:
            self.sock.close()
            outcome = self._reconnector.next()
            if isinstance(outcome, str):
                self._end_reason += f"; cannot reconnect: {outcome}"
                return False
            self.sock, self._received, address = outcome
            greeting = b""
            if self._name_now is not None:
                greeting += b"/nick " + self._name_now.encode("utf-8", "surrogateescape") + b"\n"
            place = b" " + (NO_PLACE if self._place is None else self._place)
            try:
                self.sock.sendall(greeting + RESUME_LINE + place + b"\n")
            except OSError as exc:
                self._end_reason = f"connection lost: {describe(exc)}"
                self._received = b""
                return True  # the next turn of the receiving loop sees it end, and goes on
            self._already_shown = collections.deque(self._unconfirmed)
            self._unconfirmed = []
            self._held = []
            self._reclaiming = self._name_now
            self._reclaim_tries = 0
            self._end_reason = "connection closed by server"
            self._end_clean = True
        self.console.status(f"* reconnected to {address}")
        return True

    def _receive_one_connection(self, data: bytes) -> None:
        partial = b""
        self._received = b""
        try:
            while True:
                if not data:
                    data = self.sock.recv(RECV_SIZE)
                    if not data:
                        break
                partial += data
                data = b""
                cut = partial.rfind(b"\n") + 1
                if cut == 0 and len(partial) > MAX_PARTIAL:
                    partial += b"\n"
                    cut = len(partial)
                if cut:
                    block, partial = partial[:cut], partial[cut:]
                    self._deliver(block)
        except OSError as exc:
            self._end_reason = f"connection lost: {describe(exc)}"
            self._end_clean = False
        if partial:
            # The server's last words, even without a newline.
            self._deliver(partial + b"\n", cut=True)

    def _end_receiving(self) -> None:
        with self._lock:
            self._ended.set()
            self._nick_answered.set()
            expected = self._quitting
        self.console.wake()  # the main thread may be in `wait_for` (name, quit)
        if not expected and not self.console.hang_up():
            # The main thread's read cannot be interrupted on this platform: end here.
            self.console.status(self._end_reason)
            os._exit(1)

    def _deliver(self, block: bytes, cut: bool = False) -> None:
        """Show a block of lines; ``cut``: its last line lost its end with the connection."""
        if self._reconnector is not None:
            block = self._follow_place(block, cut)
            if not block:
                return
        self.console.show(block)
        if self._nick_pending:
            self._watch_nick(block)

    def _follow_place(self, block: bytes, cut: bool = False) -> bytes:
        """Take the server's `[id]` marks out of a block (they are for us, not the user),
        note the lines shown since the last one, and leave out of a replay the lines
        already shown before the reconnect; what remains is shown."""
        shown: list[bytes] = []
        lines = block[:-1].split(b"\n")
        if cut and (
            protocol.ID_PREFIX.startswith(lines[-1]) or lines[-1].startswith(protocol.ID_PREFIX)
        ):
            # A mark cut short by the break is no place: its ID may be cut too, and
            # `a1b2.12` read as `a1b2.1` names an older place, whose replay would show
            # eleven blocks again. Nor is it a line for the user.
            lines.pop()
        for line in lines:
            if line.startswith(protocol.ID_PREFIX):
                self._place = line[len(protocol.ID_PREFIX) :]
                self._unconfirmed.clear()
                if self._reconnector is not None:
                    self._reconnector.settled()
                continue
            if line.startswith(protocol.HISTORY_PREFIX) and self._held is not None:
                # A line of the replay we wait for: shown now or before the break (then
                # left out), it is shown since the place either way.
                replayed = line[len(protocol.HISTORY_PREFIX) :]
                self._note_shown(replayed)
                if self._already_shown and replayed == self._already_shown[0]:
                    self._already_shown.popleft()
                    continue
            elif self._held is not None and line.startswith(b"* history: "):
                head = protocol.RESUME_HEAD_LINE.match(line.decode("utf-8", "replace"))
                if head is not None and head.group(1):
                    # The node we came back to was behind: the first of the live lines
                    # it sent us meanwhile are ones we had shown before.
                    del self._held[: int(head.group(1))]
                # Nothing since our place, and nothing missing: on a single server the
                # lines shown since it would be replayed, so only a node behind sends
                # this while we have some (it has not yet delivered our place).
                self._replay_lags = line.startswith(b"* history: 0 lines since ")
                if head is not None and self._place is not None and " (" in head.group(0):
                    # `(older ones are no longer kept)`: the replay does not reach back
                    # to our place, and what is missing is the oldest, the lines right
                    # after it - those we have shown. Left out by their text, equal
                    # lines said later, which we never saw, would go instead.
                    self._unconfirmed += self._already_shown
                    self._already_shown.clear()
                    self._replay_lags = False
            elif line == _END_OF_HISTORY or (
                self._held is not None and line.startswith(_NO_REPLAY)
            ):
                # The replay is over (or refused): then what arrived live meanwhile.
                if self._replay_lags and line == _END_OF_HISTORY:
                    self._coming_again = self._already_shown
                    self._already_shown = collections.deque()
                self._already_shown.clear()
                self._replay_lags = False
                shown.append(line)
                for held in self._held or ():
                    if not self._came_again(held):
                        shown.append(held)
                self._held = None
                continue
            elif line.startswith(_PUBLIC):
                if self._held is not None and len(self._held) < MAX_UNCONFIRMED:
                    self._held.append(line)  # noted as shown once it is
                    continue
                if self._came_again(line):
                    continue
            elif self._reclaiming is not None and line[2:].decode(
                "utf-8", "replace"
            ) == protocol.name_taken(self._reclaiming):
                if not self._reclaim_later() and self._reclaim_tries > 1:
                    continue  # said once is enough
            else:
                renamed = protocol.YOU_RENAMED_LINE.match(line.decode("utf-8", "replace"))
                if renamed is not None:
                    self._name_now = renamed.group(1)
                    self._reclaiming = None
            shown.append(line)
        return b"".join(line + b"\n" for line in shown)

    def _came_again(self, line: bytes) -> bool:
        """Note a live public line as shown since our place; True if it had been shown
        before the break (it comes again from a node that was behind: leave it out).
        They come first and in order, so the first other line ends the wait for them."""
        self._note_shown(line)
        if self._coming_again and line == self._coming_again[0]:
            self._coming_again.popleft()
            return True
        self._coming_again.clear()
        return False

    def _note_shown(self, line: bytes) -> None:
        self._unconfirmed.append(line)
        if len(self._unconfirmed) > MAX_UNCONFIRMED:
            del self._unconfirmed[: MAX_UNCONFIRMED // 2]

    def _watch_nick(self, block: bytes) -> None:
        assert self.name is not None
        for line in block.decode("utf-8", "replace").split("\n"):
            verdict = protocol.nick_verdict(self.name, line)
            if verdict is None:
                continue
            accepted, said = verdict
            if not accepted:
                self._nick_refusal = said
            self._nick_pending = False
            self._nick_answered.set()
            self.console.wake()
            return
