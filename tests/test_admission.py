"""Admission's rules on plain addresses and numbers: lists, counts, the rate bucket."""

from __future__ import annotations

import pytest

from chatbox.server.admission import (
    BLOCK_AFTER,
    BLOCK_FIRST,
    BLOCK_MAX,
    DENIED,
    TOO_FAST,
    Admission,
    AdmissionRules,
    Refusal,
    Ticket,
    parse_network,
)


def _rules(**kwargs: object) -> AdmissionRules:
    return AdmissionRules(**kwargs)  # type: ignore[arg-type]


def _nets(*texts: str) -> tuple:  # type: ignore[type-arg]
    return tuple(parse_network(text) for text in texts)


def test_deny_wins_and_an_allow_list_admits_only_its_addresses() -> None:
    gate = Admission(_rules(allow=_nets("10.0.0.0/8", "2001:db8::/32"), deny=_nets("10.9.0.0/16")))
    assert isinstance(gate.check("10.1.2.3", 0.0), Ticket)
    assert gate.check("10.9.9.9", 0.0) is DENIED
    assert gate.check("192.0.2.1", 0.0) is DENIED
    assert isinstance(gate.check("2001:db8::5", 0.0), Ticket)
    assert gate.check("2001:db9::5", 0.0) is DENIED
    assert gate.check("::ffff:10.9.1.1", 0.0) is DENIED  # IPv4 through a dual-stack socket


def test_many_overlapping_networks_are_looked_up_correctly() -> None:
    deny = _nets(*(f"10.{i}.0.0/16" for i in range(0, 200, 2)), "10.0.0.0/12", "0.0.0.0/32")
    gate = Admission(_rules(deny=deny))
    assert gate.check("10.15.255.255", 0.0) is DENIED  # inside the /12
    assert gate.check("10.16.0.1", 0.0) is DENIED
    assert isinstance(gate.check("10.17.0.1", 0.0), Ticket)
    assert gate.check("10.198.3.4", 0.0) is DENIED
    assert isinstance(gate.check("10.199.3.4", 0.0), Ticket)
    assert isinstance(gate.check("::a10:1", 0.0), Ticket)  # the same integer, IPv6


def test_connections_per_address_are_counted_until_released() -> None:
    gate = Admission(_rules(max_per_ip=2, connect_rate=0))
    first, second = gate.check("192.0.2.1", 0.0), gate.check("192.0.2.1", 0.0)
    assert isinstance(first, Ticket) and isinstance(second, Ticket)
    refused = gate.check("192.0.2.1", 0.0)
    assert isinstance(refused, Refusal) and b"max 2" in refused.last_words
    silent = gate.check("192.0.2.1", 0.5)
    assert isinstance(silent, Refusal) and silent.last_words == b""
    assert isinstance(gate.check("192.0.2.2", 0.0), Ticket)
    gate.release(first)
    gate.release(first)  # once only
    assert gate.connections_from("192.0.2.1") == 1
    assert isinstance(gate.check("192.0.2.1", 0.0), Ticket)


def test_ipv6_counts_per_64_and_exempt_addresses_are_not_counted() -> None:
    gate = Admission(_rules(max_per_ip=1, connect_rate=0))
    assert isinstance(gate.check("2001:db8:1:2::1", 0.0), Ticket)
    assert isinstance(gate.check("2001:db8:1:2::ffff", 0.0), Refusal)
    assert isinstance(gate.check("2001:db8:1:3::1", 0.0), Ticket)
    for _ in range(5):
        assert isinstance(gate.check("127.0.0.1", 0.0), Ticket)
        assert isinstance(gate.check("::1", 0.0), Ticket)


def test_the_connect_rate_is_a_bucket_refilled_with_time() -> None:
    gate = Admission(_rules(max_per_ip=0, connect_rate=2, connect_burst=3))
    for _ in range(3):
        assert isinstance(gate.check("192.0.2.1", 10.0), Ticket)
    assert gate.check("192.0.2.1", 10.0) is TOO_FAST
    assert isinstance(gate.check("192.0.2.9", 10.0), Ticket)
    assert isinstance(gate.check("192.0.2.1", 10.5), Ticket)  # one token back
    again = gate.check("192.0.2.1", 10.5)
    assert isinstance(again, Refusal) and again.last_words == b""  # told 0.5 s ago
    assert isinstance(gate.check("192.0.2.1", 11.01), Ticket)
    assert gate.check("192.0.2.1", 11.01) is TOO_FAST  # told again a second later


