"""Redis calls off the hub's thread: a queue of calls run in order by a thread of its own.

The hub serves every client of a node from one thread, so it must never wait on Redis:
one slow answer (a distant Redis, a busy one, one that stopped answering) would stall
the whole room, and a storm of joins would cost the room several round trips each. The
room hands each call that needs Redis to a `Calls` queue instead: its thread runs the
calls one at a time, in the order they were given (so a release of a name and a later
claim of it keep their order), and keeps each outcome. The thread wakes the hub, and the
hub takes the outcomes (`finish`) on its own thread at its next turn, in the order the
calls ended: everything the room holds is touched by the hub's thread alone.

A call that fails with the outage exception it was made with (`chatbox.server.cluster`'s
`Unavailable`: Redis did not answer within the timeout, or the node is backing off) has
its ``failed`` outcome run instead: the room tells its client
aloud; nothing is dropped without a word.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("chatbox.cluster")

T = TypeVar("T")

Outcome = Callable[[], None]


def _nothing() -> None:
    """The outcome of a call nobody waits on."""


class Calls:
    """Calls run in order on one thread; their outcomes run on the hub's thread."""

    def __init__(self, name: str, outage: type[Exception]) -> None:
        self._name = name
        self._outage = outage
        self._todo: collections.deque[Callable[[], Outcome]] = collections.deque()
        self._ready = threading.Condition()
        self._done: collections.deque[Outcome] = collections.deque()
        self._unfinished = 0  # submitted, outcome not yet run (hub's thread only)
        self._stopping = False
        self._wake: Callable[[], None] = _nothing
        self._thread: threading.Thread | None = None

    def start(self, wake: Callable[[], None]) -> None:
        """Start the thread; ``wake`` makes the hub turn (from any thread)."""
        self._wake = wake
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def submit(
        self,
        work: Callable[[], T],
        then: Callable[[T], None] | None = None,
        failed: Outcome | None = None,
    ) -> None:
        """Run ``work`` on the thread; then ``then(result)`` on the hub's thread, or
        ``failed()`` if Redis could not be used. Called on the hub's thread."""

        def call() -> Outcome:
            try:
                result = work()
            except self._outage:
                return failed or _nothing
            except Exception:
                # A bug, not an outage: said in the log, and the client is answered
                # as for an outage rather than left waiting forever. (While the node
                # stops, its connections are closed under the call: nothing to say.)
                if not self._stopping:
                    log.exception("cluster call failed")
                return failed or _nothing
            if then is None:
                return _nothing
            return lambda: then(result)

        self._unfinished += 1
        with self._ready:
            self._todo.append(call)
            self._ready.notify()

    @property
    def idle(self) -> bool:
        """Whether every call submitted has ended and had its outcome run."""
        return not self._unfinished

    def finish(self) -> None:
        """Run the outcomes of the calls that ended, in order (on the hub's thread)."""
        done = self._done
        while done:
            outcome = done.popleft()
            self._unfinished -= 1
            outcome()

    def drain(self, timeout: float) -> bool:
        """Wait (at most ``timeout``) for every call submitted to end, running outcomes
        as they come: what a node does as it stops. False if some did not end."""
        with self._ready:
            self._ready.wait_for(lambda: len(self._done) >= self._unfinished, timeout)
        self.finish()
        return self.idle

    def stop(self) -> None:
        """End the thread once its current call is over (it is not waited for: a call
        may be stuck on a Redis that does not answer, and the node must stop now)."""
        with self._ready:
            self._stopping = True
            self._ready.notify_all()

    def _run(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._todo or self._stopping)
                if self._stopping:
                    return
                call = self._todo.popleft()
            outcome = call()
            with self._ready:
                self._done.append(outcome)
                self._ready.notify_all()
            self._wake()
