"""The fork server: a small process, made at start-up, that forks every worker.

Why: a worker forked from the hub shares the hub's whole heap copy-on-write, and keeps
every page of it alive for as long as it runs - the queues the hub held at that moment
included. Fifteen idle clients connecting during a flood pinned 500 MB that way. The
fork server is forked from the hub before the hub has allocated anything big, does
nothing but fork, and so every worker starts as a copy of a small, clean process:
cheap to fork (a small address space) and owning nothing of the hub's.

How: the hub and the fork server share one Unix ``SOCK_SEQPACKET`` socketpair (each
message arrives whole). For each new client the hub sends the client socket and the
worker's end of its channel (and, with TLS, the worker's end of the relay the hub
writes the client's output to) (SCM_RIGHTS, `socket.send_fds`); the fork server forks a
worker that serves them, closes its own copies and answers with the worker's pid (or
the errno of a failed fork). It reaps its workers and tells the hub each one's end, so
the hub knows which pids still live. The hub learns that a worker's *client* is done
the way it always did: the worker's channel end closes.

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

Wire format (both directions): one `struct` ``=cIq`` message per packet - a kind, a
request number and a value:

- hub -> fork server: ``S`` (start; the value is unused, two or three descriptors ride
  along: client, channel, relay),
  ``Q`` (quit; the value is the milliseconds it may wait for its workers);
- fork server -> hub: ``R`` (ready, once, first), ``P`` (started: the value is the
  pid), ``E`` (not started: the value is the errno), ``X`` (a worker ended: the value
  is its pid).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import select
import signal
import socket
import struct
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

# How long a fork server whose hub has vanished waits for the workers to see their
# channels close before it kills them.
ORPHAN_GRACE = 2.0

_CLEAN_EXIT = "it exited"

_MESSAGE = struct.Struct("=cIq")
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


class ForkServerGone(OSError):
    """The fork server is not there (any more): no worker can be started."""

    def __init__(self, why: str) -> None:
        super().__init__(errno.EAGAIN, f"no fork server: {why}")


class ForkServer:
    """The hub's handle on its fork server: start workers, learn of their end, stop.

    ``serve(client, channel)`` is what each worker runs. The fork server is forked in
    the constructor, so it - and every worker - inherits the calling process as it is
    at that moment: whatever configuration ``serve`` reaches (a launcher's attributes)
    is there; whatever the hub allocates later is not.

    Resource handling: the fork server is the caller's child; `stop` ends it and
    every worker and reaps what is the caller's to reap. The caller keeps its own
    copies of the sockets it passes (the workers have theirs). Error handling: `start`
    gives an `OSError` for each worker that could not be started (the fork failed, or
    the fork server is gone or stuck: it is then killed, logged once, and every later
    start fails at once).
    """

    def __init__(self, serve: Serve) -> None:
        hub_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        level = logging.getLogger().level
        try:
            pid = os.fork()
        except BaseException:
            hub_end.close()
            server_end.close()
            raise
        if pid == 0:  # the fork server
            status = 1
            try:
                hub_end.close()
                _run(server_end, serve, level)
                status = 0
            except BaseException:  # the child must reach os._exit, whatever happened
                log.exception("fork server failed")
            finally:
                os._exit(status)
        server_end.close()
        hub_end.setblocking(False)
        self.pid = pid
        self._ctl = hub_end
        self._requests = 0
        self._gone = ""  # why the fork server is gone, once it is
        self._reaped = False
        self._stopping = False
        self.workers: set[int] = set()  # started and not known to have ended
        # Orphans: should the fork server die, its workers become ours to reap (and to
        # kill at the end), not init's.
        self._subreaper = _become_subreaper()
        # Ready before the server says it listens: set up, named, taking requests.
        if self._next(time.monotonic() + ANSWER_TIMEOUT) is None and not self._gone:
            self._lost(f"it did not start in {ANSWER_TIMEOUT:g} s")

    @property
    def gone(self) -> bool:
        """It has died or was given up on: it starts no more workers."""
        return bool(self._gone)

    def start(self, pairs: Sequence[Sockets]) -> list[OSError | None]:
        """Fork a worker for each (client, channel, relay); for each, None if it
        started, or why not.

        All requests go out first, then the answers are collected: the fork server
        forks one worker after the other while the hub waits once for the lot - in a
        connection storm, once per accept batch instead of once per client.
        """
        sent: list[int] = []
        for sockets in pairs:
            if self._gone:
                break
            self._requests = (self._requests + 1) & 0xFFFFFFFF
            message = _MESSAGE.pack(_START, self._requests, 0)
            if self._send(message, [s.fileno() for s in sockets if s is not None]):
                sent.append(self._requests)
        answers: dict[int, OSError | None] = {}
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while len(answers) < len(sent):
            answer = self._next(deadline)
            if answer is None:
                self._lost(f"it did not answer for {ANSWER_TIMEOUT:g} s")
                break
            kind, number, value = answer
            if number not in sent or number in answers:
                continue  # the late answer to a request given up on
            deadline = time.monotonic() + ANSWER_TIMEOUT
            if kind == _STARTED:
                self.workers.add(value)
                answers[number] = None
            else:
                answers[number] = OSError(value, f"cannot fork a worker: {os.strerror(value)}")
        gone = ForkServerGone(self._gone)
        results = [answers.get(number, gone) for number in sent]
        return results + [gone] * (len(pairs) - len(sent))

    def _send(self, message: bytes, fds: list[int]) -> bool:
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while True:
            try:
                socket.send_fds(self._ctl, [message], fds)
                return True
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not _ready(self._ctl, select.POLLOUT, remaining):
                    self._lost(f"it took no request for {ANSWER_TIMEOUT:g} s")
                    return False
            except OSError as exc:
                self._lost(f"its socket failed ({exc})")
                return False

    def poll(self) -> None:
        """Take what the fork server said (ended workers; its own end) without blocking,
        and reap orphaned workers once it is gone."""
        if not self._gone:
            while self._next(None) is not None:
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
        if not self._gone:
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000) - 50)
            with contextlib.suppress(OSError):
                self._ctl.send(_MESSAGE.pack(_QUIT, 0, wait_ms))
            while not self._gone and self._next(deadline) is not None:
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

    def _next(self, deadline: float | None) -> tuple[bytes, int, int] | None:
        """The next start answer, after taking every end report before it; None when
        nothing came by ``deadline`` (None: do not wait) or the fork server is gone."""
        while not self._gone:
            try:
                data = self._ctl.recv(_MESSAGE.size)
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
            if len(data) != _MESSAGE.size:
                why = why or self._exit_status()
                self._lost(why, expected=self._stopping and why == _CLEAN_EXIT)
                return None
            kind, number, value = _MESSAGE.unpack(data)
            if kind == _ENDED:
                self.workers.discard(value)
                continue
            return kind, number, value
        return None

    def _lost(self, why: str, expected: bool = False) -> None:
        """The fork server is gone, or as good as: make sure, and say so once (unless
        it ended as told)."""
        if self._gone:
            return
        self._gone = why
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
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(name)


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


def _run(ctl: socket.socket, serve: Serve, level: int) -> None:
    """The fork server's loop: fork a worker per request, reap them, end when told to
    (or when the hub is gone)."""
    signal.set_wakeup_fd(-1)
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    wake_r, wake_w = socket.socketpair()
    _keep_only([ctl.fileno(), wake_r.fileno(), wake_w.fileno()])
    # Frozen: the collector never walks (and so never copies) what the workers share.
    gc.freeze()
    _set_comm(FORK_SERVER_COMM)
    logs.for_worker(level)
    for sock in (wake_r, wake_w, ctl):
        sock.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the poll below
    server = _Loop(ctl, serve, wake_r)
    server.report_ready()
    server.run()


class _Loop:
    def __init__(self, ctl: socket.socket, serve: Serve, wake_r: socket.socket) -> None:
        self._ctl = ctl
        self._serve = serve
        self._wake_r = wake_r
        self._live: set[int] = set()
        self._outbox: list[bytes] = []  # reports for the hub while its socket is full
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
        # The hub counts on the end reports to know which pids still live.
        self._ctl.setblocking(True)
        self._ctl.settimeout(0.5)
        with contextlib.suppress(OSError):
            for message in self._outbox:
                self._ctl.send(message)

    def report_ready(self) -> None:
        self._report(_READY, 0, os.getpid())

    def _take_requests(self) -> None:
        while self._quit_at is None:
            try:
                data, fds, _, _ = socket.recv_fds(self._ctl, _MESSAGE.size, 3)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if len(data) != _MESSAGE.size:
                for fd in fds:
                    os.close(fd)
                # The hub is gone: its end closed. Workers see their channels close too.
                self._quit_at = time.monotonic() + ORPHAN_GRACE
                return
            kind, number, value = _MESSAGE.unpack(data)
            if kind == _QUIT:
                for fd in fds:
                    os.close(fd)
                self._quit_at = time.monotonic() + value / 1000
                return
            if kind == _START and len(fds) in (2, 3):
                self._fork(number, fds)
            else:
                for fd in fds:
                    os.close(fd)

    def _fork(self, request: int, fds: list[int]) -> None:
        try:
            pid = os.fork()
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
                return
            if pid == 0:
                return
            self._live.discard(pid)
            self._report(_ENDED, 0, pid)

    def _report(self, kind: bytes, request: int, value: int) -> None:
        message = _MESSAGE.pack(kind, request, value)
        if not self._outbox:
            try:
                self._ctl.send(message)
                return
            except BlockingIOError:
                pass
            except OSError:
                return  # the hub is gone; the request loop will see it
        self._outbox.append(message)

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
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # SIGINT, SIGTERM and SIGHUP stay ignored (inherited): the hub ends workers.
    _keep_only(fds)
    _set_comm(WORKER_COMM)
    gc.freeze()
