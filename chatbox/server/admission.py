"""Admission: who may connect, decided the moment a connection is accepted.

A refused connection costs the hub an accept, one look-up here and a close: no worker
is started, nobody in the room hears of it. That is what keeps one address that opens
and resets hundreds of connections a second from costing anyone else anything. The
rules, in the order they are applied:

1. **Access lists.** An address on a deny list is refused; if any allow list was given,
   so is every address not on it. Deny wins over allow. Closed without a word.
2. **Connections per address** (``max_per_ip``): counted from accept until the
   connection's worker has ended; one more is told so and closed.
3. **Connect rate per address**: a token bucket of ``connect_burst`` connections,
   refilled at ``connect_rate`` a second; a connection with no token left is told to
   try again later and closed.

An address refused by rule 2 or 3 is told why at most once a second; the refusals in
between are closed at once, without a word (the told one goes through the hub's
graceful close, which costs a few more system calls and a descriptor for a moment).
Every rule logs a refused address at most once a second too.

Addresses on the ``exempt`` list (this machine's own by default: a local proxy, or the
tests and benchmarks, connect from there) skip rules 2 and 3, never rule 1. An IPv6
address counts per /64, the block one subscriber gets, so a host cannot dodge rules 2
and 3 by cycling through its own addresses; an IPv4 client of a dual-stack listener
(``::ffff:a.b.c.d``) is its IPv4 address for every rule.

Like the room it does no I/O and reads no clock: the hub passes ``now`` in.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from chatbox import protocol

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# An operator on the internet wants a small number here: a person needs one or two
# connections, a household behind one address a few more.
DEFAULT_MAX_PER_IP = 16
# A client reconnecting after a drop, a few people behind one address arriving together:
# within the burst. A churner opening thousands a second gets 10, then one every 2 s:
# each admitted connection costs a worker and a join and a leave notice to everyone, so
# the rate is as low as IRC servers keep theirs.
DEFAULT_CONNECT_RATE = 0.5
DEFAULT_CONNECT_BURST = 10.0
DEFAULT_EXEMPT: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.1/32"),
    ipaddress.ip_network("::1/128"),
)

# An address that keeps on being refused is told why at most once in this long; the
# rest are closed at once, without a word: a churner costs the hub an accept and a close.
TELL_INTERVAL = 1.0

# An address refused by rule 2 or 3 this many times more within TELL_INTERVAL of being
# told (some 30 connections a second: no person's client, a churner in its first
# milliseconds) is blocked: its connection attempts are dropped by the kernel
# (`chatbox.server.synfilter`) for BLOCK_FIRST seconds, twice as long each time it comes
# back to it, up to BLOCK_MAX; an address not blocked for BLOCK_FORGET starts afresh.
BLOCK_AFTER = 32
BLOCK_FIRST = 2.0
BLOCK_MAX = 64.0
BLOCK_FORGET = 600.0

# Rate buckets of addresses that have come back to full (nothing to remember) are
# dropped once this many are kept, so a sweep of many addresses cannot grow the table.
PRUNE_AT = 4096

# IPv6 addresses count per /64.
_V6_HOST_BITS = 64


def parse_network(text: str) -> Network:
    """One address or CIDR block (IPv4 or IPv6); ValueError says what is wrong, in one line."""
    text = text.strip()
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            wider = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"{text!r} has host bits set (did you mean {wider}?)") from None
        raise ValueError(f"not an address or network: {text!r}") from None


def read_networks(path: str) -> list[Network]:
    """The networks in a list file: one address or CIDR block a line; ``#`` starts a
    comment, blank lines are skipped. ValueError names the file (and line) that is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"cannot read {path}: {reason}") from None
    networks = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            networks.append(parse_network(entry))
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
    return networks


