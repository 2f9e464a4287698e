"""The cluster's engine: one Redis, its stream as the room's log, its keys as the roster.

Several chatbox servers ("nodes") share one room through a Redis server. What one node
says (chat lines, actions, notices, private messages) is appended to one stream
(``XADD``); the stream id is the room's one order. Every node reads the stream back
(``XREAD``, blocking, many entries at once) on a reader thread and its hub delivers the
entries to its own clients in stream order, so every client on every node sees the same
order. Names are keys claimed with ``SET NX`` under a lease that the owning node renews
on its keeper thread; a node that stops renewing (killed, cut off) loses its names when
the lease runs out, and a surviving node tells the room that its members left. The
hub never waits on Redis: the room's calls run on two call threads
(`chatbox.server.cluster_calls`), appends on one and everything else on the other.

This module is the Redis side alone: `chatbox.server.cluster_room` holds the room's
rules. redis-py is imported here only, and only when a node starts (``pip install
chatbox[cluster]``): the single-process server never loads it.

Keys (``P`` is the prefix, ``chatbox:`` by default)::

    P log              the room's stream
    P name:KEY         NODE TAB MEMBER TAB NAME, leased: the claim on a name
    P guests           counter for fresh guest names
    P nodes            set of node ids that have run
    P node:NODE        leased heartbeat of a live node
    P members:NODE     hash MEMBER -> NAME, who is on that node (for the leave notices)
    P reap:NODE        leased: the one node telling the room that NODE is gone
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from chatbox import protocol
from chatbox.server.cluster_calls import Calls

log = logging.getLogger("chatbox.cluster")

DEFAULT_LEASE = 10.0
# The stream keeps about this many entries (XADD MAXLEN ~): enough for history, bounded.
STREAM_MAXLEN = 100_000
# Entries taken per XREAD, and how long one blocks before the reader looks up again.
READ_COUNT = 1000
READ_BLOCK_MS = 1000
# A call waits at most this long for Redis by default (--cluster-timeout): past it the
# client is told the cluster is unavailable; its line is refused, not lost.
DEFAULT_TIMEOUT = 1.0
# After a failure a call is refused at once (no connect attempt per line) for a while,
# doubling up to this bound; the reader retries on the same schedule.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0

Fields = dict[bytes, bytes]

# Renew the leases of the names this node holds (KEYS); claim again those that lapsed
# (ARGV[3...]: each one's claim); return the positions (1-based) of those that another
# node holds now: their members have lost their names.
_RENEW = """
local taken = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if not v then
    redis.call('SET', key, ARGV[i + 2], 'PX', ARGV[2])
  elseif string.sub(v, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '\\t' then
    redis.call('PEXPIRE', key, ARGV[2])
  else
    taken[#taken + 1] = i
  end
end
return taken
"""

# Delete a name's claim if NODE still holds it.
_RELEASE = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '\\t' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# Append entries only while the node still waits for the answer: a command that reaches
# Redis late (it was stalled, not gone) after the node told its client "unavailable"
# must not be appended after all. ARGV: deadline (microseconds, Redis's clock), MAXLEN,
# then for each entry its count of field-and-value strings and those strings.
_APPEND = """
local t = redis.call('TIME')
if tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[1]) then
  return -1
end
local i = 3
local n = 0
while i <= #ARGV do
  local count = tonumber(ARGV[i])
  local args = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*'}
  for j = 1, count do
    args[#args + 1] = ARGV[i + j]
  end
  redis.call(unpack(args))
  i = i + count + 1
  n = n + 1
end
return n
"""

# An append must have run within this share of the timeout of being sent, so that a
# reply still on its way when the node gives up is (nearly) impossible.
APPEND_DEADLINE = 0.5


def _incrby(r: Any, key: str, amount: int) -> Any:
    return r.incrby(key, amount)


def stream_order(entry_id: bytes) -> tuple[int, int]:
    """A stream id (``MS-SEQ``) as something that compares in the stream's order."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or b"0")


class Unavailable(Exception):
    """Redis cannot be reached now (the caller tells its client, nothing is dropped silently)."""


def import_redis() -> Any:
    """redis-py, or a clear `SystemExit` where the extra is not installed."""
    try:
        import redis
    except ImportError:
        raise SystemExit(
            "chatbox-server: --cluster needs redis-py: pip install 'chatbox[cluster]'"
        ) from None
    return redis


class Cluster:
    """One node's link to the shared Redis: claims, the roster, appends, the reader."""

    def __init__(
        self,
        url: str,
        lease: float = DEFAULT_LEASE,
        timeout: float = DEFAULT_TIMEOUT,
        prefix: str = "chatbox:",
        node: str = "",
    ) -> None:
        redis = import_redis()
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.lease = lease
        self.node = node or f"{socket.gethostname()}-{secrets.token_hex(3)}"
        self._p = prefix
        self._log_key = (prefix + "log").encode()
        self.timeout = timeout
        opts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        self._url = url
        self._redis = redis
        # The calls' connections (a pool: the two call threads take one each).
        self._calls_r = redis.Redis.from_url(url, **opts)
        # The reader blocks in XREAD for READ_BLOCK_MS: its timeout must be longer.
        read_opts = {**opts, "socket_timeout": READ_BLOCK_MS / 1000 + 5}
        self._read_r = redis.Redis.from_url(url, **read_opts)
        self._keep_r = redis.Redis.from_url(url, **opts)
        self._renew = self._keep_r.register_script(_RENEW)
        self._release = self._calls_r.register_script(_RELEASE)
        self._append = self._calls_r.register_script(_APPEND)
        self._clock_offset = 0.0  # Redis's clock minus ours, in seconds
        self._down_until = 0.0
        self._backoff = BACKOFF_MIN
        self._inbox: collections.deque[tuple[bytes, Fields]] = collections.deque()
        self._names_lock = threading.Lock()
        # member id -> (name key, claim) of each name this node holds
        self._held: dict[int, tuple[str, bytes]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Every call the room makes runs on one of these threads, never on the hub's:
        # appends on their own, so that a slow /who or join does not hold up the lines.
        self.calls = Calls("cluster-calls", Unavailable)
        self.appends = Calls("cluster-appends", Unavailable)
        self._last_id = b"0-0"
        self._start_id = self._last_id
        # Set by the keeper when it finds this node was taken for dead, or some of its
        # members' names lapsed and were claimed by others (`take_lost`).
        self._lost: tuple[bool, list[int]] | None = None
        self._lost_until = 0.0
        self._judge_after = 0.0
        self._wake: Callable[[], None] = lambda: None

    # --- lifecycle ----------------------------------------------------------------------

    def connect(self) -> None:
        """Check Redis answers and note where the stream ends now: this node delivers
        what is appended from here on.

        Error handling: a Redis that cannot be reached raises `Unavailable` (the command
        line says so in one line); later outages are survived with backoff."""
        try:
            self._calls_r.ping()
            self._measure_clock(self._calls_r)
            last = self._calls_r.xrevrange(self._log_key, count=1)
            self._last_id = last[0][0] if last else b"0-0"
            self._start_id = self._last_id
            self._heartbeat(self._calls_r)
        except self._errors as exc:
            raise Unavailable(str(exc)) from None

    def start(self, wake: Callable[[], None]) -> None:
        """Start the reader (which calls ``wake`` when entries arrive), the keeper and
        the call threads (which call ``wake`` when a call has ended)."""
        self._wake = wake
        self.calls.start(wake)
        self.appends.start(wake)
        for name, target in (("reader", self._read_loop), ("keeper", self._keep_loop)):
            thread = threading.Thread(
                target=target, args=(wake,), name=f"cluster-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """End both threads and say this node is gone (best effort: Redis may be down)."""
        self._stop.set()
        self.calls.stop()
        self.appends.stop()
        for thread in self._threads:
            # The reader may be inside a blocking XREAD: the server must be gone soon
            # after SIGTERM, so it is not waited for long (it is a daemon thread, and
            # what it reads now nobody will deliver).
            thread.join(0.2)
        # A connection of its own: a call thread may still be stuck in a call to a Redis
        # that does not answer, and the node must be gone soon after SIGTERM.
        quick = min(self.timeout, DEFAULT_TIMEOUT)
        last_r = self._redis.Redis.from_url(
            self._url, socket_timeout=quick, socket_connect_timeout=quick
        )
        with contextlib.suppress(*self._errors):
            pipe = last_r.pipeline(transaction=False)
            pipe.delete(self._key("node:", self.node), self._key("members:", self.node))
            pipe.srem(self._key("nodes"), self.node)
            pipe.execute()
        for client in (last_r, self._calls_r, self._read_r, self._keep_r):
            with contextlib.suppress(*self._errors):
                client.close()

    def finish(self) -> None:
        """Run the outcomes of the calls that ended (on the hub's thread)."""
        self.calls.finish()
        self.appends.finish()

    def drain(self, timeout: float) -> None:
        """Wait, at most ``timeout`` in all, for the calls made so far to end."""
        deadline = time.monotonic() + timeout
        self.calls.drain(timeout)
        self.appends.drain(max(0.0, deadline - time.monotonic()))

    def _key(self, kind: str, rest: str = "") -> str:
        return f"{self._p}{kind}{rest}"

    # --- calls (made on the call threads, never on the hub's) ---------------------------

    def _call(self, work: Callable[[Any], Any]) -> Any:
        """Run ``work`` on a connection of the calls' pool; `Unavailable` if Redis does
        not answer (and at once, without trying, while backing off after a failure)."""
        if time.monotonic() < self._down_until:
            raise Unavailable("backing off")
        try:
            result = work(self._calls_r)
        except self._errors as exc:
            log.warning("cluster unavailable: %s", exc)
            self._down_until = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            raise Unavailable(str(exc)) from None
        self._backoff = BACKOFF_MIN
        return result

    def claim(self, member_id: int, name: str, key: str) -> str | None:
        """Claim ``name`` for a member of this node: None if granted, else who holds it."""
        value = f"{self.node}\t{member_id}\t{name}".encode()
        name_key = self._key("name:", key)
        px = int(self.lease * 1000)

        def work(r: Any) -> Any:
            pipe = r.pipeline(transaction=False)
            pipe.set(name_key, value, nx=True, px=px)
            pipe.get(name_key)
            return pipe.execute()

        granted, holder = self._call(work)
        if not granted and holder and holder.startswith(f"{self.node}\t{member_id}\t".encode()):
            # The member's own name in another case: it keeps the claim, spelt anew.
            self._call(lambda r: r.set(name_key, value, px=px))
            granted = True
        if not granted:
            return str(holder.split(b"\t")[-1].decode()) if holder else key
        with self._names_lock:
            previous = self._held.get(member_id)
            self._held[member_id] = (key, value)
        try:
            self._call(lambda r: r.hset(self._key("members:", self.node), str(member_id), name))
        except Unavailable:
            # Not granted after all: the claim lapses with its lease, nobody renews it.
            with self._names_lock:
                if previous is None:
                    self._held.pop(member_id, None)
                else:
                    self._held[member_id] = previous
            raise
        return None

    def let_go(self, members: list[tuple[int, str]]) -> None:
        """Give back the names of members that left (member id, name key) and forget
        them, in one round trip however many they are."""
        with self._names_lock:
            for member_id, key in members:
                if self._held.get(member_id, ("",))[0] == key:
                    del self._held[member_id]

        def work(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            for member_id, key in members:
                self._release(keys=[self._key("name:", key)], args=[self.node], client=pipe)
                pipe.hdel(self._key("members:", self.node), str(member_id))
            pipe.execute()

        self._call(work)

    def release_only(self, key: str) -> None:
        """Delete this node's claim on a name (a member's old name after /nick)."""
        self._call(
            lambda r: self._release(keys=[self._key("name:", key)], args=[self.node], client=r)
        )

    def claim_guests(self, member_ids: list[int]) -> dict[int, str]:
        """Fresh guest names claimed for these members of this node (member id ->
        name), in a few round trips however many arrive at once: the names are
        numbered by one counter for the whole cluster, and one taken already (by a
        /nick) is replaced by the next number."""
        px = int(self.lease * 1000)
        granted: dict[int, str] = {}
        todo = list(member_ids)
        while todo:
            count = len(todo)
            guests = self._key("guests")
            last = int(self._call(functools.partial(_incrby, key=guests, amount=count)))
            tries = {m: f"guest{last - count + 1 + i}" for i, m in enumerate(todo)}

            def work(r: Any, tries: dict[int, str] = tries) -> Any:
                pipe = r.pipeline(transaction=False)
                for member_id, name in tries.items():
                    value = f"{self.node}\t{member_id}\t{name}".encode()
                    pipe.set(self._key("name:", protocol.name_key(name)), value, nx=True, px=px)
                return pipe.execute()

            answers = self._call(work)
            todo = []
            for (member_id, name), won in zip(tries.items(), answers, strict=True):
                if won:
                    granted[member_id] = name
                else:
                    todo.append(member_id)
        members = {str(member_id): name for member_id, name in granted.items()}
        self._call(lambda r: r.hset(self._key("members:", self.node), mapping=members))
        # Renewed from now on (a claim not granted after all would lapse with its lease).
        with self._names_lock:
            for member_id, name in granted.items():
                claim = f"{self.node}\t{member_id}\t{name}".encode()
                self._held[member_id] = (protocol.name_key(name), claim)
        return granted

    def lookup(self, key: str) -> tuple[str, int, str] | None:
        """Who holds a name: (node, member id, name), or None."""
        value = self._call(lambda r: r.get(self._key("name:", key)))
        if value is None:
            return None
        node, member, name = value.decode().split("\t", 2)
        return node, int(member), name

    def roster(self) -> list[str]:
        """Every name claimed on every node, sorted (one order for everyone's /who)."""

        def work(r: Any) -> list[str]:
            keys = list(r.scan_iter(match=self._key("name:*"), count=1000))
            values = r.mget(keys) if keys else []
            return [v.decode().split("\t", 2)[2] for v in values if v is not None]

        return sorted(work_result for work_result in self._call(work))

    def some_names(self, limit: int) -> tuple[list[str], int]:
        """Up to ``limit`` claimed names (sorted) and how many are claimed in all: what a
        welcome shows, in a few round trips however many are here (the count is the
        nodes' member lists, the names one short SCAN)."""

        def work(r: Any) -> tuple[list[str], int]:
            nodes = r.smembers(self._key("nodes"))
            pipe = r.pipeline(transaction=False)
            for node in nodes:
                pipe.hlen(self._key("members:", node.decode()))
            total = sum(pipe.execute())
            names: list[str] = []
            cursor = 0
            while True:
                cursor, keys = r.scan(cursor, match=self._key("name:*"), count=200)
                values = r.mget(keys) if keys else []
                names += [v.decode().split("\t", 2)[2] for v in values if v is not None]
                if not cursor or len(names) >= limit:
                    return sorted(names)[:limit], max(total, len(names))

        result: tuple[list[str], int] = self._call(work)
        return result

    def append(self, entries: Iterable[Fields]) -> None:
        """Append entries to the stream in this order, in one pipelined round trip."""

        deadline = (time.time() + self._clock_offset + APPEND_DEADLINE * self.timeout) * 1e6
        argv: list[bytes | int] = [int(deadline), STREAM_MAXLEN]
        for fields in entries:
            argv.append(2 * len(fields))
            for key, value in fields.items():
                argv += (key, value)
        if len(argv) == 2:
            return
        done = self._call(lambda r: self._append(keys=[self._log_key], args=argv, client=r))
        if done < 0:
            raise Unavailable("the append reached Redis too late")

    def _measure_clock(self, r: Any) -> None:
        """Where Redis's clock stands against ours (the appends' deadlines are on its)."""
        before = time.time()
        seconds, micros = r.time()
        after = time.time()
        self._clock_offset = seconds + micros / 1_000_000 - (before + after) / 2

    def history(self, count: int) -> list[Fields]:
        """The last ``count`` entries of the stream, oldest first."""
        found = self._call(lambda r: r.xrevrange(self._log_key, count=count))
        return [fields for _, fields in reversed(found)]

    @property
    def start_id(self) -> bytes:
        """Where the stream ended when this node connected: it delivers what follows."""
        return self._start_id

    def since(self, after: bytes | None, upto: bytes, count: int) -> tuple[list[Fields], bool]:
        """The entries after ``after`` up to ``upto`` (both stream ids; None: from the
        start), at most the latest ``count``, oldest first; and whether that is all of
        them (False when more were there, or when the stream no longer reaches back to
        ``after``). An ``after`` later than the stream's last entry is no place in it
        (a made-up id): then as None."""

        def work(r: Any) -> Any:
            low = b"-" if after is None else b"(" + after
            pipe = r.pipeline(transaction=False)
            pipe.xrevrange(self._log_key, max=upto, min=low, count=count)
            pipe.xrange(self._log_key, count=1)
            pipe.xrevrange(self._log_key, count=1)
            return pipe.execute()

        found, first, last = self._call(work)
        if after is not None and (not last or stream_order(after) > stream_order(last[0][0])):
            return self.since(None, upto, count)  # rare: a made-up id, one more round trip
        complete = after is not None and len(found) < count
        if complete and first and stream_order(first[0][0]) > stream_order(after or b"0-0"):
            complete = False  # trimmed (MAXLEN): entries right after ``after`` are gone
        return [fields for _, fields in reversed(found)], complete

    def is_place(self, entry_id: bytes) -> bool:
        """Whether ``entry_id`` is at most the stream's last entry (not made up)."""
        last = self._call(lambda r: r.xrevrange(self._log_key, count=1))
        return bool(last) and stream_order(entry_id) <= stream_order(last[0][0])

    def take(self) -> list[tuple[bytes, Fields]]:
        """The entries the reader has read since the last call, in stream order."""
        taken: list[tuple[bytes, Fields]] = []
        inbox = self._inbox
        while inbox:
            taken.append(inbox.popleft())
        return taken

    # --- the reader thread --------------------------------------------------------------

    def _read_loop(self, wake: Callable[[], None]) -> None:
        backoff = BACKOFF_MIN
        while not self._stop.is_set():
            try:
                found = self._read_r.xread(
                    {self._log_key: self._last_id}, count=READ_COUNT, block=READ_BLOCK_MS
                )
            except Exception as exc:
                if self._stop.is_set():
                    # `stop` closed the connection under this blocking XREAD; redis-py
                    # then fails in ways of its own (not only its errors): end quietly.
                    return
                if not isinstance(exc, self._errors):
                    raise
                # Resumes from the last id read: nothing twice, nothing skipped (as long
                # as the stream still holds it).
                log.warning("cluster reader: %s (retrying in %.1f s)", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_MIN
            for _, entries in found or ():
                if entries:
                    self._inbox.extend(entries)
                    self._last_id = entries[-1][0]
            if found:
                wake()

    # --- the keeper thread: leases and dead nodes ---------------------------------------

    def _heartbeat(self, r: Any) -> str:
        """Renew this node's own lease, and say what became of it meanwhile: "" if it
        was still held; "expired" if it ran out (so did this node's names: others may
        have claimed them); "reaped" if another node has told the room that this
        node's members left (`_reap_dead`)."""
        px = int(self.lease * 1000)
        pipe = r.pipeline(transaction=False)
        pipe.set(self._key("node:", self.node), b"1", px=px, get=True)
        pipe.exists(self._key("reap:", self.node))
        pipe.sadd(self._key("nodes"), self.node)
        held, reaped, _ = pipe.execute()
        if time.monotonic() < self._lost_until:
            return ""  # told already: the reaper's mark outlives the reaping by a lease
        if reaped:
            return "reaped"
        return "" if held else "expired"

    def _renew_names(self, r: Any) -> list[int]:
        """Renew the leases of this node's names, claim again those that lapsed, and
        return the members whose names another node holds now."""
        with self._names_lock:
            held = list(self._held.items())
        if not held:
            return []
        keys = [self._key("name:", key) for _, (key, _) in held]
        claims = [claim for _, (_, claim) in held]
        taken = self._renew(keys=keys, args=[self.node, int(self.lease * 1000), *claims], client=r)
        return [held[int(i) - 1][0] for i in taken]

    def take_lost(self) -> tuple[bool, list[int]] | None:
        """Members this node must let go of, found since the last call: (True, []) if
        the room was told they all left (another node took this one for dead); (False,
        ids) if these members' names lapsed while this node was cut off from Redis and
        are someone else's now. None if neither."""
        lost, self._lost = self._lost, None
        return lost

    def _keep_loop(self, wake: Callable[[], None]) -> None:
        period = self.lease / 3
        while not self._stop.wait(period):
            try:
                r = self._keep_r
                state = self._heartbeat(r)
                # Redis answers again: the calls need not wait out their backoff.
                self._down_until = 0.0
                self._measure_clock(r)
                taken = self._renew_names(r)
                if state == "reaped":
                    self._report_lost(True, [], "the room was told its members left")
                elif taken:
                    self._report_lost(False, taken, f"{len(taken)} names are others' now")
                if state:
                    # Out of touch itself, it does not judge the others until they had
                    # a lease's time to renew theirs.
                    self._judge_after = time.monotonic() + self.lease
                    log.warning("this node's lease had lapsed (%s)", state)
                if time.monotonic() >= self._judge_after:
                    self._reap_dead()
            except self._errors as exc:
                log.warning("cluster keeper: %s", exc)

    def _report_lost(self, told: bool, members: list[int], why: str) -> None:
        log.warning("this node was cut off from the cluster: %s; disconnecting them", why)
        self._lost_until = time.monotonic() + 2 * self.lease
        self._lost = (told, members)
        self._wake()

    def _reap_dead(self) -> None:
        """Tell the room that the members of a node whose lease ran out have left, and
        free their names. One node does it: the one that claims the reaping first."""
        r = self._keep_r
        for raw in r.smembers(self._key("nodes")):
            node = raw.decode()
            if node == self.node or r.exists(self._key("node:", node)):
                continue
            if not r.set(self._key("reap:", node), self.node, nx=True, px=int(self.lease * 1000)):
                continue
            members = r.hgetall(self._key("members:", node))
            pipe = r.pipeline(transaction=False)
            for member, name in members.items():
                fields = {b"k": b"x", b"t": name + b" left (server lost)"}
                fields.update({b"n": node.encode(), b"m": member})
                pipe.xadd(self._log_key, fields, maxlen=STREAM_MAXLEN, approximate=True)
            pipe.delete(self._key("members:", node))
            pipe.srem(self._key("nodes"), node)
            pipe.execute()
            for name in members.values():
                key = protocol.name_key(name.decode())
                self._release(keys=[self._key("name:", key)], args=[node], client=r)
            log.warning("node %s is gone: %d members left", node, len(members))
