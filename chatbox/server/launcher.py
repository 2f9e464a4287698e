"""How a worker starts: in a forked process or in a thread. The one concurrency switch.

Like `socketserver`'s ``process_request``, this is the only place where the two modes
differ. Everything else - the channel, its framing, the hub, the room, the worker's
loop - is the same code, so thread mode on Linux exercises the path Windows takes.
"""

from __future__ import annotations

import _thread
import abc
import errno
import gc
import logging
import os
import signal
import socket
import threading
import time

from chatbox.server import logs
from chatbox.server.worker import WorkerConfig, serve_connection

log = logging.getLogger("chatbox.launcher")

MODES = ("fork", "thread")

# Worker threads need little stack (a loop, a decoder, a few frames); the default 8 MiB
# of address space each would make thousands of threads look huge.
THREAD_STACK_SIZE = 256 * 1024


def default_mode() -> str:
    return "fork" if hasattr(os, "fork") else "thread"


class Launcher(abc.ABC):
    """Starts workers and, at the end, makes sure none of them is left."""

    mode: str

    def __init__(self, config: WorkerConfig) -> None:
        # What every worker is given (line limit, TLS context, password): the same for
        # all, so it is held here rather than passed with each client.
        self.config = config

    @abc.abstractmethod
    def start(
        self, client: socket.socket, channel: socket.socket, relay: socket.socket | None = None
    ) -> None:
        """Serve ``client`` in a new worker talking to the hub over ``channel`` (and,
        with TLS, taking the client's output from ``relay``).

        Resource handling: the worker owns ``channel`` and ``relay`` from here on (the
        launcher closes the hub's copies where the mode makes them). The hub keeps
        ``client`` and closes it when the worker's channel reports the end.

        Error handling: a worker that cannot start (no process or thread to be had: a
        pids or tasks limit, memory) raises `OSError` in either mode, and nothing was
        started; the caller still owns ``channel`` then, and refuses this one client.
        """

    def reap(self) -> None:  # noqa: B027 - threads need no reaping
        """Collect workers that have ended. Never blocks."""

    def pending(self) -> int:
        """Workers that ended or are ending but whose end the hub must still wait for."""
        return 0

    @abc.abstractmethod
    def finish(self, deadline: float) -> None:
        """Make sure no worker is left: wait until ``deadline`` (monotonic), force the rest."""


class ForkLauncher(Launcher):
    mode = "fork"

    def __init__(self, config: WorkerConfig) -> None:
        super().__init__(config)
        self._children: set[int] = set()

    def start(
        self, client: socket.socket, channel: socket.socket, relay: socket.socket | None = None
    ) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                _become_worker(client, channel, relay)
                serve_connection(client, channel, self.config, relay)
                status = 0
            except BaseException:  # the child must reach os._exit, whatever happened
                log.exception("worker failed")
            finally:
                os._exit(status)
        self._children.add(pid)
        channel.close()
        if relay is not None:
            relay.close()

    def reap(self) -> None:
        while self._children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._children.clear()
                return
            if pid == 0:
                return
            self._children.discard(pid)

    def pending(self) -> int:
        return len(self._children)

    def finish(self, deadline: float) -> None:
        # The hub has already waited (woken by SIGCHLD) until the deadline; whatever is
        # still running now is stuck, and is killed so that nothing outlives the server.
        for pid in list(self._children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(self._children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self._children.discard(pid)


def _become_worker(
    client: socket.socket, channel: socket.socket, relay: socket.socket | None
) -> None:
    """Turn a fresh fork of the hub into a worker that owns only its sockets.

    Every inherited descriptor it does not own is closed: the listening socket, the
    hub's selector, other workers' channels and client sockets. A leaked copy of another
    client's socket would keep that client's connection open after it left.
    """
    signal.set_wakeup_fd(-1)
    # Ctrl-C in a terminal reaches the whole process group; the hub orchestrates the
    # shutdown, so workers must not die of it on their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    logs.for_worker(logging.getLogger().level)
    keep = sorted({0, 1, 2, client.fileno(), channel.fileno()})
    if relay is not None:
        keep = sorted({*keep, relay.fileno()})
    low = 0
    for fd in keep:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())
    # The hub's objects are shared copy-on-write; the collector walking them would
    # touch (and so copy) their pages in every worker. The worker allocates little.
    gc.freeze()


def _max_fd() -> int:
    try:
        import resource

        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        return 65536


class ThreadLauncher(Launcher):
    mode = "thread"

    def __init__(self, config: WorkerConfig) -> None:
        super().__init__(config)
        # Live workers, counted by the workers themselves, so the hub can wait for
        # them at shutdown without holding a Thread object per client.
        self._live = 0
        self._ended = threading.Condition()
        threading.stack_size(THREAD_STACK_SIZE)

    def start(
        self, client: socket.socket, channel: socket.socket, relay: socket.socket | None = None
    ) -> None:
        # The low-level start, not threading.Thread.start: that one waits until the
        # new thread has run, which takes a GIL hand-off per client (up to the 5 ms
        # switch interval while the hub is busy) - most of a 5,000-client storm's time.
        with self._ended:
            self._live += 1
        try:
            _thread.start_new_thread(self._run, (client, channel, relay))
        except RuntimeError as exc:
            # What the system refusing a thread (EAGAIN from pthread_create) raises:
            # the same condition fork reports as OSError.
            with self._ended:
                self._live -= 1
            raise OSError(errno.EAGAIN, f"cannot start a thread: {exc}") from None

    def _run(
        self, client: socket.socket, channel: socket.socket, relay: socket.socket | None
    ) -> None:
        try:
            serve_connection(client, channel, self.config, relay)
        finally:
            with self._ended:
                self._live -= 1
                self._ended.notify_all()

    def finish(self, deadline: float) -> None:
        with self._ended:
            self._ended.wait_for(lambda: self._live == 0, max(0.0, deadline - time.monotonic()))
            if self._live:
                log.warning("%d worker threads did not end in time", self._live)


def make_launcher(mode: str, config: WorkerConfig) -> Launcher:
    if mode == "fork":
        if not hasattr(os, "fork"):
            raise ValueError("fork mode needs os.fork, which this platform lacks")
        return ForkLauncher(config)
    if mode == "thread":
        return ThreadLauncher(config)
    raise ValueError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