@dataclass(frozen=True)
class AdmissionRules:
    """What the command line asked for. 0 turns a limit off."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    exempt: tuple[Network, ...] = DEFAULT_EXEMPT
    max_per_ip: int = DEFAULT_MAX_PER_IP
    connect_rate: float = DEFAULT_CONNECT_RATE
    connect_burst: float = DEFAULT_CONNECT_BURST


@dataclass(frozen=True)
class Refusal:
    """Why a connection is refused: ``reason`` for the log, ``last_words`` for the
    client (empty: closed at once, without a word); ``repeat``: the address was told
    (and the refusal logged) less than TELL_INTERVAL ago, so it is neither again."""

    reason: str
    last_words: bytes = b""
    repeat: bool = False


DENIED = Refusal("denied by the access list")
DENIED_AGAIN = Refusal(DENIED.reason, repeat=True)  # logged less than a second ago
TOO_FAST = Refusal("connecting too fast", protocol.CONNECTING_TOO_FAST)
# Refused again within TELL_INTERVAL of being told.
TOO_FAST_AGAIN = Refusal(TOO_FAST.reason, repeat=True)


class Ticket:
    """An admitted connection's place in its address's count, given back by `release`."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[int, int] | None) -> None:
        self.key = key  # None: not counted (exempt, no limit, or given back)


class _Ranges:
    """A set of networks as sorted, merged integer ranges: a look-up is one bisect,
    however long the list file is."""

    def __init__(self, networks: Iterable[Network]) -> None:
        spans = sorted(
            (net.version, int(net.network_address), int(net.broadcast_address)) for net in networks
        )
        merged: list[tuple[int, int, int]] = []
        for version, start, end in spans:
            if merged and merged[-1][0] == version and start <= merged[-1][2] + 1:
                last = merged[-1]
                merged[-1] = (version, last[1], max(last[2], end))
            else:
                merged.append((version, start, end))
        self._starts = [(version, start) for version, start, _ in merged]
        self._ends = [end for _, _, end in merged]

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __contains__(self, address: Address) -> bool:
        value = int(address)
        at = bisect.bisect_right(self._starts, (address.version, value)) - 1
        return at >= 0 and self._starts[at][0] == address.version and value <= self._ends[at]


