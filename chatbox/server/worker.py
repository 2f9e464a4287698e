"""A worker: reads one client connection, in a forked process or a thread.

It reads what the client sends, turns it into sanitised lines with the protocol's
`LineDecoder`, and passes them up its channel (one end of a socketpair, in the format of
`chatbox.server.channel`) to the hub. The
hub writes to the client itself. So a worker holds no shared state at all, and the same
function serves in both concurrency modes.

When the hub shuts its end of the channel down, the worker's job is over.
"""

from __future__ import annotations

import logging
import select
import socket

from chatbox import protocol
from chatbox.server.channel import encode_event, end_note

log = logging.getLogger("chatbox.worker")

# One recv takes up to this much: large enough that a busy client's lines arrive in
# batches (Python pays per call, not per byte), small enough to bound a worker's memory.
RECV_SIZE = 65536


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

    def wait(self, client_in: bool, channel_out: bool) -> tuple[bool, bool, bool]:
        """(channel readable, channel writable, client readable).

        Errors and hang-ups count as ready: the next call on that socket reports them.
        """
        if self._poll is None:
            readers = [self._channel, self._client] if client_in else [self._channel]
            writers = [self._channel] if channel_out else []
            readable, writable, _ = select.select(readers, writers, [])
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
        for fd, events in self._poll.poll():
            if fd == self._channel_fd:
                channel_events = events
            else:
                client_events = events
        return (
            bool(channel_events & ~select.POLLOUT),
            bool(channel_events & (select.POLLOUT | select.POLLERR | select.POLLHUP)),
            bool(client_events),
        )


def serve_connection(client: socket.socket, channel: socket.socket, max_line: int) -> None:
    """Pass what one client sends up to the hub until the hub shuts the channel down.

    Both sockets are non-blocking and waited on together. Lines for the hub that do not
    fit in the channel wait here, and meanwhile the client is not read (TCP holds it
    back): that is how a hub that pauses its input slows the senders down.

    Resource handling: on return the client socket is shut down (the client sees the
    end even while the hub still holds the socket) and the channel is closed. The client
    socket itself is closed by the hub, its single owner, once the channel's end tells
    it this worker is done.

    Error handling: the client closing or resetting the connection is passed up as a
    note in the line stream; the hub decides what the room hears. Nothing the client
    sends can raise out of here.
    """
    channel.setblocking(False)
    client.setblocking(False)
    decoder = protocol.LineDecoder(max_line)
    waiter = _Waiter(client, channel)
    upward = bytearray()  # for the hub, waiting for room in the channel
    reading = True  # the client may still send
    try:
        while True:
            channel_in, channel_out, client_in = waiter.wait(reading and not upward, bool(upward))
            if channel_in:
                try:
                    if channel.recv(1) == b"":
                        return  # the hub is done with this client
                except BlockingIOError:
                    pass
            if client_in and reading and not upward:
                try:
                    data = client.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data, reset = b"", True
                else:
                    reset = False
                if not data:
                    reading = False
                    upward += end_note(reset)
                else:
                    for event in decoder.feed(data):
                        upward += encode_event(event)
                channel_out = True
            if upward and channel_out:
                try:
                    sent = channel.send(upward)
                except BlockingIOError:
                    sent = 0
                del upward[:sent]
    except OSError as exc:
        # Only the channel can get here: the hub went away (server ending abruptly).
        log.debug("worker channel failed: %s", exc)
    finally:
        try:
            client.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        channel.close()
