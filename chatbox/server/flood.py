"""Flood control: a token bucket per client, on lines and on bytes, as IRC servers keep.

Each client may send ``lines`` lines and ``bytes`` bytes per second on average, and a
burst of ``burst`` seconds' worth of either at once (a paste, a script's batch). The hub
hands the room only the lines of a client's block that the bucket allows; the rest
waits, and the hub stops reading that one client until the allowance is back, so the
excess is delayed for the flooder alone (TCP holds it back in the
flooder's own socket) and the room goes on at its usual pace. A client that stays in
debt - throttled, with more waiting every time it is read again - for ``timeout``
seconds is not pasting, it is flooding, and is disconnected.

It does no I/O and reads no clock: the hub passes ``now`` in, so every rule here is
testable with plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

# A pace no person reaches, and one that bounds the room. A paste of 1,000 lines (or
# 256 KiB) goes at once; a longer one is delayed, and one of up to 15,000 lines (or
# 3.5 MiB: a file piped into the client) still goes through whole, paced, before the
# timeout. A client sending flat out is held to 500 lines and 128 KiB a second - which
# costs the room nothing - and cut off after 30 s of that. What one
# client may send at once - its burst, 1,000 lines or 256 KiB, plus the name the server
# puts in front of each line - is far under what the default --sendq (1 MiB) holds for
# every reader, so a lawful burst never takes a reader that keeps up over its bound.
DEFAULT_LINES = 500.0
DEFAULT_BYTES = float(128 << 10)
DEFAULT_BURST = 2.0
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class FloodLimits:
    """Per-client rates (per second), burst (seconds of either rate) and how long a
    client may stay throttled. A rate of 0 turns that bucket off."""

    lines: float = DEFAULT_LINES
    bytes: float = DEFAULT_BYTES
    burst: float = DEFAULT_BURST
    timeout: float = DEFAULT_TIMEOUT

    @property
    def enabled(self) -> bool:
        return self.lines > 0 or self.bytes > 0


class FloodBucket:
    """One client's allowance. Starts full: a new client may paste at once."""

    def __init__(self, limits: FloodLimits, now: float) -> None:
        self._limits = limits
        self._lines = limits.lines * limits.burst
        self._bytes = limits.bytes * limits.burst
        self._at = now
        self.throttled_since: float | None = None  # in debt since, if it is

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._at)
        self._at = now
        limits = self._limits
        self._lines = min(limits.lines * limits.burst, self._lines + elapsed * limits.lines)
        self._bytes = min(limits.bytes * limits.burst, self._bytes + elapsed * limits.bytes)

    def take(self, block: bytes, now: float) -> int:
        """How much of ``block`` (whole lines, each ending in LF) may go now, charged to
        the allowance: ``len(block)`` within it, less (maybe 0) when it is used up.

        One line longer than what is left of the byte allowance still goes while any is
        left (the allowance goes into debt), so a long line can never be stuck.
        """
        self._refill(now)
        limits = self._limits
        count = block.count(b"\n") if limits.lines > 0 else 0
        if (limits.lines <= 0 or count <= self._lines) and (
            limits.bytes <= 0 or len(block) <= self._bytes
        ):
            self._lines -= count
            self._bytes -= len(block)
            self.throttled_since = None  # it is within its allowance again
            return len(block)
        cut = len(block)
        if limits.lines > 0 and count > self._lines:
            cut = 0
            for _ in range(int(self._lines)):
                cut = block.index(b"\n", cut) + 1
        if limits.bytes > 0 and cut > self._bytes:
            if self._bytes < 1:
                cut = 0
            else:
                cut = min(
                    cut, block.rfind(b"\n", 0, int(self._bytes)) + 1 or block.index(b"\n") + 1
                )
        self._lines -= block.count(b"\n", 0, cut)
        self._bytes -= cut
        if self.throttled_since is None:
            self.throttled_since = now
        return cut

    def give_back(self, rest: bytes) -> None:
        """``rest`` was charged but not taken (it waits, and will be charged when it is
        handed over again): its lines and bytes are back in the allowance."""
        limits = self._limits
        self._lines = min(limits.lines * limits.burst, self._lines + rest.count(b"\n"))
        self._bytes = min(limits.bytes * limits.burst, self._bytes + len(rest))

    def wait(self) -> float:
        """Seconds until a useful part of the allowance is back (a twentieth of a
        second's worth, at least one line), after a `take` that was cut short."""
        limits = self._limits
        wait = 0.0
        if limits.lines > 0:
            want = max(1.0, min(limits.lines * limits.burst, limits.lines / 20))
            wait = max(wait, (want - self._lines) / limits.lines)
        if limits.bytes > 0:
            want = max(1.0, min(limits.bytes * limits.burst, limits.bytes / 20))
            wait = max(wait, (want - self._bytes) / limits.bytes)
        return wait

    def flooding(self, now: float) -> bool:
        """Throttled without a break for longer than the limits allow."""
        since = self.throttled_since
        return since is not None and now - since >= self._limits.timeout
