"""A worker: reads one client connection, in a forked process or a thread.

It reads what the client sends, turns it into sanitised lines with the protocol's
`LineDecoder`, and passes them up its channel (one end of a socketpair, in the format of
`chatbox.server.channel`) to the hub. The
hub writes to the client itself. So a worker holds no shared state at all, and the same
function serves in both concurrency modes.

In thread mode a block of lines may go straight into the hub instead, on the worker's
own thread, when the hub is idle (`chatbox.server.handover`); the channel carries
everything else. When the hub shuts the client's connection and its end of the channel
down, the worker's job is over.

A connection behind the password gate (`chatbox.server.gate`) is first told
`* password required` and its first line judged here, before anything reaches the
room; with TLS (`chatbox.server.tls`) the worker also speaks TLS to its client and
relays the hub's output to it. Either way the hub learns over the channel when the
client may enter the room (a ready note). Without both, nothing of it runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatbox import protocol
from chatbox.server.channel import (
    encode_event,
    end_note,
    heard_note,
    ready_note,
    refused_note,
)
from chatbox.server.gate import LOGIN_TIMEOUT, Login
from chatbox.server.timeouts import InputClock, InputTimeouts, Trickle

if TYPE_CHECKING:
    from chatbox.server.handover import Handover
    from chatbox.server.tls import TlsConfig

log = logging.getLogger("chatbox.worker")

# One recv takes up to this much: large enough that a busy client's lines arrive in
# batches (Python pays per call, not per byte), small enough to bound a worker's memory.
RECV_SIZE = 65536
# At the end, at most this many reads of what the client sent unread (a bound: a client
# that keeps sending is not waited for).
DISCARD_READS = 4

# Every write to a client socket passes this flag, the hub's above all (its queues,
# `chatbox.server.link.SendQ`, its notices, its farewells), so that none ever waits,
# whatever the socket's own flag says: a plain worker makes its connection blocking and
# waits in `recv` (`_BlockingRecv`), and that flag lives on the connection's file
# description, which the hub shares (the very socket object in thread mode, the same
# description passed to the worker's process in fork mode). A stopped reader must
# never stall the room. 0 where the system lacks it: there no worker blocks.
DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
# Where a worker waits in a blocking `recv`, with its timeouts as the kernel's receive
# timeout: TCP on Linux, whose `shutdown` of the connection (the hub's end of a client)
# ends a `recv` waiting on it in another process or thread.
BLOCKING_RECV = bool(DONTWAIT) and sys.platform.startswith("linux")
_TCP = (socket.AF_INET, socket.AF_INET6)  # the connections whose shutdown was checked so


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker is given, the same for all (the launcher holds it)."""

    max_line: int = protocol.DEFAULT_MAX_LINE
    timeouts: InputTimeouts = field(default_factory=InputTimeouts)
    tls: TlsConfig | None = None  # speak TLS to the client (and relay the hub's output)
    password: bytes | None = None  # the first line must be `/pass` this


class _Waiter:
    """Waits until the client or the channel is ready.

    `select.poll` where it exists: it needs no descriptor of its own, which matters with
    thousands of worker threads, and has no FD_SETSIZE limit. `select.select` on
    Windows, where poll is missing and select works on sockets of any number.
    """

    def __init__(self, client: socket.socket, channel: socket.socket) -> None:
        self._client = client
        self._channel = channel
        self._client_fd = client.fileno()
        self._channel_fd = channel.fileno()
        self._poll = select.poll() if hasattr(select, "poll") else None
        self._interest: tuple[bool, bool] | None = None

    def wait(
        self, client_in: bool, channel_out: bool, timeout: float | None = None
    ) -> tuple[bool, bool, bool]:
        """(channel readable, channel writable, client readable); all False once
        ``timeout`` seconds passed with nothing ready.

        Errors and hang-ups count as ready: the next call on that socket reports them.
        """
        if self._poll is None:
            readers = [self._channel, self._client] if client_in else [self._channel]
            writers = [self._channel] if channel_out else []
            readable, writable, _ = select.select(readers, writers, [], timeout)
            return self._channel in readable, self._channel in writable, self._client in readable
        if self._interest != (client_in, channel_out):
            if self._interest is None:
                self._poll.register(self._channel_fd, select.POLLIN)
            elif self._interest[0]:
                self._poll.unregister(self._client_fd)
            self._interest = (client_in, channel_out)
            self._poll.modify(self._channel_fd, select.POLLIN | (select.POLLOUT * channel_out))
            if client_in:
                self._poll.register(self._client_fd, select.POLLIN)
        channel_events = client_events = 0
        wait_ms = None if timeout is None else max(0, int(timeout * 1000) + 1)
        for fd, events in self._poll.poll(wait_ms):
            if fd == self._channel_fd:
                channel_events = events
            else:
                client_events = events
        return (
            bool(channel_events & ~select.POLLOUT),
            bool(channel_events & (select.POLLOUT | select.POLLERR | select.POLLHUP)),
            bool(client_events),
        )


