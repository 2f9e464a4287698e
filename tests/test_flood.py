"""The flood bucket by itself: what part of a block may go, and when a client floods."""

from __future__ import annotations

from chatbox import protocol
from chatbox.server.flood import FloodBucket, FloodLimits
from chatbox.server.hub import DEFAULT_SENDQ


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


def test_what_is_given_back_is_charged_once_when_it_goes_again() -> None:
    # Lines the room could not take yet (they wait behind a command) come back to the
    # allowance: handed over again and again, they cost what they are, once.
    bucket = FloodBucket(FloodLimits(lines=10, bytes=1000, burst=2, timeout=5), now=0.0)
    block = _block(20)  # the whole allowance: 10 lines a second, a 2 s burst
    while block:
        assert bucket.take(block, 0.0) == len(block)
        rest = block[block.index(b"\n") + 1 :]  # the room took one line
        bucket.give_back(rest)
        block = rest
    assert bucket.throttled_since is None


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


def _paste(bucket: FloodBucket, block: bytes, now: float) -> float:
    """Hand ``block`` to ``bucket`` as the hub does - what the allowance takes goes, the
    rest waits its `wait` - until all went; when the last of it went. Fails if the
    client would have been cut off as flooding on the way."""
    while block:
        cut = bucket.take(block, now)
        block = block[cut:]
        if block:
            assert not bucket.flooding(now), f"cut off as flooding at {now:.1f} s"
            now += bucket.wait()
    return now


def test_at_the_defaults_a_paste_of_hundreds_of_lines_goes_at_once() -> None:
    bucket = FloodBucket(FloodLimits(), now=0.0)
    paste = b"".join(b"%03d %s\n" % (i, b"x" * 76) for i in range(500))  # 40 KB
    assert bucket.take(paste, 0.0) == len(paste)


def test_at_the_defaults_a_long_paste_is_delayed_never_cut_off() -> None:
    bucket = FloodBucket(FloodLimits(), now=0.0)
    paste = b"".join(b"%04d %s\n" % (i, b"x" * 75) for i in range(5000))  # 400 KB
    assert _paste(bucket, paste, 0.0) > 1.0  # it was paced...
    # ...and another one later goes at once again: the allowance came back.
    assert bucket.take(paste[:8000], 100.0) == 8000


def test_at_the_defaults_a_flooders_lawful_burst_fits_in_every_readers_sendq() -> None:
    """What one client may send at once, as the room relays it (each line with the
    longest name in front), is far under the default --sendq: a reader that keeps up is
    never taken over its bound by one flooder's burst, nor by three at once."""
    limits = FloodLimits()
    prefix = len(protocol.chat_prefix("n" * protocol.MAX_NAME))
    burst_lines = limits.lines * limits.burst
    burst_bytes = limits.bytes * limits.burst
    relayed = burst_bytes + burst_lines * prefix
    assert 3 * relayed < DEFAULT_SENDQ


def test_at_the_defaults_a_flooder_is_cut_off_within_a_minute() -> None:
    bucket = FloodBucket(FloodLimits(), now=0.0)
    line = b"f" * 59 + b"\n"
    now = 0.0
    while not bucket.flooding(now):
        assert now < 45.0, "a client sending flat out was never found flooding"
        bucket.take(line * 1000, now)
        now += 0.05
