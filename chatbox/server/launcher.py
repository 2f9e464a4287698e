"""How a worker starts: in a forked process or in a thread. The one concurrency switch.

Like `socketserver`'s ``process_request``, this is the only place where the two modes
differ. Everything else - the channel, its framing, the hub, the room, the worker's
loop - is the same code, so thread mode on Linux exercises the path Windows takes.
"""

from __future__ import annotations

import _thread
import abc
import dataclasses
import errno
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from chatbox.server.forkserver import ForkServer, Serve, Sockets
from chatbox.server.handover import Handover
from chatbox.server.worker import WorkerConfig, serve_connection

log = logging.getLogger("chatbox.launcher")

MODES = ("fork", "thread")

# A fork server that died is replaced at most this often (seconds).
FORK_SERVER_RESTART_INTERVAL = 10.0

# Worker threads need little stack (a loop, a decoder, a few frames); the default 8 MiB
# of address space each would make thousands of threads look huge.
THREAD_STACK_SIZE = 256 * 1024


@dataclass(frozen=True)
class Pending:
    """A worker asked for and not started yet: its answer comes from `Launcher.started`
    under this ticket."""

    ticket: int


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
        self,
        client: socket.socket,
        channel: socket.socket,
        relay: socket.socket | None = None,
        handover: Handover | None = None,
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

    # Whether its workers share the hub's process, so that a worker may hand its lines
    # to the hub directly (`chatbox.server.handover`) instead of through the channel.
    shares_hub = False

    def start_all(
        self, workers: Sequence[Sockets], handovers: Sequence[Handover | None] = ()
    ) -> list[OSError | Pending | None]:
        """`start` for each (client, channel, relay), in order: for each, None if its
        worker started, the `OSError` `start` would have raised, or - in a mode whose
        workers are started by another process - `Pending`: the answer comes later,
        from `started`. ``handovers``, if given, has one for each worker (only where
        `shares_hub`). A mode that starts many workers at once more cheaply than one
        by one overrides this."""
        results: list[OSError | Pending | None] = []
        for index, (client, channel, relay) in enumerate(workers):
            try:
                self.start(client, channel, relay, handovers[index] if handovers else None)
            except OSError as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    def reap(self) -> None:  # noqa: B027 - threads need no reaping
        """Collect workers that have ended. Never blocks."""

    def started(self) -> list[tuple[int, OSError | None]]:
        """The answers for `Pending` workers that came since the last call, without
        waiting: (ticket, None if it started or why not)."""
        return []

    @property
    def answers_on(self) -> socket.socket | None:
        """The socket whose input means `started` has answers (it changes when a fork
        server is replaced), or None."""
        return None

    def answer_deadline(self) -> float | None:
        """When `started` must be asked again even if nothing came (monotonic): it
        gives up on answers that take too long. None: no answer is awaited."""
        return None

    def pending(self) -> int:
        """Workers that ended or are ending but whose end the hub must still wait for."""
        return 0

    @abc.abstractmethod
    def finish(self, deadline: float) -> None:
        """Make sure no worker is left: wait until ``deadline`` (monotonic), force the rest."""


