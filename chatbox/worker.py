"""A worker: serves exactly one client connection, in a forked process or a thread.

It reads what the client sends, turns it into sanitised lines with the protocol's
`LineDecoder`, and passes them to the hub over its channel (one end of a socketpair).
Whatever the hub writes to the channel is already formatted for this client; the worker
writes it to the client socket as it comes. So a worker holds no shared state at all, and
the same function serves in both concurrency modes.

Both sockets are blocking, which keeps the worker small: when the client stops reading,
the worker blocks in `sendall`, the hub's queue for it grows past its bound, and the hub
cuts the client off by shutting its socket down, which ends the blocked `sendall`.
"""

from __future__ import annotations

import logging
import select
import socket

from chatbox import protocol

log = logging.getLogger("chatbox.worker")

# One recv takes up to this much: large enough that a busy client's lines arrive in
# batches (Python pays per call, not per byte), small enough to bound a worker's memory.
RECV_SIZE = 65536


class _Waiter:
    """Waits until the client or the channel is readable.

    `select.poll` where it exists: it needs no descriptor of its own, which matters with
    thousands of worker threads, and has no FD_SETSIZE limit. `select.select` on
    Windows, where poll is missing and select works on sockets of any number.
    """

    def __init__(self, client: socket.socket, channel: socket.socket) -> None:
        self._client = client
        self._channel = channel
        self._client_fd = client.fileno()
        self._channel_fd = channel.fileno()
        self._watch_client = True
        self._poll = select.poll() if hasattr(select, "poll") else None
        if self._poll is not None:
            flags = select.POLLIN | select.POLLPRI
            self._poll.register(self._client_fd, flags)
            self._poll.register(self._channel_fd, flags)

    def ignore_client(self) -> None:
        if self._watch_client:
            self._watch_client = False
            if self._poll is not None:
                self._poll.unregister(self._client_fd)

    def wait(self) -> tuple[bool, bool]:
        """(channel readable, client readable); errors and hang-ups count as readable."""
        if self._poll is not None:
            ready = {fd for fd, _ in self._poll.poll()}
            return self._channel_fd in ready, self._client_fd in ready
        watched = [self._channel, self._client] if self._watch_client else [self._channel]
        readable, _, _ = select.select(watched, [], [])
        return self._channel in readable, self._client in readable


def serve_connection(client: socket.socket, channel: socket.socket, max_line: int) -> None:
    """Relay between one client and the hub until the hub closes the channel.

    Resource handling: on return the client socket is shut down (so the client sees the
    end at once even if the hub still holds it) and the channel is closed; the client
    socket itself is closed by the hub, its single owner, once the channel's end tells
    it this worker is done.

    Error handling: the client closing or resetting is reported to the hub as a note in
    the line stream; the hub decides what the room hears. Nothing the client sends can
    raise out of here.
    """
    decoder = protocol.LineDecoder(max_line)
    waiter = _Waiter(client, channel)
    reading = True  # the client may still send
    writable = True  # the client can still be written to
    try:
        while True:
            channel_ready, client_ready = waiter.wait()
            if channel_ready:
                data = channel.recv(RECV_SIZE)
                if not data:
                    return  # the hub is done with this client
                if writable:
                    try:
                        client.sendall(data)
                    except OSError:
                        writable = False
                        if reading:
                            reading = False
                            waiter.ignore_client()
                            channel.sendall(protocol.note(protocol.NOTE_RESET))
            if client_ready and reading:
                try:
                    data = client.recv(RECV_SIZE)
                except OSError:
                    data, end = b"", protocol.NOTE_RESET
                else:
                    end = protocol.NOTE_CLOSED
                if not data:
                    reading = False
                    waiter.ignore_client()
                    channel.sendall(protocol.note(end))
                    continue
                out = []
                for event in decoder.feed(data):
                    if isinstance(event, protocol.Lines):
                        out.append(event.block)
                    else:
                        out.append(protocol.note(protocol.NOTE_TOO_LONG))
                if out:
                    channel.sendall(b"".join(out))
    except OSError as exc:
        # Only the channel can get here: the hub went away (server ending abruptly).
        log.debug("worker channel failed: %s", exc)
    finally:
        try:
            client.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        channel.close()
