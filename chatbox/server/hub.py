"""The hub: the server's parent process, the one owner of the room and of all output.

It never blocks. One `selectors` loop multiplexes the listening socket, every worker's
channel, the client sockets that have output waiting, and a signal wakeup socket.
Workers read and decode what their clients send and pass the lines up their channels;
the hub decodes each channel (`ChannelReader`) and hands the room what it says - lines,
a dropped line, a departure; the `Room` decides who gets what and calls back `post` (and
`dismiss`, for a member that quits); the hub queues the
bytes and writes them straight to the recipients' sockets, without blocking, once per
recipient per loop turn. Output does not pass back through the recipient's worker: that
would cost every delivery two more process wake-ups and copies for nothing, since the
hub already holds every client socket (it accepted them).

Each client has an outbound queue here (its SendQ). A slow reader is dealt with alone:
nobody else waits for it, ever. Its queue may go over ``sendq`` bytes (a burst it is
behind on); from then its grace clock runs, and the queue may keep growing during the
grace, up to the hard bound ``sendq_hard`` (`HubConfig.hard_bound`, 4 x ``sendq`` by
default). A client whose queue is still over ``sendq`` after ``slow_timeout`` seconds,
or that reaches the hard bound at any time, is not catching up: it is cut off with
``! disconnected: too slow`` and the room hears it left. Everyone else's input is read
and relayed all along. So nobody is disconnected for being momentarily behind a burst,
nobody holds the room up at all, and the hub's memory for queues is bounded by clients x
the hard bound. (Per-sender limits keep a reader that keeps up under ``sendq``: the
flood allowance bounds what one sender may add at once, and a command's replies wait
until they fit in half the asker's ``sendq``, `Hub.has_room`.)

Lifecycle of a client, as the hub sees it (`chatbox.server.link` owns the states)::

    accept -> start worker -> OPEN (in the room) -> LEAVING (dismissed: its queue
    flushes) -> SHUT (socket and channel shut down) -> GONE (the worker ended, closing
    its channel end; client socket closed, worker reaped)

Every event looks at the link's state first: an event for a link past the step it
belongs to (a writable socket of a link that is already GONE) is ignored.

With TLS or a password (``HubConfig.tls``, ``HubConfig.password``) a client first WAITs
outside the room until its worker says it is ready (handshake and password passed); a
wrong password is answered after a delay that grows per address (`gate.Penalties`), on
the loop's timer. With TLS the hub writes a client's output to its relay socket, which
the worker encrypts (`chatbox.server.tls`); the hub cannot tell the difference.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import selectors
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatbox import protocol
from chatbox.server.admission import Admission, AdmissionRules, Refusal, Ticket
from chatbox.server.channel import (
    IDLE,
    ChannelEvent,
    Heard,
    LineDropped,
    Ready,
    Refused,
    TimedOut,
)
from chatbox.server.farewell import Farewells
from chatbox.server.flood import FloodBucket, FloodLimits
from chatbox.server.forkserver import STOP_SIGNALS, Sockets
from chatbox.server.gate import Penalties
from chatbox.server.handover import Handover
from chatbox.server.history import History
from chatbox.server.launcher import Launcher, Pending
from chatbox.server.link import Link, State
from chatbox.server.room import STORM_HOLD, Room
from chatbox.server.synfilter import SynFilter
from chatbox.server.worker import DONTWAIT

if TYPE_CHECKING:
    from chatbox.server.cluster import Cluster
    from chatbox.server.cluster_room import ClusterRoom

log = logging.getLogger("chatbox.hub")

# One recv from a channel takes up to this much: a worker batches many lines per send,
# and reading them in one call is what keeps the per-line cost low. It is read into one
# buffer the hub keeps (`recv_into`): a plain ``recv`` of this size allocates and frees
# 256 KiB per call, past the size malloc keeps for reuse - about 20 us for a 30-byte
# line against 3 us (a third of the hub's CPU in a ping-pong).
CHANNEL_RECV_SIZE = 262144

# The launcher's reports (workers that ended, a fork server that died) need no answer
# within a line's time: they are read when a signal woke the loop (SIGCHLD), and
# otherwise at most this often (seconds) - not every turn, where looking cost fork mode
# two system calls per relayed line.
REAP_INTERVAL = 0.05

# New connections taken per loop turn, so a connection storm cannot starve the relaying.
ACCEPTS_PER_TURN = 64

# Time the hub gives its clients to receive "server shutting down" and its workers to
# end on their own; the server must be gone within 2 s of SIGTERM, so this leaves room
# for forcing whatever is left.
SHUTDOWN_GRACE = 1.5

DEFAULT_SENDQ = 1 << 20
# The hard bound on a queue, in units of --sendq: a reader this far behind is cut off at
# once, whatever its grace. Room for a burst several times --sendq (a reader on a busy
# machine catching up), small enough that a room of stopped readers cannot eat memory.
DEFAULT_HARD_FACTOR = 4
DEFAULT_MAX_CLIENTS = 1024
# Long enough that a reader going at full speed on a loaded machine (a GC pause, a busy
# CI box) always drains its queue in time; short enough that a reader that stopped
# does not hold its (bounded) queue's memory for long.
DEFAULT_SLOW_TIMEOUT = 2.0
# A queue that has not moved at all for this long is a reader that is gone, however
# small the queue (one that quit and stopped reading holds its slot otherwise). A
# suspended terminal client in a busy room is cut off sooner, by the rule above.
DEFAULT_STALL_TIMEOUT = 60.0
# A connection that has sent nothing at all since it entered the room (not even the bare
# newline chatbox-client sends after 60 s of silence) for this long is closed - but only
# while the server is at least PRESSURE full, oldest first until it is below: so silent
# sockets cannot hold a server full for the whole --idle-timeout, and lurkers who type
# nothing stay as long as there is room.
DEFAULT_SILENT_TIMEOUT = 90.0
PRESSURE = 0.9
# TCP keepalive on client sockets: a peer that vanished without a word (power cut, a
# NAT that dropped the mapping) is found after KEEPIDLE + KEEPINTVL * KEEPCNT seconds
# of silence, even while the server has nothing to send it.
KEEPIDLE = 60
KEEPINTVL = 10
KEEPCNT = 6

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
# What the selector holds for the socket the launcher's answers come on (`_take_started`).
_ANSWERS = object()


@dataclass
class HubConfig:
    max_line: int = protocol.DEFAULT_MAX_LINE
    sendq: int = DEFAULT_SENDQ
    sendq_hard: int | None = None  # None: DEFAULT_HARD_FACTOR x sendq
    max_clients: int = DEFAULT_MAX_CLIENTS
    slow_timeout: float = DEFAULT_SLOW_TIMEOUT
    stall_timeout: float = DEFAULT_STALL_TIMEOUT  # 0: no limit
    silent_timeout: float = DEFAULT_SILENT_TIMEOUT  # 0: never
    flood: FloodLimits = field(default_factory=FloodLimits)
    admission: AdmissionRules = field(default_factory=AdmissionRules)
    # Workers speak TLS: each client's output goes to a relay socket its worker encrypts.
    tls: bool = False
    # With TLS, the server's context: the hub says its own refusals inside TLS with it.
    tls_context: ssl.SSLContext | None = None
    # Clients must give the password (their workers judge it) before they enter.
    password: bool = False
    # What the single server's room remembers (/history, /resume); None: the default.
    history: History | None = None

    @property
    def hard_bound(self) -> int:
        """Bytes a client's queue may hold at most: past them it is cut off at once."""
        hard = self.sendq * DEFAULT_HARD_FACTOR if self.sendq_hard is None else self.sendq_hard
        return max(hard, self.sendq)

    @property
    def gated(self) -> bool:
        """Whether a client enters the room only once its worker says it is ready."""
        return self.tls or self.password


