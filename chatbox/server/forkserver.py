"""The fork server: a small process, made at start-up, that forks every worker.

Why: a worker forked from the hub shares the hub's whole heap copy-on-write, and keeps
every page of it alive for as long as it runs - the queues the hub held at that moment
included. Fifteen idle clients connecting during a flood pinned 500 MB that way. The
fork server is a fresh interpreter the hub starts at start-up (`_spawn`), with only
the workers' modules imported (`Setup`), does nothing but fork, and so every worker
starts as a copy of a small, clean process: cheap to fork (a small address space; a
plain libc fork, `_fast_fork`) and owning nothing of the hub's.

How: the hub and the fork server share one Unix ``SOCK_SEQPACKET`` socketpair (each
message arrives whole). For each new client the hub sends the client socket and the
worker's end of its channel (and, with TLS, the worker's end of the relay the hub
writes the client's output to) (SCM_RIGHTS, `socket.send_fds`); the fork server forks a
worker that serves them, closes its own copies and answers with the worker's pid (or
the errno of a failed fork). It reaps its workers and tells the hub each one's end, so
the hub knows which pids still live. The hub learns that a worker's *client* is done
the way it always did: the worker's channel end closes.

The hub never waits for an answer: it sends the requests (`ForkServer.submit`), goes
on relaying, and lets a client into the room when its answer comes (`answers`; the
control socket is in the hub's selector). So in a connection storm the fork server
forks while the hub accepts and welcomes, on the other core - when the hub waited for
each batch of 64, it spent 60% of a 1,000-client storm blocked on those answers.

Signals: the fork server and its workers ignore SIGINT, SIGTERM and SIGHUP. A signal
to the whole process group (Ctrl-C, systemd, ``kill -TERM -PGID``) thus reaches the
hub alone in effect, and the hub ends everyone in order: each client is told
`* server shutting down`, its channel is shut, its worker ends.

Ending: the hub sends ``quit`` with a deadline; the fork server reaps its workers as
they end, kills what is left at the deadline, and exits. If the hub goes away, the
fork server sees its socket close and does the same, so nothing outlives the server.
If the fork server dies, the hub sees its socket close: it logs it, refuses new clients
with `! server busy`, keeps serving everyone connected, and - a child subreaper where
Linux allows - reaps and, at shutdown, kills the orphaned workers itself.

Wire format: `struct` ``=cIq`` messages - a kind, a request number and a value - one
per packet from the hub, up to `REPORTS_PER_PACKET` per packet from the fork server:

- hub -> fork server: ``S`` (start; the value is unused, two or three descriptors ride
  along: client, channel, relay),
  ``Q`` (quit; the value is the milliseconds it may wait for its workers);
- fork server -> hub: ``R`` (ready, once, first), ``P`` (started: the value is the
  pid), ``E`` (not started: the value is the errno), ``X`` (a worker ended: the value
  is its pid).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub: the C half of signal
import collections
import contextlib
import errno
import gc
import itertools
import logging
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence

from chatbox.server import logs

log = logging.getLogger("chatbox.forkserver")

# What the fork server and its workers are called in /proc/PID/comm (ps, top).
FORK_SERVER_COMM = "chatbox-forker"
WORKER_COMM = "chatbox-worker"

# How long the hub waits for the fork server to answer one start. Forking a small
# process takes well under a millisecond; this is only the bound that keeps a stuck
# fork server (stopped, swapped out) from hanging the hub. Past it the fork server is
# taken for dead.
ANSWER_TIMEOUT = 5.0
# A fork server that is runnable (it has work and waits only for a CPU, as on a machine
# crowded with processes starting at once) is given this long before it is given up on:
# being starved is not being stuck.
STARVED_TIMEOUT = 30.0
# How often an overdue but runnable fork server is looked at again.
OVERDUE_LOOK = 0.25

# How long a fork server whose hub has vanished waits for the workers to see their
# channels close before it kills them.
ORPHAN_GRACE = 2.0

_CLEAN_EXIT = "it exited"

_MESSAGE = struct.Struct("=cIq")
# Request numbers, shared by every fork server of the process, so that the answers of
# one that was replaced never pass for another's (they wrap at 2**32, the wire's size).
_request_numbers = (n & 0xFFFFFFFF for n in itertools.count(1))
# The fork server's reports go several to a packet: up to this many, sent once it has
# taken every request waiting or forked REPORT_EVERY workers since it last sent. The hub
# then wakes once per few workers, not once per worker, and lets them in together.
REPORTS_PER_PACKET = 64
REPORT_EVERY = 16
_PACKET_SIZE = _MESSAGE.size * REPORTS_PER_PACKET
_START, _QUIT = b"S", b"Q"
_READY, _STARTED, _FAILED, _ENDED = b"R", b"P", b"E", b"X"

# The signals that end a server: only the hub acts on them, each as a graceful shutdown
# (everyone is told). SIGHUP too: a closing terminal sends it to the whole group.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)

# A worker's sockets: the client, its channel to the hub and, with TLS, its relay.
Sockets = tuple[socket.socket, socket.socket, socket.socket | None]
Serve = Callable[[socket.socket, socket.socket, socket.socket | None], None]
# What the fork server runs once, before its first fork, to get its `Serve`: it imports
# what the workers need (so no worker imports anything) and builds their configuration
# (a TLS context). Picklable - a module-level function, or a `functools.partial` of one
# with picklable arguments - so that a fresh interpreter can be given it.
Setup = Callable[[], Serve]

# How long a fresh fork server may take to say it is ready: an interpreter's start and
# the workers' imports take ~50 ms, but far longer on a machine crowded with starts.
READY_TIMEOUT = 30.0

# What the fresh interpreter runs: the hub's import path (the folder this chatbox is in
# first, so that it finds the same chatbox), then the fork server. argv: the descriptor
# of its socket, the path.
_CHATBOX_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = (
    "import sys; sys.path[:] = sys.argv[2:]; "
    "from chatbox.server.forkserver import _boot; _boot(int(sys.argv[1]))"
)


class ForkServerGone(OSError):
    """The fork server is not there (any more): no worker can be started."""

    def __init__(self, why: str) -> None:
        super().__init__(errno.EAGAIN, f"no fork server: {why}")


class ForkServer:
    """The hub's handle on its fork server: start workers, learn of their end, stop.

    ``setup()`` is run once in the fork server; the ``serve(client, channel, relay)``
    it returns is what each worker runs. The fork server is a fresh interpreter
    (`_start`) that has imported only what ``setup`` imports: none of the hub's modules
    or memory, at any time - the first fork server and any replacement alike. Where no
    interpreter can be started (no ``sys.executable``; ``setup`` does not pickle), it is
    forked from the caller and inherits it as it is at that moment.

    Resource handling: the fork server is the caller's child; `stop` ends it and
    every worker and reaps what is the caller's to reap. The caller keeps its own
    copies of the sockets it passes (the workers have theirs). Error handling: `start`
    gives an `OSError` for each worker that could not be started (the fork failed, or
    the fork server is gone or stuck: it is then killed, logged once, and every later
    start fails at once).
    """

    def __init__(self, setup: Setup) -> None:
        hub_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        level = logging.getLogger().level
        try:
            self.fresh, pid = _start(hub_end, server_end, setup, level)
        except BaseException:
            hub_end.close()
            server_end.close()
            raise
        server_end.close()
        hub_end.setblocking(False)
        self.pid = pid
        self._ctl = hub_end
        # Requests not answered yet, the answers not taken yet, and when the fork server
        # last answered (or was first asked, since it last had nothing to do).
        self._pending: set[int] = set()
        self._unsent: collections.deque[tuple[bytes, list[int]]] = collections.deque()
        self._answers: list[tuple[int, OSError | None]] = []
        self._progress_at = 0.0
        self._cpu_seen = -1  # its CPU time (clock ticks) at the last look since it answered
        self._received: collections.deque[tuple[bytes, int, int]] = collections.deque()
        self._gone = ""  # why the fork server is gone, once it is
        self._reaped = False
        self._stopping = False
        self.workers: set[int] = set()  # started and not known to have ended
        # Orphans: should the fork server die, its workers become ours to reap (and to
        # kill at the end), not init's.
        self._subreaper = _become_subreaper()
        # Ready before the server says it listens: set up, named, taking requests.
        if self._next(time.monotonic() + READY_TIMEOUT) is None and not self._gone:
            self._lost(f"it did not start in {READY_TIMEOUT:g} s")

    @property
    def gone(self) -> bool:
        """It has died or was given up on: it starts no more workers."""
        return bool(self._gone)

    @property
    def control(self) -> socket.socket | None:
        """The socket its answers come on, for the hub's selector (None once gone)."""
        return None if self._gone else self._ctl

    def submit(self, pairs: Sequence[Sockets]) -> list[int | OSError]:
        """Ask for a worker for each (client, channel, relay), without waiting: for
        each, the request's number (its answer comes from `answers`), or why it could
        not be asked for (the fork server is gone). The caller keeps the sockets open
        until the answer: a request the socket has no room for yet goes later."""
        numbers: list[int | OSError] = []
        for sockets in pairs:
            if self._gone:
                numbers.append(ForkServerGone(self._gone))
                continue
            number = next(_request_numbers)
            if not self._pending:
                self._progress_at, self._cpu_seen = time.monotonic(), -1
            self._pending.add(number)
            fds = [s.fileno() for s in sockets if s is not None]
            self._unsent.append((_MESSAGE.pack(_START, number, 0), fds))
            numbers.append(number)
        self._send_unsent()
        return numbers

    def answers(self) -> list[tuple[int, OSError | None]]:
        """The answers that came since the last call, without waiting: (request
        number, None if its worker started or why not). A fork server that has
        answered nothing for `ANSWER_TIMEOUT` while requests wait is given up on:
        every request still waiting is answered with `ForkServerGone`."""
        self.poll()
        self._send_unsent()
        if self._pending:
            silent = time.monotonic() - self._progress_at
            if silent >= STARVED_TIMEOUT or (silent >= ANSWER_TIMEOUT and not self._runnable()):
                self._lost(f"it did not answer for {silent:.0f} s")
        answers, self._answers = self._answers, []
        return answers

    def answer_deadline(self) -> float | None:
        """When to look at the fork server again if it answers nothing more (monotonic;
        `answers` gives it up on then, unless it is runnable, only starved), or None
        when no request waits."""
        if not self._pending:
            return None
        due = self._progress_at + ANSWER_TIMEOUT
        now = time.monotonic()
        if now < due:
            return due
        return min(now + OVERDUE_LOOK, self._progress_at + STARVED_TIMEOUT)

    def _runnable(self) -> bool:
        """Whether the fork server is working, only slowly (Linux: its state and CPU
        time in /proc): running or waiting for a CPU, in a system call that cannot be
        interrupted (a fork on a machine short of memory), or it used CPU since the
        last look (one look can catch a working process asleep for an instant). Not
        when it is stopped, or asleep with requests unanswered and no CPU used."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
            state, cpu = fields[0], int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            return False
        # The first look since the last answer only takes the measure (the next look
        # is OVERDUE_LOOK later).
        before, self._cpu_seen = self._cpu_seen, cpu
        return state in (b"R", b"D") or cpu != before

    def start(self, pairs: Sequence[Sockets]) -> list[OSError | None]:
        """Fork a worker for each (client, channel, relay) and wait for the answers;
        for each, None if it started, or why not."""
        numbers = self.submit(pairs)
        wanted = {number for number in numbers if isinstance(number, int)}
        answers: dict[int, OSError | None] = {}
        others: list[tuple[int, OSError | None]] = []  # for requests submitted before
        while wanted - answers.keys():
            self._collect(self.answer_deadline())
            for number, error in self.answers():
                if number in wanted:
                    answers[number] = error
                else:
                    others.append((number, error))
        self._answers = others + self._answers
        return [
            number if isinstance(number, OSError) else answers.get(number) for number in numbers
        ]

    def _send_unsent(self) -> None:
        """Send the requests waiting for room in the socket, as many as it takes now.
        Never waits: the rest go once answers show the fork server took some (a
        storm's 1,000 requests do not fit; waiting for room blocked the hub)."""
        while self._unsent and not self._gone:
            message, fds = self._unsent[0]
            try:
                socket.send_fds(self._ctl, [message], fds)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lost(f"its socket failed ({exc})")
                return
            self._unsent.popleft()

    def poll(self) -> None:
        """Take what the fork server said (ended workers; its own end) without blocking,
        and reap orphaned workers once it is gone."""
        if not self._gone:
            while self._collect(None):
                pass
        if not self._gone:
            # Its death wakes the hub by SIGCHLD (it is the hub's child), and the close
            # of its socket is not always visible yet when the hub looks.
            status = self._reap_fork_server(block=False)
            if status is not None:
                self._lost(_describe(status))
        if self._gone:
            self._reap_orphans()

    def stop(self, deadline: float) -> None:
        """End the fork server and every worker by ``deadline`` (monotonic): workers
        still running then are killed."""
        self._stopping = True
        self._unsent.clear()  # never sent: answered as not started once it is gone
        if not self._gone:
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000) - 50)
            with contextlib.suppress(OSError):
                self._ctl.send(_MESSAGE.pack(_QUIT, 0, wait_ms))
            # Answers still on the way count too: their workers are to be ended.
            while not self._gone and self._collect(deadline):
                pass
            if not self._gone:
                self._lost("it did not end in time")
        self._reap_fork_server(block=True)
        # Workers the fork server did not end (it died): ours now, if this process is
        # their subreaper. A pid that is not our child is left alone - it may be
        # another process's by now; its channel is shut, so a worker ends on its own.
        for pid in list(self.workers):
            try:
                ours = os.waitpid(pid, os.WNOHANG)[0] == 0
            except ChildProcessError:
                ours = False
            if ours:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            self.workers.discard(pid)
        self._ctl.close()

    # --- internals ----------------------------------------------------------------------

    def _collect(self, deadline: float | None) -> bool:
        """Take the next message (waiting until ``deadline``; None: not at all); a
        start answer goes to the answers. False when none came, or it is gone."""
        message = self._next(deadline)
        if message is None:
            return False
        kind, number, value = message
        if number in self._pending and kind in (_STARTED, _FAILED):
            self._pending.discard(number)
            self._progress_at, self._cpu_seen = time.monotonic(), -1
            if kind == _STARTED:
                self.workers.add(value)
                self._answers.append((number, None))
            else:
                error = OSError(value, f"cannot fork a worker: {os.strerror(value)}")
                self._answers.append((number, error))
        return True

    def _next(self, deadline: float | None) -> tuple[bytes, int, int] | None:
        """The next start answer, after taking every end report before it; None when
        nothing came by ``deadline`` (None: do not wait) or the fork server is gone."""
        while not self._gone:
            while self._received:
                kind, number, value = self._received.popleft()
                if kind == _ENDED:
                    self.workers.discard(value)
                    continue
                return kind, number, value
            try:
                data = self._ctl.recv(_PACKET_SIZE)
            except BlockingIOError:
                if deadline is None:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not _ready(self._ctl, select.POLLIN, remaining):
                    return None
                continue
            except OSError as exc:
                data, why = b"", f"its socket failed ({exc})"
            else:
                why = ""
            if not data or len(data) % _MESSAGE.size:
                why = why or self._exit_status()
                self._lost(why, expected=self._stopping and why == _CLEAN_EXIT)
                return None
            self._received.extend(_MESSAGE.iter_unpack(data))
        return None

    def _lost(self, why: str, expected: bool = False) -> None:
        """The fork server is gone, or as good as: make sure, and say so once (unless
        it ended as told)."""
        if self._gone:
            return
        self._gone = why
        # Whatever it was still asked for will never start.
        self._answers += [(number, ForkServerGone(why)) for number in sorted(self._pending)]
        self._pending.clear()
        self._unsent.clear()
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        self._reap_fork_server(block=True)
        if expected:
            return
        log.error(
            "the fork server (pid %d) is gone: %s",
            self.pid,
            self._gone,
        )

    def _exit_status(self) -> str:
        """How the fork server ended (it has closed its socket: it is ending)."""
        status = self._reap_fork_server(block=True)
        return "it ended" if status is None else _describe(status)

    def _reap_fork_server(self, block: bool) -> int | None:
        if self._reaped:
            return None
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self._reaped = True
            return None
        if pid == 0:
            return None
        self._reaped = True
        return status

    def _reap_orphans(self) -> None:
        # Peek first (WNOWAIT): the ended child may be another's - a newer fork server
        # whose handle reaps it - and must be left for it.
        while self.workers and self._subreaper:
            try:
                ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if ended is None or ended.si_pid not in self.workers:
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(ended.si_pid, 0)
            self.workers.discard(ended.si_pid)


