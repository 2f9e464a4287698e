"""The progress line: scenario, run number, deliveries so far, elapsed time.

On a terminal it rewrites one line in place; elsewhere (CI logs) it prints a line at
most every PLAIN_EVERY seconds, so logs stay short.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from harness.transcript import RunRecord

TICK = 0.25  # terminal refresh period
PLAIN_EVERY = 5.0  # seconds between progress lines when not on a terminal


class Progress:
    """Resource handling: a daemon thread between `start` and `stop`; `stop` joins it."""

    def __init__(self, label: str, record: RunRecord, stream: TextIO | None = None) -> None:
        self.label = label
        self.record = record
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._t0 = time.monotonic()

    def line(self) -> str:
        rec = self.record
        sent = sum(len(p.sent) for p in list(rec.parties.values()))
        return (
            f"[{self.label}] {len(rec.parties)} parties, {sent} lines sent, "
            f"{rec.deliveries()} delivered, {time.monotonic() - self._t0:.1f}s"
        )

    def _run(self) -> None:
        period = TICK if self.tty else PLAIN_EVERY
        while not self._stop.wait(period):
            if self.tty:
                self.stream.write("\r\x1b[K" + self.line())
            else:
                self.stream.write(self.line() + "\n")
            self.stream.flush()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(self.line() + "\n")
        self.stream.flush()