class _BlockingRecv:
    """A plain worker's client, read with a blocking `recv` (`BLOCKING_RECV`): one system
    call a line where `poll` then `recv` took two, and in thread mode the interpreter
    lock is free while it waits.

    The client's timeouts become the kernel's receive timeout (``SO_RCVTIMEO``: a `recv`
    that waited that long fails with EAGAIN, BlockingIOError). The option is set again
    only when a wait must end sooner than the one set: one that ends early only makes
    the worker look at its clock and wait again. Each line restarts the idle clock, so
    the option is set a little shorter than asked (`_kernel_wait`): the next line's wait,
    a few microseconds longer, then fits without another system call.
    """

    __slots__ = ("_client", "_set")

    def __init__(self, client: socket.socket) -> None:
        self._client = client
        self._set = math.inf  # the kernel's receive timeout (none)
        # Only the description's flag: the socket object keeps its own (non-blocking)
        # timeout, so Python calls recv at once, without a poll of its own first.
        os.set_blocking(client.fileno(), True)

    def expect(self, timeout: float | None) -> None:
        """The next `recv` must return within ``timeout`` seconds (None: no limit)."""
        if timeout is None or timeout >= self._set:
            return
        wait = _kernel_wait(timeout)
        seconds = int(wait)
        micros = int((wait - seconds) * 1e6)
        if not seconds:
            # Rounded up (the wait ends no sooner than asked), never to 0: no limit at all.
            micros = min(max(math.ceil(wait * 1e6), 1), 999_999)
        self._client.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", seconds, micros)
        )
        self._set = seconds + micros / 1e6


def _kernel_wait(timeout: float) -> float:
    """What to give the kernel for a wait of at most ``timeout`` seconds: a little less
    (up to a second, an eighth), so that a wait asked for next, a little longer, still
    fits; under a second, the timeout itself."""
    if timeout < 1.0:
        return timeout
    return timeout - min(timeout / 8, 1.0)


def _hub_done(channel: socket.socket) -> bool:
    """Whether the hub has shut this worker's channel down (its end of the client)."""
    try:
        return channel.recv(1) == b""
    except BlockingIOError:
        return False