def _describe(status: int) -> str:
    """A wait status, as the log says it."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    code = os.waitstatus_to_exitcode(status)
    return _CLEAN_EXIT if code == 0 else f"it exited with status {code}"


def _ready(sock: socket.socket, events: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(sock, events)
    return bool(poller.poll(timeout * 1000))


def _become_subreaper() -> bool:
    """Linux: make this process the reaper of its orphaned descendants."""
    pr_set_child_subreaper = 36
    try:
        import ctypes  # here, not at the top: the fork server and workers never need it

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _set_comm(name: str) -> None:
    """Name this process in /proc/PID/comm, so ps and top tell the roles apart."""
    # Bytes straight to the descriptor: a text-mode open() costs a fresh worker ~45
    # copy-on-write page faults (a quarter of a millisecond) in the codec machinery.
    with contextlib.suppress(OSError):
        fd = os.open("/proc/self/comm", os.O_WRONLY)
        try:
            os.write(fd, name.encode())
        finally:
            os.close(fd)


def _fast_fork() -> Callable[[], int]:
    """How the fork server forks: libc's fork(), where it can, rather than `os.fork`.

    Why: after a fork, `os.fork` does Python's child-side work - re-making the GIL,
    the import lock and every thread's state, running the at-fork hooks of threading
    and logging - which writes to some 190 pages of the copied heap: 190 copy-on-write
    faults, three quarters of a millisecond per worker, half of what a new worker cost.
    All of it exists for locks another thread may have held at the fork. The fork
    server has one thread and forks from its own loop, holding no lock, so a plain
    fork leaves the child as consistent as the parent. With any other thread (or no
    ctypes), it is `os.fork`.
    """
    try:
        if len(os.listdir("/proc/self/task")) != 1:
            return os.fork
        import ctypes  # here: only the fork server needs it

        # PyDLL: the GIL stays held across the call, so the child starts holding it.
        libc_fork = ctypes.PyDLL(None, use_errno=True).fork
    except (OSError, AttributeError, ImportError):
        return os.fork
    libc_fork.restype = ctypes.c_int
    libc_fork.argtypes = []

    def fork() -> int:
        pid = int(libc_fork())
        if pid < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return pid

    return fork


def _keep_only(fds: list[int]) -> None:
    """Close every descriptor but stdio and ``fds``: anything inherited and not owned
    (another client's socket, the listener) would keep a connection or a port open."""
    low = 0
    for fd in sorted({0, 1, 2, *fds}):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())


