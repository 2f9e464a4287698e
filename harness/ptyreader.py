"""One reader for every party's pty: a thread that waits on all of them at once.

A party's terminal must be read *continuously* - an unread pty blocks its client at
about 17 KiB, which would turn a slow harness into a false deadlock. A thread per party,
each waking to look at its one descriptor, costs a wake-up and a GIL hand-off per read
per party; hundreds of them contend for the GIL with the threads that type. One thread
on one selector (epoll on Linux: no limit at descriptor 1024, as select() has) reads
whichever terminals have output and hands the bytes to their owners.

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

READ_SIZE = 65536
REMOVE_WAIT = 5.0  # s an owner waits for the reader to let go of a descriptor

OnData = Callable[[bytes], None]  # b"" once: the terminal closed (EOF or EIO)


class PtyReader:
    """The process's one pty reader (`PtyReader.get`); its thread starts with the first
    descriptor and runs, as a daemon, while the process does.

    Error handling: a callback that raises is the harness's bug, not the run's - it is
    not caught here, so it ends the reader loudly instead of silently dropping output.
    """

    _instance: PtyReader | None = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls) -> PtyReader:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

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