def test_a_refused_connection_takes_no_place_in_the_count() -> None:
    gate = Admission(_rules(max_per_ip=5, connect_rate=1, connect_burst=1))
    assert isinstance(gate.check("192.0.2.1", 0.0), Ticket)
    assert gate.check("192.0.2.1", 0.0) is TOO_FAST
    assert gate.connections_from("192.0.2.1") == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.256", "not an address or network: '10.0.0.256'"),
        ("10.0.0.1/8", "'10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)"),
        ("fe80::/zz", "not an address or network"),
    ],
)
def test_bad_networks_are_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_network(text)
    assert message in str(caught.value)


def test_a_denied_address_is_logged_once_a_second() -> None:
    gate = Admission(_rules(deny=_nets("192.0.2.0/24")))
    assert gate.check("192.0.2.1", 0.0) is DENIED
    again = gate.check("192.0.2.1", 0.5)
    assert isinstance(again, Refusal) and again.repeat and again.reason == DENIED.reason
    assert gate.check("192.0.2.2", 0.5) is DENIED
    assert gate.check("192.0.2.1", 1.0) is DENIED


def _churn(gate: Admission, host: str, count: int, start: float, step: float) -> float:
    """``count`` connections from ``host``, one every ``step`` seconds; the time after."""
    now = start
    for _ in range(count):
        gate.check(host, now)
        now += step
    return now


def test_an_address_that_keeps_connecting_after_being_told_is_blocked() -> None:
    gate = Admission(_rules(connect_rate=0.5, connect_burst=2))
    assert gate.blocked(0.0) == []
    # The burst, the told refusal, then BLOCK_AFTER silent ones within the second.
    now = _churn(gate, "192.0.2.1", 3 + BLOCK_AFTER, 0.0, 0.001)
    assert gate.blocks_due(now)
    assert gate.blocked(now) == [(4, int.from_bytes(bytes([192, 0, 2, 1]), "big"))]
    assert not gate.blocks_due(now)  # taken
    assert gate.take_new_blocks() == [("192.0.2.1", BLOCK_FIRST)]
    assert gate.take_new_blocks() == []
    assert gate.next_unblock() == pytest.approx(now - 0.001 + BLOCK_FIRST)
    assert isinstance(gate.check("192.0.2.9", now), Ticket)  # others get in
    later = now + BLOCK_FIRST
    assert gate.blocks_due(later)
    assert gate.blocked(later) == []
    assert gate.next_unblock() is None


def test_a_block_is_twice_as_long_each_time_it_comes_back_up_to_the_cap() -> None:
    gate = Admission(_rules(connect_rate=0.5, connect_burst=1))
    now, lengths = 0.0, []
    for _ in range(12):
        now = _churn(gate, "2001:db8::1", 2 + BLOCK_AFTER, now, 0.001)
        ((_, seconds),) = gate.take_new_blocks()
        lengths.append(seconds)
        now += seconds
        gate.blocked(now)
    assert lengths[:3] == [BLOCK_FIRST, 2 * BLOCK_FIRST, 4 * BLOCK_FIRST]
    assert lengths[-1] == BLOCK_MAX
    assert gate.blocked(now) == []


def test_an_address_below_the_blocking_rate_and_exempt_ones_are_never_blocked() -> None:
    gate = Admission(_rules(connect_rate=0.5, connect_burst=1))
    # About BLOCK_AFTER / 2 a second for a minute: refused, never blocked.
    _churn(gate, "192.0.2.1", 30 * BLOCK_AFTER, 0.0, 2.0 / BLOCK_AFTER)
    _churn(gate, "127.0.0.1", 10 * BLOCK_AFTER, 0.0, 0.0001)
    assert gate.take_new_blocks() == []
    assert gate.next_unblock() is None