def _max_fd() -> int:
    try:
        import resource

        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        return 65536


# --- the fork server process --------------------------------------------------------------


def _start(
    hub_end: socket.socket, server_end: socket.socket, setup: Setup, level: int
) -> tuple[bool, int]:
    """Start the fork server on ``server_end``: (whether it is a fresh interpreter, its
    pid). The caller's ``server_end`` is closed by the caller."""
    try:
        payload = pickle.dumps((setup, level))
    except (pickle.PicklingError, TypeError, AttributeError):
        payload = b""
    if payload and sys.executable:
        return True, _spawn(hub_end, server_end, payload)
    pid = os.fork()
    if pid == 0:  # the fork server
        status = 1
        try:
            hub_end.close()
            signal.set_wakeup_fd(-1)
            _run(server_end, setup, level)
            status = 0
        except BaseException:  # the child must reach os._exit, whatever happened
            log.exception("fork server failed")
        finally:
            os._exit(status)
    return False, pid


def _spawn(hub_end: socket.socket, server_end: socket.socket, payload: bytes) -> int:
    """A fresh interpreter running the fork server on ``server_end``, given ``payload``
    (the pickled setup and log level) as its first message."""
    path = [_CHATBOX_ROOT, *(entry for entry in sys.path if entry != _CHATBOX_ROOT)]
    argv = [sys.executable, "-c", _BOOT, str(server_end.fileno()), *path]
    # Blocked from its first instruction on (the mask survives exec) until it ignores
    # them (`_run`): a Ctrl-C to the group while it starts must not end it.
    os.set_inheritable(server_end.fileno(), True)
    try:
        pid = os.posix_spawn(sys.executable, argv, os.environ, setsigmask=STOP_SIGNALS)
    finally:
        os.set_inheritable(server_end.fileno(), False)
    try:
        hub_end.send(payload)
    except OSError:
        pass  # it is gone already: the wait for its ready report says so
    return pid


