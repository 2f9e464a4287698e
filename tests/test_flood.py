"""The flood bucket by itself: what part of a block may go, and when a client floods."""

from __future__ import annotations

from chatbox.server.flood import FloodBucket, FloodLimits


def _block(count: int) -> bytes:
    return b"".join(b"line %d\n" % i for i in range(count))


def test_a_burst_within_the_allowance_goes_whole() -> None:
    bucket = FloodBucket(FloodLimits(lines=10, bytes=0, burst=2, timeout=5), now=0.0)
    block = _block(20)
    assert bucket.take(block, 0.0) == len(block)
    assert bucket.throttled_since is None


def test_past_the_allowance_only_whole_lines_go_and_the_rest_waits() -> None:
    bucket = FloodBucket(FloodLimits(lines=10, bytes=0, burst=1, timeout=5), now=0.0)
    block = _block(25)
    cut = bucket.take(block, 0.0)
    assert block[:cut] == _block(10)
    assert bucket.take(block[cut:], 0.0) == 0
    assert 0 < bucket.wait() <= 0.1
    assert block[cut:][: bucket.take(block[cut:], 0.5)] == b"".join(
        b"line %d\n" % i for i in range(10, 15)
    )


def test_a_long_line_goes_while_any_byte_allowance_is_left() -> None:
    bucket = FloodBucket(FloodLimits(lines=0, bytes=10, burst=1, timeout=5), now=0.0)
    line = b"x" * 50 + b"\n"
    assert bucket.take(line + line, 0.0) == len(line)
    assert bucket.take(line, 0.0) == 0


def test_flooding_is_being_throttled_without_a_break_for_the_timeout() -> None:
    bucket = FloodBucket(FloodLimits(lines=10, bytes=0, burst=1, timeout=2), now=0.0)
    bucket.take(_block(30), 0.0)
    assert not bucket.flooding(1.9)
    bucket.take(_block(30), 1.0)
    assert bucket.flooding(2.0)
    bucket.take(_block(1), 100.0)  # a break: within the allowance again
    assert not bucket.flooding(100.0)
