"""Thread mode's short cut for a line: the worker hands it to the hub on its own thread.

Through the channel, one line costs two wake-ups: the worker's (its client's bytes
arrived) and then the hub's (the channel has them). In thread mode the hub is an object
in the same process, so when the hub is not busy - it waits in its selector, holding
nothing - the worker may run the hub's part of the line itself: it takes the hub's
lock without waiting, and the hub hands the room the line and sends what that
produced, exactly as its own loop would. The hub stays the one owner of the room and
of all output: whoever holds its lock is running the hub's code, one thread at a time.

The channel stays the way for everything else, and the way back whenever the short
cut cannot be taken: the hub is busy (the lock is taken), the worker has lines still
waiting for room in the channel, or the hub has not read everything this worker sent
up the channel yet (`sent` and `read` differ) - so lines keep their order, whichever
way each went. Notes (ends, timeouts, a too-long line) always go through the channel.
"""

from __future__ import annotations

from collections.abc import Callable

from chatbox import protocol


class Handover:
    """One thread worker's short cut into the hub (see the module docstring).

    ``sent`` is written by the worker alone (bytes it sent up its channel), ``read`` by
    the hub alone, under its lock (bytes it took from that channel); ``give`` compares
    them under the hub's lock, when the worker is not sending.
    """

    __slots__ = ("_give", "read", "sent")

    def __init__(self, give: Callable[[protocol.Lines], bool]) -> None:
        self._give = give
        self.sent = 0
        self.read = 0

    def give(self, lines: protocol.Lines) -> bool:
        """Hand the hub these lines now; False if it cannot take them this way (the
        worker then sends them up its channel, as without a short cut)."""
        return self._give(lines)