def _boot(fd: int) -> None:
    """The fresh fork server's start (`_BOOT`): take the setup, then serve."""
    status = 1
    try:
        ctl = socket.socket(fileno=fd)
        setup, level = pickle.loads(ctl.recv(1 << 20))
        _run(ctl, setup, level)
        status = 0
    except Exception as exc:  # said in one line: the hub reports the end, with the status
        log.error("fork server failed: %s", exc)
    finally:
        os._exit(status)


def _run(ctl: socket.socket, setup: Setup, level: int) -> None:
    """The fork server's loop: fork a worker per request, reap them, end when told to
    (or when the hub is gone)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    # A fresh fork server starts with them blocked (`_spawn`); ignored now, they may come.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    wake_r, wake_w = socket.socketpair()
    _keep_only([ctl.fileno(), wake_r.fileno(), wake_w.fileno()])
    _set_comm(FORK_SERVER_COMM)
    logs.for_worker(level)
    serve = setup()
    # Frozen: the collector never walks (and so never copies) what the workers share.
    gc.freeze()
    for sock in (wake_r, wake_w, ctl):
        sock.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the poll below
    server = _Loop(ctl, serve, wake_r, _fast_fork())
    server.report_ready()
    server.run()


class _Loop:
    def __init__(
        self, ctl: socket.socket, serve: Serve, wake_r: socket.socket, fork: Callable[[], int]
    ) -> None:
        self._ctl = ctl
        self._serve = serve
        self._fork_process = fork
        self._wake_r = wake_r
        self._live: set[int] = set()
        self._reports: list[bytes] = []  # for the next packet to the hub
        self._outbox: list[bytes] = []  # packets for the hub while its socket is full
        self._quit_at: float | None = None
        self._poller = select.poll()
        self._poller.register(wake_r, select.POLLIN)
        self._poller.register(ctl, select.POLLIN)

    def run(self) -> None:
        watching_ctl = True
        while self._quit_at is None or self._live:
            timeout = None
            if self._quit_at is not None:
                timeout = max(0.0, self._quit_at - time.monotonic())
                if timeout == 0:
                    break
                if watching_ctl:
                    # No more requests; a closed hub end would report POLLHUP forever.
                    self._poller.unregister(self._ctl)
                    watching_ctl = False
            if watching_ctl:
                interest = select.POLLIN | (select.POLLOUT * bool(self._outbox))
                self._poller.modify(self._ctl, interest)
            events = dict(self._poller.poll(None if timeout is None else timeout * 1000))
            if self._wake_r.fileno() in events:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass
            self._reap()
            ctl_events = events.get(self._ctl.fileno(), 0)
            if ctl_events & select.POLLOUT:
                self._flush()
            if ctl_events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self._take_requests()
        for pid in self._live:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in list(self._live):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self._report(_ENDED, 0, pid)
        self._live.clear()
        self._send_reports()
        # The hub counts on the end reports to know which pids still live.
        self._ctl.setblocking(True)
        self._ctl.settimeout(0.5)
        with contextlib.suppress(OSError):
            for message in self._outbox:
                self._ctl.send(message)

    def report_ready(self) -> None:
        self._report(_READY, 0, os.getpid())
        self._send_reports()

    def _take_requests(self) -> None:
        forked = 0
        while self._quit_at is None:
            if forked >= REPORT_EVERY:
                self._send_reports()
                forked = 0
            try:
                data, fds, _, _ = socket.recv_fds(self._ctl, _MESSAGE.size, 3)
            except BlockingIOError:
                break
            except OSError:
                data, fds = b"", []
            if len(data) != _MESSAGE.size:
                for fd in fds:
                    os.close(fd)
                # The hub is gone: its end closed. Workers see their channels close too.
                self._quit_at = time.monotonic() + ORPHAN_GRACE
                break
            kind, number, value = _MESSAGE.unpack(data)
            if kind == _QUIT:
                for fd in fds:
                    os.close(fd)
                self._quit_at = time.monotonic() + value / 1000
                break
            if kind == _START and len(fds) in (2, 3):
                self._fork(number, fds)
                forked += 1
            else:
                for fd in fds:
                    os.close(fd)
        self._send_reports()

    def _fork(self, request: int, fds: list[int]) -> None:
        try:
            pid = self._fork_process()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            self._report(_FAILED, request, exc.errno or errno.EAGAIN)
            return
        if pid == 0:  # the worker
            status = 1
            try:
                _become_worker(fds)
                client, channel, *relay = (socket.socket(fileno=fd) for fd in fds)
                self._serve(client, channel, relay[0] if relay else None)
                status = 0
            except BaseException:  # the child must reach os._exit, whatever happened
                log.exception("worker failed")
            finally:
                os._exit(status)
        for fd in fds:
            os.close(fd)
        self._live.add(pid)
        self._report(_STARTED, request, pid)

    def _reap(self) -> None:
        while self._live:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._live.clear()
                break
            if pid == 0:
                break
            self._live.discard(pid)
            self._report(_ENDED, 0, pid)
        if self._reports:
            self._send_reports()

    def _report(self, kind: bytes, request: int, value: int) -> None:
        """Tell the hub, with the next packet of reports (`_send_reports`)."""
        self._reports.append(_MESSAGE.pack(kind, request, value))

    def _send_reports(self) -> None:
        for start in range(0, len(self._reports), REPORTS_PER_PACKET):
            self._outbox.append(b"".join(self._reports[start : start + REPORTS_PER_PACKET]))
        self._reports.clear()
        self._flush()

    def _flush(self) -> None:
        while self._outbox:
            try:
                self._ctl.send(self._outbox[0])
            except BlockingIOError:
                return
            except OSError:
                self._outbox.clear()
                return
            del self._outbox[0]


def _become_worker(fds: list[int]) -> None:
    """Turn a fresh fork of the fork server into a worker owning only its sockets."""
    signal.set_wakeup_fd(-1)
    # The C function, not `signal.signal`: its wrapper turns the old handler into an
    # enum, which costs a fresh worker ~80 copy-on-write faults (0.3 ms).
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    # SIGINT, SIGTERM and SIGHUP stay ignored (inherited): the hub ends workers.
    _keep_only(fds)
    _set_comm(WORKER_COMM)
    gc.freeze()