class ForkLauncher(Launcher):
    """Workers are processes, forked by the fork server (`chatbox.server.forkserver`),
    never by the hub: a worker forked from the hub would keep the hub's heap of that
    moment alive, queues included, for as long as it runs."""

    mode = "fork"

    def __init__(self, config: WorkerConfig, tls_files: tuple[str, str] | None = None) -> None:
        super().__init__(config)
        # What the fork server - a fresh interpreter - is given to build the workers'
        # configuration from: a TLS context does not pickle, so with TLS it loads the
        # certificate and key itself (``tls_files``, as checked by the caller).
        if config.tls is not None and tls_files is not None:
            files = (os.path.abspath(tls_files[0]), os.path.abspath(tls_files[1]))
            handshake = config.tls.handshake_timeout
            self._setup = functools.partial(
                worker_setup, dataclasses.replace(config, tls=None), (*files, handshake)
            )
        else:
            self._setup = functools.partial(worker_setup, config, None)
        self._server = ForkServer(self._setup)
        self._replaced_at: float | None = None
        self._lost: list[ForkServer] = []  # dead fork servers whose orphans may live on
        # The sockets of each worker asked for, by ticket, until its answer: the
        # worker's ends are closed here once it has them.
        self._pending: dict[int, Sockets] = {}

    def _fork_server(self) -> ForkServer:
        """The fork server, replaced if it is gone - at most once per
        `FORK_SERVER_RESTART_INTERVAL`, so one that keeps dying does not make the hub
        start one again and again; meanwhile new clients are refused."""
        now = time.monotonic()
        if self._server.gone and (
            self._replaced_at is None or now - self._replaced_at >= FORK_SERVER_RESTART_INTERVAL
        ):
            self._lost.append(self._server)
            self._replaced_at = now
            # A fresh interpreter like the first one: it shares nothing of the hub as it
            # is now (only where none can be started is it forked from the hub).
            self._server = ForkServer(self._setup)
            log.warning("made a new fork server (pid %d)", self._server.pid)
        return self._server

    def start(
        self,
        client: socket.socket,
        channel: socket.socket,
        relay: socket.socket | None = None,
        handover: Handover | None = None,
    ) -> None:
        # One worker, waiting for it (the hub uses `start_all`, which does not wait).
        (error,) = self._fork_server().start([(client, channel, relay)])
        if error is not None:
            raise error
        self._close_worker_ends((client, channel, relay))

    def start_all(
        self, workers: Sequence[Sockets], handovers: Sequence[Handover | None] = ()
    ) -> list[OSError | Pending | None]:
        # A worker process cannot run the hub's code: ``handovers`` is not used.
        results: list[OSError | Pending | None] = []
        for sockets, number in zip(workers, self._fork_server().submit(workers), strict=True):
            if isinstance(number, OSError):
                results.append(number)
            else:
                self._pending[number] = sockets
                results.append(Pending(number))
        return results

    def started(self) -> list[tuple[int, OSError | None]]:
        answers: list[tuple[int, OSError | None]] = []
        for server in (self._server, *self._lost):
            for ticket, error in server.answers():
                sockets = self._pending.pop(ticket, None)
                if sockets is None:
                    continue
                if error is None:
                    self._close_worker_ends(sockets)
                answers.append((ticket, error))
        return answers

    @property
    def answers_on(self) -> socket.socket | None:
        return self._server.control if self._pending else None

    def answer_deadline(self) -> float | None:
        if not self._pending:
            return None
        due = [
            d for d in (s.answer_deadline() for s in (self._server, *self._lost)) if d is not None
        ]
        # A server given up on has answered for everything: look again at once.
        return min(due) if due else 0.0

    def pending(self) -> int:
        return len(self._pending)

    @staticmethod
    def _close_worker_ends(sockets: Sockets) -> None:
        _, channel, relay = sockets
        channel.close()
        if relay is not None:
            relay.close()

    def reap(self) -> None:
        self._server.poll()
        for lost in self._lost:
            lost.poll()

    def finish(self, deadline: float) -> None:
        # The hub has already waited until every channel closed, or the grace ran out;
        # the fork server reaps what is ending and kills what is stuck.
        self._server.stop(deadline)
        for lost in self._lost:
            lost.stop(deadline)


class ThreadLauncher(Launcher):
    mode = "thread"
    shares_hub = True

    def __init__(self, config: WorkerConfig) -> None:
        super().__init__(config)
        # Live workers, counted by the workers themselves, so the hub can wait for
        # them at shutdown without holding a Thread object per client.
        self._live = 0
        self._ended = threading.Condition()
        threading.stack_size(THREAD_STACK_SIZE)

    def start(
        self,
        client: socket.socket,
        channel: socket.socket,
        relay: socket.socket | None = None,
        handover: Handover | None = None,
    ) -> None:
        # The low-level start, not threading.Thread.start: that one waits until the
        # new thread has run, which takes a GIL hand-off per client (up to the 5 ms
        # switch interval while the hub is busy) - most of a 5,000-client storm's time.
        with self._ended:
            self._live += 1
        try:
            _thread.start_new_thread(self._run, (client, channel, relay, handover))
        except RuntimeError as exc:
            # What the system refusing a thread (EAGAIN from pthread_create) raises:
            # the same condition fork reports as OSError.
            with self._ended:
                self._live -= 1
            raise OSError(errno.EAGAIN, f"cannot start a thread: {exc}") from None

    def _run(
        self,
        client: socket.socket,
        channel: socket.socket,
        relay: socket.socket | None,
        handover: Handover | None,
    ) -> None:
        try:
            serve_connection(client, channel, self.config, relay, handover)
        finally:
            with self._ended:
                self._live -= 1
                self._ended.notify_all()

    def finish(self, deadline: float) -> None:
        with self._ended:
            self._ended.wait_for(lambda: self._live == 0, max(0.0, deadline - time.monotonic()))
            if self._live:
                log.warning("%d worker threads did not end in time", self._live)


def worker_setup(config: WorkerConfig, tls: tuple[str, str, float] | None) -> Serve:
    """Run once in the fork server, before its first fork: what each worker runs, with
    everything it imports imported here (a worker then imports nothing) and, with
    ``tls`` (certificate, key, handshake timeout), the TLS context every worker uses."""
    if tls is not None:
        from chatbox.server.tls import TlsConfig, server_context

        cert, key, handshake = tls
        config = dataclasses.replace(config, tls=TlsConfig(server_context(cert, key), handshake))
    if config.tls is not None:
        import chatbox.server.tls  # noqa: F401 - the TLS worker's code, imported once here

    def serve(client: socket.socket, channel: socket.socket, relay: socket.socket | None) -> None:
        serve_connection(client, channel, config, relay)

    return serve


def make_launcher(
    mode: str, config: WorkerConfig, tls_files: tuple[str, str] | None = None
) -> Launcher:
    """The launcher for ``mode``. ``tls_files`` (certificate, key) are where
    ``config.tls``'s context was loaded from: a fork server loads them again."""
    if mode == "fork":
        if not hasattr(os, "fork"):
            raise ValueError("fork mode needs os.fork, which this platform lacks")
        return ForkLauncher(config, tls_files)
    if mode == "thread":
        return ThreadLauncher(config)
    raise ValueError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