class Admission:
    """The rules applied to each new connection, and the counts they need."""

    def __init__(self, rules: AdmissionRules) -> None:
        self._rules = rules
        self._allow = _Ranges(rules.allow)
        self._deny = _Ranges(rules.deny)
        self._exempt = _Ranges(rules.exempt)
        self._counts: dict[tuple[int, int], int] = {}
        # Per address: [tokens left, when they were counted, when it was last told].
        self._buckets: dict[tuple[int, int], list[float]] = {}
        self.too_many = Refusal(
            "too many connections from it", protocol.too_many_connections(rules.max_per_ip)
        )
        self._too_many_again = Refusal(self.too_many.reason, repeat=True)
        self._told: dict[tuple[int, int], float] = {}  # when an address was last told
        self._silent: dict[tuple[int, int], int] = {}  # refused since it was last told
        # Blocked addresses: until when, and the address as given (for the log).
        self._blocks: dict[tuple[int, int], tuple[float, str]] = {}
        # Per address: blocks in a row, and when the last one ends.
        self._block_history: dict[tuple[int, int], tuple[int, float]] = {}
        self._new_blocks: list[tuple[str, float]] = []
        self._blocks_changed = False
        self._next_unblock: float | None = None  # the earliest end of a block, if any

    def check(self, host: str, now: float) -> Ticket | Refusal:
        """Admit a connection from ``host`` (the accepted peer's address) or say why not.
        An admitted one counts against its address until `release`."""
        address = _address(host)
        if address is None:
            return Ticket(None)  # not an IP connection: nothing here applies
        if address in self._deny or (self._allow and address not in self._allow):
            return DENIED if self._tell(_key(address), now) else DENIED_AGAIN
        rules = self._rules
        if address in self._exempt or not (rules.max_per_ip or rules.connect_rate):
            return Ticket(None)
        key = _key(address)
        count = self._counts.get(key, 0)
        if rules.max_per_ip and count >= rules.max_per_ip:
            if self._tell(key, now):
                return self.too_many
            self._refused_again(key, host, now)
            return self._too_many_again
        if rules.connect_rate and not self._take_token(key, now):
            if self._tell(key, now):
                return TOO_FAST
            self._refused_again(key, host, now)
            return TOO_FAST_AGAIN
        if not rules.max_per_ip:
            return Ticket(None)
        self._counts[key] = count + 1
        return Ticket(key)

    def release(self, ticket: Ticket) -> None:
        """The connection has ended: its address may have another (once per ticket)."""
        key, ticket.key = ticket.key, None
        if key is None:
            return
        left = self._counts[key] - 1
        if left:
            self._counts[key] = left
        else:
            del self._counts[key]

    def _tell(self, key: tuple[int, int], now: float) -> bool:
        """Whether a refusal to this address is told (once in TELL_INTERVAL)."""
        told = self._told.get(key)
        if told is not None and now - told < TELL_INTERVAL:
            return False
        if len(self._told) >= PRUNE_AT:
            self._told = {k: t for k, t in self._told.items() if now - t < TELL_INTERVAL}
            self._silent = {k: n for k, n in self._silent.items() if k in self._told}
        self._told[key] = now
        self._silent.pop(key, None)
        return True

    def _refused_again(self, key: tuple[int, int], host: str, now: float) -> None:
        """Count a silent refusal; BLOCK_AFTER of them since it was told block it."""
        count = self._silent.get(key, 0) + 1
        if count < BLOCK_AFTER or key in self._blocks:
            self._silent[key] = count
            return
        del self._silent[key]
        blocks, ended = self._block_history.get(key, (0, now))
        if now - ended > BLOCK_FORGET:
            blocks = 0
        seconds = min(BLOCK_MAX, BLOCK_FIRST * 2.0**blocks)
        if len(self._block_history) >= PRUNE_AT:
            self._block_history = {
                k: v for k, v in self._block_history.items() if now - v[1] <= BLOCK_FORGET
            }
        self._block_history[key] = (blocks + 1, now + seconds)
        self._blocks[key] = (now + seconds, host)
        self._new_blocks.append((host, seconds))
        self._blocks_changed = True
        if self._next_unblock is None or now + seconds < self._next_unblock:
            self._next_unblock = now + seconds

    # --- blocks: what the kernel is to drop (`chatbox.server.synfilter`) -----------------

    def blocks_due(self, now: float) -> bool:
        """Whether the blocked addresses changed since `blocked` was last asked: one was
        added, or one's time is up."""
        if self._blocks_changed:
            return True
        return self._next_unblock is not None and self._next_unblock <= now

    def blocked(self, now: float) -> list[tuple[int, int]]:
        """The addresses blocked at ``now``, oldest block first (expired ones dropped)."""
        self._blocks = {k: v for k, v in self._blocks.items() if v[0] > now}
        self._blocks_changed = False
        self._next_unblock = min((v[0] for v in self._blocks.values()), default=None)
        return list(self._blocks)

    def next_unblock(self) -> float | None:
        """When the first block ends (the caller's clock), if any address is blocked.
        (Asked once a loop turn: kept, not computed.)"""
        return self._next_unblock

    def take_new_blocks(self) -> list[tuple[str, float]]:
        """The blocks begun since the last call (address, seconds), to be logged."""
        new, self._new_blocks = self._new_blocks, []
        return new

    def connections_from(self, host: str) -> int:
        address = _address(host)
        return 0 if address is None else self._counts.get(_key(address), 0)

    def _take_token(self, key: tuple[int, int], now: float) -> bool:
        rate, burst = self._rules.connect_rate, self._rules.connect_burst
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= PRUNE_AT:
                self._prune(now)
            bucket = self._buckets[key] = [burst, now]
        else:
            bucket[0] = min(burst, bucket[0] + max(0.0, now - bucket[1]) * rate)
            bucket[1] = now
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True

    def _prune(self, now: float) -> None:
        rate, burst = self._rules.connect_rate, self._rules.connect_burst
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * rate >= burst:
                del self._buckets[key]


# A churner's connections all come from one address: parse it once, not per connection.
@functools.lru_cache(maxsize=PRUNE_AT)
def _address(host: str) -> Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(int(address))
    return address


def _key(address: Address) -> tuple[int, int]:
    if address.version == 6:
        return (6, int(address) >> _V6_HOST_BITS)
    return (4, int(address))