def serve_connection(
    client: socket.socket,
    channel: socket.socket,
    config: WorkerConfig,
    relay: socket.socket | None = None,
    handover: Handover | None = None,
) -> None:
    """Pass what one client sends up to the hub until the hub shuts the channel down.

    With TLS (``config.tls``), ``relay`` is the worker's end of the socketpair the hub
    writes this client's output to; `chatbox.server.tls.serve_tls` serves it instead.
    With a ``handover`` (thread mode), a block of lines goes straight into the hub when
    it can take it (`chatbox.server.handover`), and up the channel otherwise.

    In the common case (nothing waiting for the hub, the client not paused as a
    trickle) the worker waits in a blocking `recv` on its client, its timeouts given to
    the kernel (`_BlockingRecv`, Linux): the hub ends a client by shutting its
    connection down, which ends that wait too. Otherwise both sockets are waited on
    together with `poll`. Lines for the hub that do not fit in the channel wait here,
    and meanwhile the client is not read (TCP holds it back): that is how a hub that
    pauses its input slows the senders down. While it does, the client's timeouts do
    not run: the wait is the server's, not the client's.

    A client silent for ``config.timeouts.idle``, or with a line begun and not finished
    within ``config.timeouts.line``, is reported to the hub, which tells it and the room
    and ends it; meanwhile what it still sends is read and thrown away, so that closing the socket
    does not reset the connection before the client has read why.

    Resource handling: on return the client socket is shut down (the client sees the
    end even while the hub still holds the socket) and the channel is closed. The client
    socket itself is closed by the hub, its single owner, once the channel's end tells
    it this worker is done.

    Error handling: the client closing or resetting the connection is passed up as a
    note in the line stream; the hub decides what the room hears. Nothing the client
    sends can raise out of here.
    """
    if config.tls is not None:
        from chatbox.server.tls import serve_tls

        assert relay is not None, "a TLS worker needs the hub's output relayed"
        serve_tls(client, relay, channel, config, config.tls)
        return
    channel.setblocking(False)
    client.setblocking(False)
    decoder = protocol.LineDecoder(config.max_line)
    waiter = _Waiter(client, channel)
    blocking: _BlockingRecv | None = None
    upward = bytearray()  # for the hub, waiting for room in the channel
    reading = True  # the client may still send
    try:
        if config.password is not None:
            admitted = _login(client, waiter, decoder, Login(config.password), upward)
            if admitted is None:
                return  # the hub is done with this client
            reading = admitted
        # Once it timed out (reported to the hub), what the client sends is thrown away.
        clock = InputClock(config.timeouts, time.monotonic())
        trickle = Trickle()  # a client that trickles a line is read a few times a second
        if config.password is not None and reading:
            # It sent its password: it is heard (and a line begun after has its clock).
            clock.heard(time.monotonic(), False, decoder.holding)
            upward += heard_note()
        if BLOCKING_RECV and client.family in _TCP:
            blocking = _BlockingRecv(client)
        while True:
            now = time.monotonic()
            timeout = None
            if upward or reading:
                timeout, timed_out = clock.turn(now, held=bool(upward))
                if timed_out:
                    upward += timed_out
                    continue
            # (Once timed out, what the client sends is read and thrown away at once:
            # the hub closes the socket, and unread input would reset the connection
            # and lose the line that tells the client why.)
            pause = trickle.pause(now) if reading and not upward and not clock.expired else 0.0
            if pause:
                timeout = pause if timeout is None else min(timeout, pause)
            client_wanted = reading and not upward and not pause
            if client_wanted and blocking is not None:
                # The common case: wait in recv itself (one system call, and in thread
                # mode the interpreter lock is free meanwhile). The hub's end of this
                # client shuts the connection down, which ends the wait (below).
                blocking.expect(timeout)
                client_in = True
                flags = 0
            else:
                channel_in, channel_out, client_in = waiter.wait(
                    client_wanted, bool(upward), timeout
                )
                if channel_in and _hub_done(channel):
                    return  # the hub is done with this client
                flags = DONTWAIT
            if client_in and client_wanted:
                try:
                    data = client.recv(RECV_SIZE, flags)
                except BlockingIOError:
                    continue  # a blocking recv's time is up (or poll woke for nothing)
                except OSError:
                    data, reset = b"", True
                else:
                    reset = False
                if not data and blocking is not None and _hub_done(channel):
                    return  # the hub shut the connection down: it is done with this client
                if not data:
                    reading = False
                    if not clock.expired:
                        upward += end_note(reset)
                elif not clock.expired:
                    events = decoder.feed(data)
                    if not (
                        handover is not None
                        and not upward
                        and len(events) == 1
                        and isinstance(events[0], protocol.Lines)
                        and handover.give(events[0])
                    ):
                        for event in events:
                            upward += encode_event(event)
                    now = time.monotonic()
                    if clock.heard(now, bool(events), decoder.holding):
                        upward += heard_note()
                    trickle.read(len(data), bool(events), decoder.holding, now)
                channel_out = True
            if upward and channel_out:
                try:
                    sent = channel.send(upward)
                except BlockingIOError:
                    sent = 0
                del upward[:sent]
                if handover is not None:
                    handover.sent += sent
    except OSError as exc:
        # Only the channel can get here (or making the client's wait blocking, on a
        # connection already gone): the hub went away (server ending abruptly).
        log.debug("worker channel failed: %s", exc)
    finally:
        release_client(client, channel)


def release_client(client: socket.socket, *ends: socket.socket) -> None:
    """A worker (plain or TLS) is done with its client: shut the connection down, so
    the client sees the end while the hub still holds the socket (the hub, its single
    owner, closes it once the channel's end tells it this worker is done), then close
    the worker's own ``ends`` (its channel, a TLS worker's relay too).

    What the client sent and nobody read yet is taken first: a socket closed with
    unread input resets the connection, and the reset throws away, at the client, the
    line the hub just sent to say why it ends (a client that trickles is read only a
    few times a second, so a few of its bytes are often waiting)."""
    with contextlib.suppress(OSError):
        for _ in range(DISCARD_READS):
            if not client.recv(RECV_SIZE, socket.MSG_DONTWAIT):
                break
    try:
        client.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    for end in ends:
        end.close()


def _login(
    client: socket.socket,
    waiter: _Waiter,
    decoder: protocol.LineDecoder,
    login: Login,
    upward: bytearray,
) -> bool | None:
    """The password gate on a plain connection, up to its first line.

    Puts what the hub must hear into ``upward``: the ready note and the client's lines
    after the password, or the refusal. Returns whether the client may still be read
    (False after a refusal or the end of its stream), None if the hub ended it first.
    The hub writes nothing to a client before its ready note, so this may.
    """
    # A fresh socket has room for one line; if it has not, the client sees no prompt.
    try:
        client.send(protocol.PASSWORD_REQUIRED)
    except OSError:
        pass
    deadline = time.monotonic() + LOGIN_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            try:
                client.send(protocol.PASSWORD_TIMEOUT)
            except OSError:
                pass
            upward += end_note(False)
            return False
        channel_in, _, client_in = waiter.wait(True, False, remaining)
        if channel_in:
            return None
        if not client_in:
            continue
        try:
            data = client.recv(RECV_SIZE)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not data:
            upward += end_note(False)
            return False
        verdict, rest = login.feed(decoder.feed(data))
        if verdict is None:
            continue
        if not verdict:
            upward += refused_note()
            return False
        upward += ready_note()
        for event in rest:
            upward += encode_event(event)
        return True
