"""Pty readers: a few threads that each wait on several parties' ptys at once.

A party's terminal must be read *continuously* - an unread pty blocks its client at
about 17 KiB, which would turn a slow harness into a false deadlock. A thread per party
that wakes every 0.2 s to look at its one descriptor (with select(), which cannot take
one above 1023) costs a wake-up per party per look. A reader here waits on up to
`PTYS_PER_READER` terminals on one selector (epoll on Linux: no limit at 1024) and reads
whichever have output; it sleeps while none has.

Why not one reader for all: the kernel shares the CPU between *threads*. In a room of
500 on two cores the load average passes 100, and one reader thread got one share
against 500 clients writing - too little to keep their terminals drained, so they
blocked and their lines came late or were cut off. A reader per few ptys keeps the
harness's reading in proportion to the parties it reads.

Registration changes are queued and applied by the reader thread itself, between two
waits (a pipe wakes it): a selector is not safe to change from another thread while it
waits, and a descriptor must leave the selector before its owner closes it - a new pty
could get the same number.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
from collections import deque
from collections.abc import Callable
from typing import ClassVar

READ_SIZE = 65536
PTYS_PER_READER = 4
REMOVE_WAIT = 5.0  # s an owner waits for the reader to let go of a descriptor

OnData = Callable[[bytes], None]  # b"" once: the terminal closed (EOF or EIO)


class PtyReader:
    """A reader thread for a few ptys (`PtyReader.get` gives a new pty its reader); its
    thread starts with its first descriptor and runs, as a daemon, while the process
    does.

    Error handling: a callback that raises is the harness's bug, not the run's - it is
    not caught here, so it ends the reader loudly instead of silently dropping output.
    """

    _readers: ClassVar[list[PtyReader]] = []
    _readers_lock = threading.Lock()

    @classmethod
    def get(cls) -> PtyReader:
        """A reader with room for one more pty (counted as taken until `remove`)."""
        with cls._readers_lock:
            reader = next((r for r in cls._readers if r._taken < PTYS_PER_READER), None)
            if reader is None:
                reader = cls()
                cls._readers.append(reader)
            reader._taken += 1
            return reader

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._owners: dict[int, OnData] = {}  # every descriptor added and not yet removed
        self._paused: set[int] = set()
        self._changes: deque[Callable[[], None]] = deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._taken = 0  # ptys given this reader by `get` and not removed yet

    # -- what owners call (any thread) --------------------------------------------

    def add(self, fd: int, on_data: OnData) -> None:
        """Read ``fd`` from now on; ``on_data`` gets each read, and b"" once at the end."""
        self._change(lambda: self._add(fd, on_data))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="pty-reader", daemon=True)
                self._thread.start()

    def pause(self, fd: int) -> None:
        """Stop reading ``fd`` (its client blocks once its terminal buffer is full)."""
        self._change(lambda: self._pause(fd))

    def resume(self, fd: int) -> None:
        self._change(lambda: self._resume(fd))

    def remove(self, fd: int) -> bool:
        """Stop reading ``fd`` for good, before its owner closes it; returns once the
        reader has let go of it (False if that took longer than REMOVE_WAIT)."""
        done = threading.Event()

        def remove() -> None:
            self._forget(fd)
            done.set()

        self._change(remove)
        with PtyReader._readers_lock:
            self._taken -= 1
        return done.wait(REMOVE_WAIT)

    def _change(self, change: Callable[[], None]) -> None:
        self._changes.append(change)
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes it as well
            os.write(self._wake_w, b"x")

    # -- the reader thread ----------------------------------------------------------

    def _add(self, fd: int, on_data: OnData) -> None:
        self._owners[fd] = on_data
        self._selector.register(fd, selectors.EVENT_READ)

    def _pause(self, fd: int) -> None:
        if fd in self._owners and fd not in self._paused:
            self._paused.add(fd)
            self._selector.unregister(fd)

    def _resume(self, fd: int) -> None:
        if fd in self._paused:
            self._paused.discard(fd)
            self._selector.register(fd, selectors.EVENT_READ)

    def _forget(self, fd: int) -> None:
        if self._owners.pop(fd, None) is not None and fd not in self._paused:
            self._selector.unregister(fd)
        self._paused.discard(fd)

    def _loop(self) -> None:
        while True:
            while self._changes:
                self._changes.popleft()()
            for key, _ in self._selector.select():
                fd = int(key.fd)
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(fd, READ_SIZE)
                    continue
                on_data = self._owners.get(fd)
                if on_data is None or fd in self._paused:
                    continue  # removed or paused by a change applied in this round
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: the process closed its terminal
                    data = b""
                if not data:
                    self._forget(fd)
                on_data(data)
