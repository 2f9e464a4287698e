"""The server's logging: never blocks the hub, and says a repeated warning once.

The hub must never block on anything but its selector, and a log line is an I/O: with
stderr a pipe nobody reads, the 64 KiB the kernel holds fill up after a few hundred
warnings - warnings any client can trigger (each refused connection writes one) - and
the next write would freeze the room. So records go into a bounded in-memory queue
(`QueueHandler`, never waiting), and one thread of their own writes them to a
duplicate of the stderr descriptor; when that thread is stuck, records that do not
fit are dropped and counted, and the count is logged once there is room again (and at
exit). The writing thread uses `os.write` on its own descriptor, so no lock of
`sys.stderr` is ever held by a thread that may be stuck at exit.

Repeated records (same logger, same message template, WARNING and up) are
rate-limited: past `BURST` in `PERIOD` seconds they are not logged, and the next one
that is says how many were left out; `stop` says so for the rest.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time

# Records waiting to be written while stderr is slow: a burst's worth (a join and a
# leave each for a few hundred connections), about 1 MB of records at most.
BACKLOG = 1000

# A warning template logged this many times in PERIOD seconds is then left out until
# the period ends: enough to see what is happening, not enough to flood a log.
BURST = 20
PERIOD = 10.0

# How long `stop` waits for the writer to take the last records: the server promises
# to be gone within 2 s of SIGTERM, and a stuck stderr must not take that time.
STOP_WAIT = 0.2

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class RateLimit(logging.Filter):
    """Lets through at most `BURST` records per template (WARNING and up) per `PERIOD`."""

    def __init__(self, burst: int = BURST, period: float = PERIOD) -> None:
        super().__init__()
        self._burst = burst
        self._period = period
        # (logger, template) -> [window start, passed in window, left out in window]
        self._seen: dict[tuple[str, object], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        key = (record.name, record.msg)
        seen = self._seen.get(key)
        if seen is None or now - seen[0] >= self._period:
            left_out = int(seen[2]) if seen is not None else 0
            self._seen[key] = [now, 1, 0]
            if left_out:
                _append(record, f" ({left_out} more like this were not logged)")
            return True
        if seen[1] < self._burst:
            seen[1] += 1
            return True
        seen[2] += 1
        return False

    def left_out(self) -> list[str]:
        """One line per template with records left out in its current period."""
        return [
            f"{name}: {int(seen[2])} more like this were not logged: {template}"
            for (name, template), seen in self._seen.items()
            if seen[2]
        ]


def _append(record: logging.LogRecord, text: str) -> None:
    record.msg = record.getMessage() + text
    record.args = None


def dropped_note(count: int) -> logging.LogRecord:
    """The line that says how many log lines a full backlog cost."""
    return logging.makeLogRecord(
        {
            "name": "chatbox.logs",
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": f"{count} log lines were dropped: stderr is not read",
        }
    )


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler that never waits: a record that does not fit is counted."""

    def __init__(self, backlog: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(backlog)
        self.dropped = 0
        self._lock = threading.Lock()  # worker threads log too

    def enqueue(self, record: logging.LogRecord) -> None:
        with self._lock:
            if self.dropped:
                note = dropped_note(self.dropped)
                try:
                    self.queue.put_nowait(note)
                except queue.Full:
                    self.dropped += 1
                    return
                self.dropped = 0
            try:
                self.queue.put_nowait(record)
            except queue.Full:
                self.dropped += 1


class _Writer(threading.Thread):
    """Writes queued records to its own descriptor; may block there, alone."""

    def __init__(self, backlog: queue.Queue[logging.LogRecord | None], fd: int) -> None:
        # A daemon: stuck on a full pipe, it must not keep the server from exiting.
        super().__init__(name="log-writer", daemon=True)
        self._backlog = backlog
        self._fd = fd
        self._formatter = logging.Formatter(FORMAT)

    def run(self) -> None:
        while (record := self._backlog.get()) is not None:
            data = (self._formatter.format(record) + "\n").encode("utf-8", "replace")
            try:
                while data:
                    data = data[os.write(self._fd, data) :]
            except OSError:
                return  # stderr closed: nothing more can be said


class ServerLog:
    """The server's logging from `start` to `stop`.

    Resource handling: `start` duplicates stderr's descriptor and starts the writing
    thread; `stop` hands it the last lines, waits for it at most `STOP_WAIT`, and
    closes the descriptor only if the thread has ended (else the exit does).
    """

    def __init__(self, level: str) -> None:
        self._level = level
        self._backlog: queue.Queue[logging.LogRecord | None] = queue.Queue(BACKLOG)
        self._handler = _DroppingQueueHandler(self._backlog)
        self.rate_limit = RateLimit()
        self._handler.addFilter(self.rate_limit)
        self._fd = -1
        self._writer: _Writer | None = None

    def start(self) -> None:
        sys.stderr.flush()
        self._fd = os.dup(sys.stderr.fileno())
        self._writer = _Writer(self._backlog, self._fd)
        self._writer.start()
        root = logging.getLogger()
        root.handlers[:] = [self._handler]
        root.setLevel(self._level.upper())

    def stop(self) -> None:
        log = logging.getLogger("chatbox.logs")
        for line in self.rate_limit.left_out():
            log.warning("%s", line)
        logging.getLogger().removeHandler(self._handler)
        if self._writer is None:
            return
        with contextlib.suppress(queue.Full):
            # At exit the count may wait for room (bounded): the backlog may still be full
            # of what a stuck stderr held back, and this is the line that says so.
            if self._handler.dropped:
                self._backlog.put(dropped_note(self._handler.dropped), timeout=STOP_WAIT)
            self._backlog.put(None, timeout=STOP_WAIT)
        self._writer.join(STOP_WAIT)
        if not self._writer.is_alive():
            os.close(self._fd)


def for_worker(level: int) -> None:
    """In a forked worker: log straight to stderr. The queue's locks may have been
    held by another thread of the hub at the fork, and no writer thread came along."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