def keep_alive(client: socket.socket) -> None:
    """Turn TCP keepalive on, with the probe timing wherever the system lets us set it."""
    with contextlib.suppress(OSError):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", KEEPIDLE), ("TCP_KEEPINTVL", KEEPINTVL)):
            if hasattr(socket, name):
                client.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
        if hasattr(socket, "TCP_KEEPCNT"):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPCNT)


class Hub:
    def __init__(
        self,
        listener: socket.socket,
        launcher: Launcher,
        config: HubConfig,
        cluster: Cluster | None = None,
    ) -> None:
        self._listener = listener
        self._launcher = launcher
        self._config = config
        self._room: Room | ClusterRoom
        # Clients whose worker was asked for and not started yet (fork mode: the fork
        # server answers later), by the launcher's ticket.
        self._starting: dict[int, tuple[Link, Sockets]] = {}
        # In a cluster the room appends to the shared log and delivers what comes back,
        # once per turn (docs/cluster.md); alone it posts straight away.
        self._tick: Callable[[], None] | None = None
        if cluster is None:
            # Clients whose workers are starting will join: its run of notices may wait.
            coming = self._starting.__len__
            self._room = Room(self, config.max_line, config.history, hold=STORM_HOLD, coming=coming)
        else:
            from chatbox.server.cluster_room import ClusterRoom

            self._room = ClusterRoom(self, cluster, config.max_line)
            self._tick = self._room.tick
        self._links: dict[int, Link] = {}
        self._answers_on: socket.socket | None = None  # where the launcher's answers come
        self._admission = Admission(config.admission)
        # Addresses admission blocks are dropped by the kernel, before they are connections.
        self._syn_filter = SynFilter(listener)
        self._ids = itertools.count(1)
        self._selector = selectors.DefaultSelector()
        self._dirty: dict[int, Link] = {}  # queued to this turn, flushed at its end
        self._over: dict[int, Link] = {}  # queues over --sendq: their grace runs
        # Queues waiting for their socket to take more, least recently moved first.
        self._waiting: dict[int, Link] = {}
        self._broken: list[Link] = []  # clients whose socket failed while sending
        # Channels not read for one client's own sake: over its flood allowance (until
        # when), or holding commands whose replies wait for room in its queue.
        self._throttled: dict[int, tuple[float, Link]] = {}
        self._held: dict[int, Link] = {}
        # Wrong passwords waiting for their verdict (until when), and the delays per address.
        self._verdicts: dict[int, tuple[float, Link]] = {}
        self._penalties = Penalties()
        # Members that have sent nothing since they entered (since when), oldest first;
        # and those closed for it, still counted in _links until their worker ends.
        self._silent: dict[int, tuple[float, Link]] = {}
        self._evicted: set[int] = set()
        self._stopping = False
        self._stop_signal: int | None = None  # the signal that stopped it (said by the loop)
        # When the room's run of notices, held during a storm, is due (monotonic).
        self._run_due: float | None = None
        self._reap_at = 0.0  # when the launcher's reports are read next (monotonic)
        # Held by whoever runs the hub's code: the loop, except while it waits in its
        # selector - and then maybe a worker thread handing over a line (`_take`).
        self._lock = threading.Lock()
        self._interest_changes = 0  # registrations changed (a waiting loop must re-look)
        # Thread workers hand their lines over directly: not with TLS or a password
        # (lines start after the worker's ready note), not in a cluster (the room
        # delivers on the loop's tick).
        self._handing_over = launcher.shares_hub and not config.gated and cluster is None
        # Refused clients, closing gracefully (in TLS on a TLS port).
        self._farewells = Farewells(self._selector, config.tls_context)
        self._inbox = bytearray(CHANNEL_RECV_SIZE)  # what `_read` receives into
        self._inbox_view = memoryview(self._inbox)
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        listener.setblocking(False)
        self._selector.register(listener, _READ, None)
        self._selector.register(self._wakeup_r, _READ, None)

    # --- the loop -----------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Relay until SIGINT, SIGTERM or SIGHUP, then shut down within `SHUTDOWN_GRACE`.

        Resource handling: on return every worker has ended and been reaped, every
        socket the hub opened is closed, and the signal handlers are restored.
        """
        self._lock.acquire()
        previous = self._install_signals()
        try:
            while not self._stopping:
                self._turn(self._next_deadline())
            if self._stop_signal is not None:
                log.info("got %s", signal.Signals(self._stop_signal).name)
            self._shutdown()
        finally:
            self._restore_signals(previous)
            self._farewells.close_all()
            self._selector.close()
            self._wakeup_r.close()
            self._wakeup_w.close()
            self._lock.release()

    def _turn(self, timeout: float | None) -> None:
        self._lock.release()
        try:
            ready = self._selector.select(timeout)
        finally:
            self._lock.acquire()
        for key, _ in ready:
            link = key.data
            if link is _ANSWERS:
                # (Maybe of a socket unregistered earlier in this batch: harmless.)
                self._take_started()
            elif link is None:
                if key.fileobj is self._listener:
                    self._accept()
                elif key.fileobj is self._wakeup_r:
                    self._drain_wakeup()
                else:
                    self._farewells.readable(key.fileobj)  # type: ignore[arg-type]
            elif link.gone:
                continue  # ended earlier in this batch: its other events mean nothing now
            elif key.fileobj is link.client:
                if link.sending:
                    self._dirty[link.id] = link  # room to write again
            else:
                self._read(link)
        now = time.monotonic()
        if self._admission.blocks_due(now):
            self._update_blocks(now)
        if now >= self._reap_at or self._stopping:
            self._reap_at = now + REAP_INTERVAL
            self._launcher.reap()
            if self._starting:
                self._take_started()  # also those given up on (no answer in time)
        if self._tick is not None:
            self._tick()
        self._after_input()

    def _after_input(self, farewells: bool = True) -> None:
        """The rest of a turn, once its input was handed to the room: timers, then
        sending what was queued. A worker's handover leaves the ``farewells`` to the
        loop: expiring one closes a socket the loop's selector may be waiting on."""
        if self._throttled:
            self._end_throttles()
        if self._verdicts:
            self._give_verdicts()
        if self._silent and self._config.silent_timeout and not self._stopping:
            self._close_silent()
        self._flush()
        if self._held:
            self._release_held()
        self._check_slow()
        if self._waiting and self._config.stall_timeout:
            self._check_stalled()
        if farewells and self._farewells:
            self._farewells.expire()

    def _next_deadline(self) -> float | None:
        """How long the loop may wait: until the oldest over-full queue times out, or
        the oldest farewell."""
        deadlines = []
        if self._over:
            oldest = min(link.over_since or 0.0 for link in self._over.values())
            deadlines.append(oldest + self._config.slow_timeout)
        if self._throttled:
            deadlines.append(min(at for at, _ in self._throttled.values()))
        if self._waiting and self._config.stall_timeout:
            moved = next(iter(self._waiting.values())).moved_at
            deadlines.append(moved + self._config.stall_timeout)
        if self._verdicts:
            deadlines.append(min(at for at, _ in self._verdicts.values()))
        unblock = self._admission.next_unblock()
        if unblock is not None:
            deadlines.append(unblock)
        if self._run_due is not None:
            deadlines.append(self._run_due)
        if self._starting:
            answers_due = self._launcher.answer_deadline()
            if answers_due is not None:
                # Looked at with the launcher's reports (above), not sooner.
                deadlines.append(max(answers_due, self._reap_at))
        if self._held and any(self._releasable(link) for link in self._held.values()):
            # Its replies went out in full (no writable event will come): go on at once.
            deadlines.append(0.0)
        # (Each check is skipped when empty: a thread worker's handover asks after every line.)
        farewell = self._farewells.next_deadline() if self._farewells else None
        if farewell is not None:
            deadlines.append(farewell)
        if self._silent and self._config.silent_timeout and self._crowded():
            since, _ = next(iter(self._silent.values()))
            deadlines.append(since + self._config.silent_timeout)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _shutdown(self) -> None:
        log.info("shutting down: %d clients", len(self._room))
        self._selector.unregister(self._listener)
        self._listener.close()
        self._room.close()
        for link in list(self._links.values()):
            if link.state is State.WAITING:
                self.dismiss(link.id)  # not in the room: nothing to tell it
        # Ending workers must be seen ending: read every channel again.
        for link in self._held.values():
            link.reading = True
            self._watch(link)
        for _, link in self._throttled.values():
            link.reading = True
            self._watch(link)
        self._held.clear()
        self._throttled.clear()
        # Every notice goes out first, and only then are the links shut: shutting a link
        # wakes its worker to exit, and 1,000 workers exiting at once took the CPU from
        # the hub while it still had most of the notices to send (the flush took 1.4-8 s
        # of wall time for 50 ms of the hub's own). What does not fit now is sent by the
        # flush, as it would be.
        for link in list(self._dirty.values()):
            if link.sending and link.sendq:
                self._send(link)
        # Then each client whose last words are out is given the end of its stream, in
        # one pass that wakes no worker (our direction alone: a worker waits to read
        # its client, and that does not change). Shutting the links, below, wakes each
        # worker to exit, one after another: on a busy machine each woken worker took
        # the hub's CPU, and the last of 1,000 clients saw its end 4-6 s after the
        # signal beside four CPU hogs. (A TLS link's socket is the worker's relay: its
        # worker says the end, inside TLS.)
        for link in self._links.values():
            if link.state is State.LEAVING and link.raw is None and not link.sendq.size:
                with contextlib.suppress(OSError):
                    link.client.shutdown(socket.SHUT_WR)
        self._flush()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while self._links or self._launcher.pending():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._turn(remaining)
        for link in list(self._links.values()):
            # Still here after the grace: its client is not reading, or its worker is
            # stuck. Shutting both down ends the worker's wait.
            self._close_link(link)
            self._forget(link)
        self._launcher.finish(time.monotonic() + 0.3)
        # Workers asked for as the server ended and never let in: only sockets are left.
        self._launcher.started()
        for link, sockets in self._starting.values():
            for sock in (*sockets, link.channel, link.client):
                if sock is not None:
                    sock.close()
        self._starting.clear()

    # --- signals ------------------------------------------------------------------------

    def _install_signals(self) -> dict[int, object]:
        previous: dict[int, object] = {}
        handled = list(STOP_SIGNALS)
        if hasattr(signal, "SIGCHLD"):
            handled.append(signal.SIGCHLD)  # wakes the loop so ended workers get reaped
        for signum in handled:
            previous[signum] = signal.signal(signum, self._on_signal)
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        return previous

    def _restore_signals(self, previous: dict[int, object]) -> None:
        signal.set_wakeup_fd(-1)
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, frame: object) -> None:
        # Nothing here may take a lock: the handler runs on the main thread between any
        # two bytecodes, maybe while that thread holds the log queue's lock (a log line
        # from here then waited for it forever: the server never exited). The loop says
        # which signal it was, once it has stopped.
        if signum in STOP_SIGNALS and not self._stopping:
            self._stop_signal = signum
            self._stopping = True

    def wake(self) -> None:
        """Make the loop turn now (from any thread): the cluster's reader has entries."""
        with contextlib.suppress(OSError):
            self._wakeup_w.send(b"\0")

    def _drain_wakeup(self) -> None:
        self._reap_at = 0.0  # a signal: maybe SIGCHLD, a worker or fork server ended
        with contextlib.suppress(BlockingIOError):
            while self._wakeup_r.recv(4096):
                pass

    # --- connections --------------------------------------------------------------------

    def _accept(self) -> None:
        fresh: list[tuple[socket.socket, object, Ticket]] = []
        listener = self._listener
        # The bare accept: a descriptor and an address, no socket object yet.
        accept_fd: Callable[[], tuple[int, tuple[str, int]]] = listener._accept  # type: ignore[attr-defined]
        # Read once: each read of `socket.family` or `.type` makes an enum (8% of the
        # hub's time in a fork-mode storm, read twice per connection).
        family, kind, proto = listener.family, listener.type, listener.proto
        for _ in range(ACCEPTS_PER_TURN):
            try:
                fd, address = accept_fd()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # EMFILE and friends: the connection stays in the backlog; say so and
                # keep relaying for everyone already here.
                log.error("cannot accept: %s", exc)
                break
            ticket = self._admission.check(address[0], time.monotonic())
            if isinstance(ticket, Refusal) and not ticket.last_words:
                # Most of a churner's refusals: the descriptor is closed as it came, with
                # no socket object made for it (nor the system calls that takes).
                if not ticket.repeat:
                    log.warning("refused %s: " + ticket.reason, address)
                os.close(fd)
                continue
            client = socket.socket(family, kind, proto, fileno=fd)
            # Never blocks the hub. (A plain worker makes the connection blocking later,
            # to wait in recv: every write here passes DONTWAIT, whatever the flag.)
            client.setblocking(False)
            if isinstance(ticket, Refusal):
                self._refuse(client, address, ticket)
                continue
            if len(self._links) + len(self._starting) + len(fresh) >= self._config.max_clients:
                self._admission.release(ticket)
                log.warning("refused %s: server full", address)
                self._farewells.add(client, protocol.server_full(self._config.max_clients))
                continue
            with contextlib.suppress(OSError):
                # Chat is small lines that should go now, and every send here is
                # already one batch per turn: Nagle's delay would only add latency.
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            keep_alive(client)
            fresh.append((client, address, ticket))
        if fresh:
            self._admit(fresh)

    def _refuse(self, client: socket.socket, address: object, refusal: Refusal) -> None:
        """Turned away by admission and told why: no worker, no notice. (Those closed
        without a word never get this far, `_accept`.)"""
        if not refusal.repeat:
            # One template per reason, so each is rate-limited on its own (logs.RateLimit).
            log.warning("refused %s: " + refusal.reason, address)
        self._farewells.add(client, refusal.last_words)

    def _update_blocks(self, now: float) -> None:
        """Have the kernel drop the connection attempts of the addresses admission
        blocks now, and of no other."""
        for host, seconds in self._admission.take_new_blocks():
            log.warning(
                "dropping connection attempts from %s for %.0f s: it keeps connecting "
                "after being refused",
                host,
                seconds,
            )
        self._syn_filter.drop(self._admission.blocked(now))

    def _admit(self, clients: list[tuple[socket.socket, object, Ticket]]) -> None:
        """Start a worker for each new client - all at once, which the fork server does
        in one go - and let those that got one into the room, in the order they came
        (with TLS or a password: once their worker says they passed)."""
        starting: list[tuple[Link, Sockets]] = []
        for client, address, ticket in clients:
            relay: tuple[socket.socket, socket.socket] | None = None
            try:
                hub_end, worker_end = socket.socketpair()
                if self._config.tls:
                    try:
                        # The hub writes to its end as to the client; the worker encrypts.
                        relay = socket.socketpair()
                    except OSError:
                        hub_end.close()
                        worker_end.close()
                        raise
            except OSError as exc:
                log.error("cannot start a worker: %s", exc)
                self._admission.release(ticket)
                client.close()
                continue
            hub_end.setblocking(False)
            if relay is None:
                link = Link(next(self._ids), client, hub_end, ticket=ticket)
            else:
                relay[0].setblocking(False)
                link = Link(next(self._ids), relay[0], hub_end, raw=client, ticket=ticket)
            if isinstance(address, tuple) and address:
                link.address = str(address[0])
            if self._handing_over:
                link.handover = Handover(functools.partial(self._take, link))
            starting.append((link, (client, worker_end, relay[1] if relay else None)))
        results = self._launcher.start_all(
            [sockets for _, sockets in starting], [link.handover for link, _ in starting]
        )
        for (link, sockets), result in zip(starting, results, strict=True):
            if isinstance(result, Pending):
                self._starting[result.ticket] = (link, sockets)
            else:
                self._started(link, sockets, result)
        self._watch_launcher()

    def _take_started(self) -> None:
        """Workers the launcher answered for since we last looked (fork mode)."""
        for ticket, error in self._launcher.started():
            link, sockets = self._starting.pop(ticket)
            self._started(link, sockets, error)
        self._watch_launcher()

    def _watch_launcher(self) -> None:
        """Watch the socket the launcher's answers come on while some are awaited (it
        changes when a fork server is replaced)."""
        sock = self._launcher.answers_on
        if sock is self._answers_on:
            return
        if self._answers_on is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._answers_on)
        if sock is not None:
            self._selector.register(sock, _READ, _ANSWERS)
        self._answers_on = sock

    def _started(self, link: Link, sockets: Sockets, error: OSError | None) -> None:
        """Its worker started (``error`` None), or could not: let it in or refuse it."""
        client, worker_end, worker_relay = sockets
        if error is not None:
            # Out of processes or threads: this one client is refused, everyone else
            # goes on. It is told (best effort: its socket is fresh and empty; on a
            # TLS port inside TLS, the farewell's own handshake).
            log.error("cannot start a worker: %s", error)
            worker_end.close()
            link.channel.close()
            if worker_relay is not None:
                worker_relay.close()
                link.client.close()
            self._admission.release(link.ticket)
            self._farewells.add(client, protocol.SERVER_BUSY)
            return
        if self._config.gated:
            link.state = State.WAITING
        if self._config.flood.enabled:
            link.bucket = FloodBucket(self._config.flood, time.monotonic())
        self._links[link.id] = link
        self._selector.register(link.channel, _READ, link)
        if self._stopping:
            # Its worker started as the server was ending: it is told, and ended.
            self.post((link.id,), protocol.SERVER_SHUTTING_DOWN)
            self.dismiss(link.id)
        elif link.state is State.OPEN:
            self._joined(link)

    def _joined(self, link: Link) -> None:
        """It enters the room; it is silent until its worker hears from it."""
        self._room.join(link.id)
        self._silent[link.id] = (time.monotonic(), link)

    def _read(self, link: Link) -> None:
        try:
            size = link.channel.recv_into(self._inbox)
        except BlockingIOError:
            return
        except OSError:
            size = 0
        if not size:
            # The worker has ended: whatever it was doing, this client is gone.
            self._room.leave(link.id, "connection lost")
            self._forget(link)
            return
        if link.handover is not None:
            link.handover.read += size
        self._deliver(link, link.inbound.feed(self._inbox_view[:size].tobytes()))

    def _take(self, link: Link, lines: protocol.Lines) -> bool:
        """A thread worker's lines, on the worker's thread (`chatbox.server.handover`):
        handled as a turn of the loop would - unless the loop is busy, or this client's
        channel still holds something, or is not read now (backpressure, flood, held
        commands): then False, and the worker sends them up the channel."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            handover = link.handover
            if (
                self._stopping
                or link.state is not State.OPEN
                or not link.reading
                or self._over
                or handover is None
                or handover.read != handover.sent
            ):
                return False
            changes = self._interest_changes
            self._deliver(link, [lines])
            self._after_input(farewells=False)
            # The loop waits in its selector as it was when it began to wait: a new
            # deadline or a changed registration (a queue now waiting for room) is
            # only seen if it turns.
            if self._interest_changes != changes or self._next_deadline() is not None:
                self.wake()
            return True
        finally:
            self._lock.release()

    def _deliver(self, link: Link, events: list[ChannelEvent]) -> None:
        """Hand the room a client's events in order, as far as its flood allowance and
        its queue let it; the rest is held (and its channel not read) until they do."""
        for index, event in enumerate(events):
            if isinstance(event, protocol.Lines):
                block = event.block
                bucket = link.bucket
                if bucket is not None and link.state is State.OPEN:
                    now = time.monotonic()
                    cut = bucket.take(block, now)
                    if cut < len(block):
                        if bucket.flooding(now):
                            self._flooded(link)
                            return
                        rest = self._room.receive(link.id, block[:cut]) if cut else b""
                        if rest:
                            bucket.give_back(rest)
                        link.held = [protocol.Lines(rest + block[cut:]), *events[index + 1 :]]
                        self._held[link.id] = link
                        self._throttle(link, now + bucket.wait())
                        return
                rest = self._room.receive(link.id, block)
                if rest:
                    # Its replies would not fit, or it waits for its own command's
                    # answer: the rest waits, and so does its channel. It is charged to
                    # its flood allowance when it is handed over, not twice.
                    if bucket is not None:
                        bucket.give_back(rest)
                    link.held = [protocol.Lines(rest), *events[index + 1 :]]
                    self._held[link.id] = link
                    self._stop_reading(link)
                    return
            elif isinstance(event, LineDropped):
                self._room.line_too_long(link.id)
            elif isinstance(event, TimedOut):
                self._timed_out(link, event)
            elif isinstance(event, Heard):
                self._silent.pop(link.id, None)
            elif isinstance(event, Ready):
                if link.admit():
                    self._joined(link)
            elif isinstance(event, Refused):
                self._refused(link)
            else:
                # The client has gone: what is queued for it still goes out, then it is shut.
                self._room.leave(link.id, event.reason)
                self.dismiss(link.id)

    def _close_link(self, link: Link) -> None:
        """Shut the client's socket and the channel down: the worker sees the end and
        quits, and the client sees the end of the stream. Once: a link already SHUT or
        GONE is left alone."""
        if not link.shut():
            return
        if link.want_write:
            link.want_write = False
            self._waiting.pop(link.id, None)
            self._watch(link)
        # Only the hub's direction of the channel: the worker must be the one to close
        # its end, so the hub closes the client socket (shared with a worker thread)
        # only after it. The channel first: a plain worker waiting in a blocking recv
        # is woken by the connection's shutdown, below, and finds the channel shut.
        with contextlib.suppress(OSError):
            link.channel.shutdown(socket.SHUT_WR)
        # Both directions of the connection: the end of the reading one is what ends
        # that wait (the recv returns b"").
        with contextlib.suppress(OSError):
            link.client.shutdown(socket.SHUT_RDWR)

    def _forget(self, link: Link) -> None:
        """Drop every trace of a client whose worker has ended (once: -> GONE)."""
        if not link.forget():
            return
        self._links.pop(link.id, None)
        self._admission.release(link.ticket)
        self._dirty.pop(link.id, None)
        self._throttled.pop(link.id, None)
        self._held.pop(link.id, None)
        self._waiting.pop(link.id, None)
        self._verdicts.pop(link.id, None)
        self._silent.pop(link.id, None)
        self._evicted.discard(link.id)
        link.held = []
        self._not_over(link)
        for sock in (link.channel, link.client):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()
        if link.raw is not None:
            link.raw.close()

    # --- Postbox: what the room calls ---------------------------------------------------

    def post(self, member_ids: Iterable[int], data: bytes) -> None:
        """Queue ``data`` for each member; past --sendq its grace clock starts. Whether
        it is past the hard bound is judged at the end of the turn, once its socket took
        what it could (`_check_slow`), not here: the room is in the middle of a delivery."""
        limit = self._config.sendq
        links = self._links
        dirty = self._dirty
        if type(data) is not bytes:
            data = bytes(data)  # every queue shares the block: it must never change
        for member_id in member_ids:
            link = links[member_id]
            if not link.sending:
                continue
            link.sendq.append(data)
            dirty[member_id] = link
            if link.over_since is None and link.sendq.size > limit:
                link.over_since = time.monotonic()
                self._over[member_id] = link

    def dismiss(self, member_id: int) -> None:
        link = self._links.get(member_id)
        if link is not None and link.leave():
            self._dirty[member_id] = link

    def has_room(self, member_id: int) -> bool:
        # Half the bound: a reply never takes the asker's queue over it, so its own
        # replies never make it a slow reader.
        link = self._links.get(member_id)
        return link is None or link.sendq.size <= self._config.sendq // 2

    # --- one client's own limits: flood control, replies waiting for room -----------------

    def _stop_reading(self, link: Link) -> None:
        if link.reading:
            link.reading = False
            self._watch(link)

    def _resume(self, link: Link) -> None:
        """Read its channel again, unless something else still holds it back."""
        if link.gone or link.id in self._throttled or link.id in self._held:
            return
        link.reading = True
        self._watch(link)

    def _throttle(self, link: Link, until: float) -> None:
        self._throttled[link.id] = (until, link)
        self._stop_reading(link)

    def _end_throttles(self) -> None:
        now = time.monotonic()
        for member_id, (until, link) in list(self._throttled.items()):
            if until <= now:
                del self._throttled[member_id]
                self._resume(link)

    def _flooded(self, link: Link) -> None:
        log.warning("%s is flooding: disconnecting", self._room_name(link))
        self._throttled.pop(link.id, None)
        self._held.pop(link.id, None)
        link.held = []
        self._room.leave(link.id, "flooding")
        self.post((link.id,), protocol.FLOODING)
        self.dismiss(link.id)
        self._read_again(link)

    def _timed_out(self, link: Link, event: TimedOut) -> None:
        """Its worker timed it out (silent, or a line never finished): it is told why,
        the room hears it left, and it is closed once that line is out."""
        if link.state is not State.OPEN:
            return  # already on its way out
        log.info("%s timed out: %s", self._room_name(link), event.reason)
        self._room.leave(link.id, event.reason)
        self.post((link.id,), event.notice)
        self.dismiss(link.id)

    def _crowded(self) -> bool:
        """Whether the server is at least `PRESSURE` full (not counting connections
        already closed for being silent)."""
        threshold = max(1, int(self._config.max_clients * PRESSURE + 0.5))
        return len(self._links) - len(self._evicted) >= threshold

    def _close_silent(self) -> None:
        """While crowded, close the oldest connection that has sent nothing for
        `silent_timeout`, one after another, until it is not crowded."""
        expired = time.monotonic() - self._config.silent_timeout
        while self._silent and self._crowded():
            member_id, (since, link) = next(iter(self._silent.items()))
            if since > expired:
                return
            del self._silent[member_id]
            if link.state is not State.OPEN:
                continue
            self._evicted.add(member_id)
            log.info("%s sent nothing, and the server is nearly full", self._room_name(link))
            self._timed_out(link, IDLE)

    def _read_again(self, link: Link) -> None:
        # A leaving client's channel must be read to see its worker end.
        link.reading = True
        self._watch(link)

    def _releasable(self, link: Link) -> bool:
        return link.state is not State.OPEN or (
            link.id not in self._throttled
            and self.has_room(link.id)
            and self._room.accepts(link.id)
        )

    def _release_held(self) -> None:
        """Hand the room what a client's commands left waiting, once its queue has
        room; flush what that produced."""
        released = False
        for member_id, link in list(self._held.items()):
            if link.state is not State.OPEN:
                del self._held[member_id]
                link.held = []
                self._read_again(link)
                continue
            if not self._releasable(link):
                continue
            del self._held[member_id]
            events, link.held = link.held, []
            self._deliver(link, events)
            self._resume(link)
            released = True
        if released:
            self._flush()

    # --- the password gate ---------------------------------------------------------------

    def _refused(self, link: Link) -> None:
        """A wrong password: its verdict waits, longer for each failure from its address."""
        if link.state is not State.WAITING:
            return
        now = time.monotonic()
        delay = self._penalties.fail(link.address, now)
        log.warning("wrong password from %s", link.address or "a client")
        self._verdicts[link.id] = (now + delay, link)

    def _give_verdicts(self) -> None:
        now = time.monotonic()
        for member_id, (at, link) in list(self._verdicts.items()):
            if at <= now:
                del self._verdicts[member_id]
                if link.leave():
                    self.post((link.id,), protocol.WRONG_PASSWORD)

    # --- slow readers -------------------------------------------------------------------

    def _check_slow(self) -> None:
        """Cut off whoever is past the hard bound after this turn's sends, or stayed
        over --sendq past its grace. Only they pay: nobody else's input is held back
        meanwhile. (A cut-off tells the room, which queues more: hence the loop.)"""
        while self._over:
            expired = time.monotonic() - self._config.slow_timeout
            hard = self._config.hard_bound
            doomed = [
                link
                for link in self._over.values()
                if link.sendq.size > hard or (link.over_since or 0.0) <= expired
            ]
            if not doomed:
                return
            for link in doomed:
                self._cut(link)

    def _cut(self, link: Link) -> None:
        if not link.sending:
            self._not_over(link)
            return
        log.warning("%s is too slow: disconnecting", self._room_name(link))
        self._room.leave(link.id, "too slow")
        link.sendq.clear()
        # Best effort: its socket buffer is usually full by now. The leading LF ends
        # whatever partial line the buffer ends with.
        with contextlib.suppress(OSError):
            link.client.send(b"\n" + protocol.TOO_SLOW, DONTWAIT)
        self._close_link(link)
        self._not_over(link)
        self._flush()

    def _check_stalled(self) -> None:
        """Cut off whoever's queue has not moved for `stall_timeout`, also one that is
        only leaving (it quit, then stopped reading): under --sendq, the slow-reader
        rule above never sees them."""
        expired = time.monotonic() - self._config.stall_timeout
        while self._waiting:
            link = next(iter(self._waiting.values()))
            if link.moved_at > expired:
                return
            del self._waiting[link.id]
            self._cut(link)

    def _not_over(self, link: Link) -> None:
        if link.over_since is not None:
            link.over_since = None
            del self._over[link.id]

    def _room_name(self, link: Link) -> str:
        return self._room.name_of(link.id) if link.id in self._room else f"client {link.id}"

    # --- flushing -----------------------------------------------------------------------

    def _flush(self) -> None:
        """One send per recipient that has something queued; what does not fit waits
        for its socket to have room again. The room's run of join and leave notices
        goes out first, unless the room holds it (a storm: `Room.end_turn`)."""
        self._end_turn()
        while self._dirty:
            dirty, self._dirty = self._dirty, {}
            for link in dirty.values():
                if not link.sending:
                    continue
                if link.sendq.size:
                    self._send(link)
                want_write = link.sendq.size > 0
                if link.want_write != want_write:
                    link.want_write = want_write
                    if want_write:
                        link.start_stall_timer(time.monotonic())
                        self._waiting[link.id] = link
                    else:
                        self._waiting.pop(link.id, None)
                    self._watch(link)
                if link.state is State.LEAVING and not link.sendq.size:
                    self._close_link(link)
            # A client whose socket failed is gone; telling the room queues more.
            while self._broken:
                self._room.leave(self._broken.pop().id, "connection reset")
            self._end_turn()

    def _end_turn(self) -> None:
        self._run_due = self._room.end_turn()

    def _send(self, link: Link) -> None:
        try:
            sent = link.sendq.send(link.client)
        except BlockingIOError:
            return
        except OSError:
            # Reset or gone: shut everything down so that its worker ends too.
            self._close_link(link)
            self._not_over(link)
            self._broken.append(link)
            return
        if sent and link.sendq.size and link.want_write and link.took(sent, time.monotonic()):
            # It moved: to the back of the line of queues waiting.
            self._waiting.pop(link.id, None)
            self._waiting[link.id] = link
        if link.over_since is not None and link.sendq.size <= self._config.sendq:
            self._not_over(link)

    def _watch(self, link: Link) -> None:
        """Tell the selector what this link waits for now: input on its channel
        (unless held back for its own sake), room to write on its client socket (if
        output is queued). A GONE link's sockets are closed and unregistered: nothing to tell."""
        if link.gone:
            return
        self._set_interest(link.channel, link, link.reading)
        self._set_interest(link.client, link, link.want_write, _WRITE)

    def _set_interest(
        self, sock: socket.socket, link: Link, wanted: bool, event: int = _READ
    ) -> None:
        try:
            self._selector.get_key(sock)
        except KeyError:
            if wanted:
                self._selector.register(sock, event, link)
                self._interest_changes += 1
            return
        if not wanted:
            self._selector.unregister(sock)
            self._interest_changes += 1
