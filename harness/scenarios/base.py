"""What every scenario stands on: options, the run context, and the moves parties make.

A scenario talks only to parties (through a `Context`); the context starts them on the
network's client hosts, keeps the run's `RunRecord`, and provides the few moves all
scenarios share: *sync* (everyone provably in the room), *stream* (send lines on a thread),
and *settle* (wait until everything sent has arrived, or provably never will).

Synchronisation is always on tokens arriving. The one timed wait is `settle`: loss has no
event, so once every sender is done and nothing has moved for ``settle`` seconds, the
missing messages are declared lost and the checks say which.
"""

from __future__ import annotations

import abc
import random
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from harness.hosts import Network
from harness.party import Party, make_room
from harness.processes import child_env
from harness.target import SetupError, Target, expand, python_for
from harness.tokens import HELLO, MESSAGE, Token, make, random_payload
from harness.transcript import COUNTED, Expectation, PartyLog, Phase, RunRecord

SYNC_BUDGET = 5  # x --settle: how long getting everyone into the room may take
# Once every party a hello is still awaited by is provably up and served by the relay
# (`Context._settled`), start-up is no longer a reason to wait: the hello is then
# awaited as any line is, --settle s, or this many times the slowest trip a line took
# on the way meanwhile, if longer (a loaded machine, a slow path).
SYNC_TRIPS = 5
SYNC_ROUND = 0.3  # first wait for a hello before sending another (late joiners miss some)
EXITING_S = 3.0  # how long a client whose terminal closed is given to be reported exited
CLOSERS = 64  # parties started, synced or closed at once (threads that mostly wait)
WINDOW = 32  # lines a talker may have in flight before it waits for them to arrive
CAP_FACTOR = 10  # a talker proving full duplex sends at most this many times --messages
# Payload lengths: mostly chat-like, but one line in LONG_EVERY is long (LONG_MIN up to
# the line limit), so a server that silently truncates or frames by read() chunk fails.
LONG_EVERY = 16
LONG_MIN = 1024
OUR_MAX_LINE = 4096  # this project's server's default --max-line
FOREIGN_MAX_LINE = 3500  # a safe bound for servers we know nothing of (many use 4 KB)
TOKEN_ROOM = 64  # bytes a token's framing and a line ending need beyond the payload
BURST_BYTES = 16384  # one write of many lines, as a paste or a pipe hands them over
NUDGES_PER_ROUND = 16  # listeners a sync round nudges at most (each nudge is N lines)
NUDGE_QUIET = 0.3  # s without progress before a receiver that misses lines types a hello
# The default bound on a run grows with its parties: each is a client process to start
# (about 0.1 s of CPU for a Python client), and in a room of N each line is shown N
# times - N x N x lines deliveries, each parsed by a client and by the harness. 500
# parties on a busy 2-core machine take minutes, not the 60 s that suit a few.
PARTY_SECONDS = 1.0
DELIVERY_SECONDS = 0.0001
SYNC_LINES = 3  # hellos and the burst's share, per party, beyond --messages


@dataclass
class Options:
    """What one run is asked to do: the one place the defaults of every run are held
    (the command line's defaults are read from here)."""

    clients: int = 3
    messages: int = 200
    seed: int = 1
    timeout: float = 60.0
    settle: float = 2.0
    client_template: str = ""
    ours: bool = True  # the server under test is this project's
    script: str | None = None  # conversation script file
    echo: bool = False  # the server echoes a line to its sender by design
    join_lines: tuple[str, ...] = ()  # sent by each party before it chats ({name})
    max_line: int = 0  # the server's line limit in bytes (0: ours 4096, others 3500)
    # --cluster N: N nodes sharing one room through a redis-server (0: one server), and
    # the name lease they are given (a killed node's clients leave within about it).
    cluster_nodes: int = 0
    cluster_lease: float = 3.0  # s: short for a failover run, long enough for a loaded box
    # Given to every client, chat or raw: TLS and password (harness.secure).
    client_options: tuple[str, ...] = ()

    @property
    def long_payload(self) -> int:
        """The longest payload a line may carry under the server's line limit."""
        limit = self.max_line or (OUR_MAX_LINE if self.ours else FOREIGN_MAX_LINE)
        return max(8, limit - TOKEN_ROOM)


def default_timeout(clients: int, messages: int) -> float:
    """The bound on one run when none is given: 60 s, or more for many parties."""
    deliveries = clients * clients * (messages + SYNC_LINES)
    return max(Options.timeout, PARTY_SECONDS * clients + DELIVERY_SECONDS * deliveries)


class Context:
    """One run of one scenario: its parties, its record, its deadline.

    Resource handling: every party started through `party`/`raw_party` is closed by
    `close_all`, which the runner calls whatever happens.
    """

    def __init__(
        self,
        name: str,
        options: Options,
        network: Network,
        target: Target,
        record: RunRecord,
    ) -> None:
        self.name = name
        self.options = options
        self.network = network
        self.target = target
        self.record = record
        record.echo = options.echo
        self.rng = random.Random(options.seed)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + options.timeout
        self.parties: dict[str, Party] = {}
        self.node_of: dict[str, int] = {}  # party -> the cluster node it connects to (0)
        self.known_crcs: dict[str, tuple[str, int]] = {}
        # When each token was made (run clock), just before it was typed: which lines
        # were begun after a hello, and how long lines take on the way (`_settled`).
        self.made: dict[tuple[str, int], float] = {}
        self._seq: dict[str, int] = {}
        self._gone: float | None = None  # when the server was first seen gone (run clock)
        self._count = 0
        self._lock = threading.Lock()

    def clock(self) -> float:
        return time.monotonic() - self.t0

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def server_gone(self) -> float | None:
        """When the harness first saw the server under test exit (run clock), or None
        while it runs: from then on nothing more can be relayed, so no wait for a line
        typed later can end otherwise, and no nudge can help. One server only: a
        cluster's nodes are killed on purpose (failover) and the others relay on."""
        if self._gone is None and self.target.cluster_info() is None and self.target.died():
            self._gone = self.clock()
        return self._gone

    # -- parties -------------------------------------------------------------------

    def _start(
        self,
        name: str,
        argv: list[str],
        quit_line: str | None,
        eof_ends: bool = True,
        ready_text: str = "",
    ) -> Party:
        party = self._prepare(name, argv, quit_line, eof_ends)
        self._launch(party, ready_text)
        return party

    def _prepare(
        self, name: str, argv: list[str], quit_line: str | None, eof_ends: bool = True
    ) -> Party:
        """A party on the next client host, recorded, not yet started."""
        host = self.network.client_host(self._count)
        node = self.node_of[name] = self.target.endpoint(self._count)[0]
        self._count += 1
        command = host.command(argv, tty=True)
        where = host.label + (f", node {node}" if self.target.node_count > 1 else "")
        log = PartyLog(name, where=where, command=" ".join(argv))
        self.record.parties[name] = log
        party = Party(
            name,
            command,
            log,
            self.clock,
            env=child_env(),
            known_crcs=self.known_crcs,
            quit_line=quit_line,
            eof_ends=eof_ends,
        )
        self.parties[name] = party
        return party

    def _launch(self, party: Party, ready_text: str = "") -> None:
        party.start()
        if ready_text and self.options.join_lines:
            # What is typed before the client says it is ready may be thrown away (the
            # raw client's switch to raw mode flushes pending input).
            party.wait_text(ready_text, self.deadline)
        for line in self.options.join_lines:
            # Before any chat: a nickname, a password... (never a counted delivery).
            party.send_text(line.replace("{name}", party.name), self.deadline)

    def _client_argv(self) -> list[str]:
        host = self.network.client_host(self._count)
        _, address, port = self.target.endpoint(self._count)
        return expand(
            self.options.client_template,
            host=address,
            port=port,
            python=python_for(host),
            client_options=" ".join(shlex.quote(o) for o in self.options.client_options),
        )

    def party(self, name: str) -> Party:
        """Start a client party (the client command template) on the next client host."""
        return self._start(name, self._client_argv(), "/quit" if self.options.ours else None)

    def many_parties(self, names: Sequence[str]) -> list[Party]:
        """Start client parties for ``names`` at once (`CLOSERS` at a time): starting a
        process in a pty waits for its exec, and 100 of those one after the other take
        seconds. Hosts are given out in the order of ``names``, as `party` would."""
        quit_line = "/quit" if self.options.ours else None
        make_room(len(self.parties) + len(names))
        parties = [self._prepare(name, self._client_argv(), quit_line) for name in names]
        if len(parties) <= 1:
            for party in parties:
                self._launch(party)
            return parties
        with ThreadPoolExecutor(min(CLOSERS, len(parties)), "start") as pool:
            list(pool.map(self._launch, parties))
        return parties

    def raw_party(self, name: str, options: Sequence[str] = ()) -> Party:
        """Start a byte-exact party (`harness.rawclient`) for input no client would type;
        ``options`` are rawclient's own (``--rcvbuf``, ``--mss``)."""
        host = self.network.client_host(self._count)
        _, address, port = self.target.endpoint(self._count)
        argv = [
            python_for(host),
            "-m",
            "harness.rawclient",
            address,
            str(port),
            *self.options.client_options,
            *options,
        ]
        # This project's server ends the connection on /quit, so the raw client (whose
        # raw terminal passes Ctrl-D on as a byte) exits at once instead of being killed.
        quit_line = "/quit" if self.options.ours else None
        return self._start(name, argv, quit_line, eof_ends=False, ready_text="connected")

    def close_all(self) -> None:
        """Close every party at once: each close waits up to seconds for its client to
        act on the quit line and exit, and 100 of those one after the other would make
        the ending take longer than the run (bounded by `CLOSERS` at a time)."""
        parties = list(self.parties.values())
        if len(parties) <= 1:
            for party in parties:
                party.close()
            return
        with ThreadPoolExecutor(min(CLOSERS, len(parties)), "close") as pool:
            list(pool.map(Party.close, parties))

    # -- tokens --------------------------------------------------------------------

    def token(
        self, sender: str, payload: str | None = None, kind: str = MESSAGE, *, size: int = 0
    ) -> Token:
        """A fresh token from ``sender``; a random payload unless given (``size`` chars
        if more than 0, else a chat-like 8-48)."""
        with self._lock:
            seq = self._seq.get(sender, 0) + 1
            self._seq[sender] = seq
        if payload is None:
            if size:
                payload = random_payload(self.rng, size, size)
            elif kind == MESSAGE and self.rng.randrange(LONG_EVERY) == 0:
                top = self.options.long_payload
                payload = random_payload(self.rng, min(LONG_MIN, top), top)
            else:
                payload = random_payload(self.rng)
        tok = make(sender, seq, payload, kind)
        self.known_crcs[tok.crc] = tok.key
        self.made[tok.key] = self.clock()
        return tok

    def phase(self, name: str, start: float, outcome: str) -> None:
        """Record a step of the scenario that began at ``start`` (run clock) and ends now."""
        self.record.phases.append(Phase(name, start, self.clock(), outcome))

    # -- moves ---------------------------------------------------------------------

    def sync(self, speaker: Party, listeners: list[Party]) -> bool:
        """Prove ``speaker`` and ``listeners`` are all in the room.

        ``speaker`` says hello until every listener has heard one of its hellos (one is
        proof enough: a listener in the room stays there). A listener that joined late
        misses earlier hellos, which is why hellos are never counted as loss. How it
        ended is a phase of the record (and a note when it was settled on evidence).
        """
        start = self.clock()
        ok, outcome = self._sync(speaker, listeners)
        self.phase(f"hello: {speaker.name} to {_names(listeners)}", start, outcome)
        return ok

    def _sync(self, speaker: Party, listeners: list[Party]) -> tuple[bool, str]:
        # A server that never relays (or one direction only) must not eat the whole run:
        # give up after SYNC_BUDGET without progress and let the checks say what is wrong.
        # Progress is one more listener hearing a hello: hundreds of clients take tens of
        # seconds to start on a busy machine, and a fixed budget would fail them all.
        # Once those still waiting are provably up and served, the wait is shorter
        # (`_settled`): start-up, the reason for the budget, is over.
        span = SYNC_BUDGET * self.options.settle
        budget = min(self.deadline, time.monotonic() + span)
        hellos: set[tuple[str, int]] = set()
        heard = 0
        wait = SYNC_ROUND
        since = progress_at = -1.0  # run clock: the first hello made, the last progress
        settled: tuple[float, float] | None = None
        while time.monotonic() < budget:
            hello = self.token(speaker.name, "hello", HELLO)
            hellos.add(hello.key)
            if since < 0:
                since = progress_at = self.made[hello.key]
            sent_at = time.monotonic()
            if not speaker.send(hello, self.deadline):
                return False, f"{speaker.name} stopped taking input"
            # Wait while listeners still come to hear a hello; say it again as soon as a
            # step brings nobody new (those left missed it: they joined after it was
            # said) or a listener comes up after it was said. Hellos do not cancel each
            # other, so a room slower to show one than a step still converges; waiting
            # out rounds of seconds for one hello to reach all cost a room of 100 up to
            # 4 s once its last client had joined. A hello is N lines for the room to
            # show, nudges below are N each: those are what stay rare.
            while time.monotonic() < budget:
                step_end = min(budget, time.monotonic() + wait)
                if all(p.wait_heard_any(hellos, step_end) for p in listeners):
                    return True, "every listener heard it"
                if not speaker.alive:
                    return False, f"{speaker.name} exited"
                now_heard = sum(1 for p in listeners if p.count_from(hellos))
                progress = now_heard > heard
                heard = now_heard
                late = self._came_up_since(listeners, hellos, sent_at)
                if progress or late:
                    # The room is still forming: no backing off, and no nudges (each is
                    # N lines, and the listeners not up yet would all look quiet).
                    budget = min(self.deadline, time.monotonic() + span)
                    progress_at, settled = self.clock(), None
                    wait = SYNC_ROUND
                    if late:
                        break
                    continue
                waiting = [p for p in listeners if not p.count_from(hellos)]
                settled = self._settled([(speaker, p, since) for p in waiting], progress_at)
                if settled is not None:
                    budget = min(budget, self.t0 + settled[0])
                if wait > SYNC_ROUND:
                    self._nudge_quiet(listeners, hellos, sent_at)
                wait = min(wait * 1.5, self.options.settle)
                break
        missing = [p for p in listeners if not p.count_from(hellos)]
        return self._unheard(
            f"{speaker.name}'s hello never reached {_names(missing)}",
            f"{'them' if len(missing) > 1 else 'it'} and {speaker.name}",
            settled,
            span,
        )

    def _unheard(
        self, missed: str, served: str, settled: tuple[float, float] | None, span: float
    ) -> tuple[bool, str]:
        """How a hello sync that gave up ended: ``missed`` says which hellos were not
        heard, ``served`` whom the relay was seen serving (when it was settled)."""
        if time.monotonic() >= self.deadline:
            return False, f"cut by --timeout: {missed}"
        if settled is None:
            return False, f"no progress for {span:g}s: {missed}"
        why = (
            f"{missed}, though the relay served {served} after it was said: settled "
            f"{settled[1]:g}s later, not waited out to {span:g}s (the checks judge that "
            "direction)"
        )
        self.record.notes.append(why)
        return False, "settled: " + why

    def _settled(
        self, pairs: list[tuple[Party, Party, float]], after: float
    ) -> tuple[float, float] | None:
        """(when, grace): when waiting may end although, in each pair (speaker,
        listener, since), the listener has heard none of the speaker's hellos, the
        first made at ``since`` (run clock); None while any pair lacks the evidence.

        The sync's budget, SYNC_BUDGET x --settle without progress, is for clients
        still starting up: a room of hundreds on a busy machine. Neither end of a pair
        is starting up once the speaker has shown a line relayed from another party
        (its client is connected and in the room) and the relay was seen serving the
        listener after ``since`` (`_served`). The hello is then awaited as any line
        is: --settle s - or SYNC_TRIPS times the slowest trip (shown minus made) of
        the lines they showed since ``since``, if longer, so a loaded machine or a slow
        path gets its time - from that evidence and from ``after`` (the last progress).
        A direction merely slower than that is not misjudged: the sync only proves
        membership, which that evidence proves too, and the direction's counted lines
        are judged by the checks as before, however late they arrive."""
        latest, trip = after, 0.0
        served: dict[tuple[int, float], tuple[float, float] | None] = {}
        for speaker, listener, since in pairs:
            relayed = speaker.log.received
            if not relayed:
                return None
            key = (id(listener), since)
            if key not in served:
                served[key] = self._served(listener, since)
            found = served[key]
            if found is None:
                return None
            latest = max(latest, relayed[0].t, found[0])
            trip = max(trip, found[1], self._slowest(speaker, since))
        grace = max(self.options.settle, SYNC_TRIPS * trip)
        return latest + grace, grace

    def _trips(self, party: Party, since: float) -> list[tuple[float, float, Token]]:
        """(shown, made, token) for each line ``party`` showed since ``since``, newest
        first (only the lines shown since are looked at: the log only grows)."""
        out = []
        received = party.log.received
        i = len(received) - 1
        while i >= 0 and received[i].t >= since:
            r = received[i]
            made = self.made.get(r.token.key)
            if made is not None:
                out.append((r.t, made, r.token))
            i -= 1
        return out

    def _slowest(self, party: Party, since: float) -> float:
        return max((shown - made for shown, made, _ in self._trips(party, since)), default=0.0)

    def _served(self, party: Party, since: float) -> tuple[float, float] | None:
        """(when, slowest trip): the first time the relay was seen serving ``party``
        after ``since``: it showed a line another party began after then, or a line it
        began after then was shown to another party; None if neither happened."""
        trips = self._trips(party, since)
        first = [shown for shown, made, _ in trips if made > since]
        slowest = max((shown - made for shown, made, _ in trips), default=0.0)
        sent = party.log.sent
        mine: set[tuple[str, int]] = set()
        i = len(sent) - 1
        while i >= 0 and sent[i].t >= since:
            if self.made.get(sent[i].token.key, since) > since:
                mine.add(sent[i].token.key)
            i -= 1
        for other in [] if not mine else self.parties.values():
            if other is not party and other.count_from(mine):
                shown = [(t, t - made) for t, made, tok in self._trips(other, since)
                         if tok.key in mine]  # fmt: skip
                first.extend(t for t, _ in shown)
                slowest = max([slowest, *(trip for _, trip in shown)])
                break
        return (min(first), slowest) if first else None

    def _nudge_quiet(
        self, listeners: list[Party], hellos: set[tuple[str, int]], since: float
    ) -> None:
        """After steps without progress: a client that reads only after it sent shows
        the hello once it types, and a hello of its own (never counted) lets it. One
        still showing lines is busy, not holding them back. Each nudge goes to the whole
        room, so a step nudges a few: hundreds at once were N x N lines to show.

        While listeners still come up (one was started, or first showed output, within
        ``--settle`` s), one that has shown nothing is most likely still starting: a
        nudge typed into its terminal would reach the room once it runs, for nothing (a
        room of 100 said 32 such nudges, 3,200 lines, before any client had shown its
        prompt). A room where nobody shows anything until it types is nudged once its
        last party has been running ``--settle`` s."""
        recent = time.monotonic() - self.options.settle
        forming = any(
            p.started_at > recent or (p.first_output is not None and p.first_output > recent)
            for p in listeners
        )
        quiet = [
            p
            for p in listeners
            if not p.count_from(hellos)
            and p.alive
            and p.quiet_since(since)
            and not (forming and p.first_output is None)
        ]
        for p in quiet[:NUDGES_PER_ROUND]:
            p.send(self.token(p.name, "nudge", HELLO), self.deadline)

    @staticmethod
    def _came_up_since(listeners: list[Party], hellos: set[tuple[str, int]], since: float) -> bool:
        """Whether a listener that heard no hello yet first showed output after ``since``
        (it started, or connected, after the last hello was said)."""
        return any(
            p.first_output is not None and p.first_output > since and not p.count_from(hellos)
            for p in listeners
        )

    def sync_all(self, parties: list[Party]) -> bool:
        """Everyone in the room: the first hears from the rest and the rest from the first."""
        first, rest = parties[0], parties[1:]
        if self.sync(first, rest) and self._sync_each_to(first, rest):
            return True
        for p in parties:
            if p.eof and p.alive:
                # Its terminal closed, so it is exiting: its terminal closes as its files
                # do, a moment before the system reports the exit. Asked in between, a
                # client that never got in was taken for one still running, and the run
                # went on to FAIL the server instead of naming the client.
                p.wait_exit(min(self.deadline, time.monotonic() + EXITING_S))
            if not p.alive:
                tail = " | ".join(line.text for line in p.log.snapshot()[-4:])
                raise SetupError(f"client {p.name} exited before joining the room: {tail}")
        return False

    def _sync_each_to(self, first: Party, rest: list[Party]) -> bool:
        """Each of ``rest`` is heard by ``first``: all say hello at once, and those not
        heard yet say it again once a round brought nobody new and no party has shown
        anything for ``--settle`` s, waiting longer each round. ``first`` is nudged then
        too. Each hello and each nudge goes to the whole room: one more from each of
        hundreds of parties is N x N lines the clients must show."""
        start = self.clock()
        ok, outcome = self._each_to(first, rest)
        self.phase(f"hello: {_names(rest)} to {first.name}", start, outcome)
        return ok

    def _each_to(self, first: Party, rest: list[Party]) -> tuple[bool, str]:
        span = SYNC_BUDGET * self.options.settle
        budget = min(self.deadline, time.monotonic() + span)
        hellos: dict[str, set[tuple[str, int]]] = {p.name: set() for p in rest}
        waiting = list(rest)
        wait = SYNC_ROUND
        resend = True
        since = progress_at = -1.0  # run clock: the first hellos made, the last progress
        settled: tuple[float, float] | None = None
        while waiting and time.monotonic() < budget:
            if resend:
                latest: set[tuple[str, int]] = set()
                for p in waiting:
                    hello = self.token(p.name, "hello", HELLO)
                    if not p.send(hello, self.deadline):
                        return False, f"{p.name} stopped taking input"
                    hellos[p.name].add(hello.key)
                    latest.add(hello.key)
                if since < 0:
                    # Once all of the first round were made: lines begun after this
                    # were begun after each of them (`_settled`).
                    since = progress_at = self.clock()
            round_start = time.monotonic()
            first.wait_tokens(latest, min(budget, round_start + wait))
            # Any hello of a party's that arrived proves it is in the room.
            still = [p for p in waiting if not first.count_from(hellos[p.name])]
            # While hellos still arrive, wait on: resending them all would add N lines
            # for every party to show, the slower the room the more. So would resending
            # while the room still shows lines now and then: the hellos may be behind
            # them. Every one of ``rest`` is in the room already (it heard ``first``), so
            # its hello is not missed for joining late: only a lossy relay, or a client
            # that holds lines back, needs it said again. In a room of 500 on a busy
            # machine ``first`` went quiet for a round now and then while 250,000 hellos
            # were still being shown (with a thousand processes runnable, one waits
            # seconds for the CPU); resending at each such pause made it 900,000.
            progress = len(still) < len(waiting)
            quiet_from = time.monotonic() - self.options.settle
            busy = not all(p.quiet_since(quiet_from) for p in (first, *rest))
            resend = not progress and not busy
            if progress:
                budget = min(self.deadline, time.monotonic() + span)
                progress_at, settled = self.clock(), None
            else:
                # Settled on evidence counted from when ``first`` last showed anything
                # too: never while it still shows lines the hellos may be behind.
                shown = max(progress_at, first.last_output - self.t0)
                settled = self._settled([(p, first, since) for p in still], shown)
                if settled is not None:
                    budget = min(budget, self.t0 + settled[0])
            if resend and first.alive:
                first.send(self.token(first.name, "nudge", HELLO), self.deadline)
            waiting = still
            wait = min(wait * 1.5, self.options.settle)
        if not waiting:
            return True, f"{first.name} heard every one"
        return self._unheard(
            f"{first.name} never heard {_names(waiting)}'s hello",
            f"{first.name} and {'them' if len(waiting) > 1 else 'it'}",
            settled,
            span,
        )

    def stream(
        self,
        party: Party,
        count: int,
        *,
        window_to: list[Party] | None = None,
        more: Callable[[], bool] | None = None,
        size: int = 0,
        cap: int | None = None,
        leave: bool = False,
        lockstep: float | None = None,
    ) -> threading.Thread:
        """Start a thread that makes ``party`` send ``count`` lines.

        ``window_to``: the parties that must receive this stream. The sender keeps at
        most WINDOW lines in flight to each of them - it waits for its own lines to
        *arrive* before typing more - so a stream lasts as long as the delivery takes,
        not as long as the kernel takes to swallow it into a pty buffer. When lines stop
        arriving at a peer for ``settle`` seconds the sender stops pacing on it (the loss
        check reports what is missing), so a lossy server cannot stall the stream.

        ``more``: keep talking past ``count`` while it returns True (duplex's proof,
        churn, crash).
        ``size``: the payload length of each line (default: chat-like, 8-48 characters).
        ``cap``: the most lines ``more`` may add up to (default CAP_FACTOR x).
        ``leave``: the party leaves (quit line, EOF) right after its last line, which must
        still reach everyone.
        ``lockstep``: past ``count`` lines, one line in flight: the next is typed once the
        last arrived at every ``window_to`` peer, or after this many seconds without it
        (so at least this long apart where lines are lost).
        Lines then go one round trip apart, so talk past ``count`` spreads over time
        instead of filling the window in a few milliseconds.
        """
        if cap is None:
            cap = max(count * CAP_FACTOR, count + 100)
        peers = list(window_to or [])

        def run() -> None:
            sent = 0
            while sent < cap and not self.expired:
                if sent >= count and (more is None or not more()):
                    break
                if lockstep is not None and sent >= count:
                    # Every receiver, even one the window gave up on: lines lost on
                    # the way must not let the talker type thousands at once.
                    for peer in window_to or []:
                        until = min(self.deadline, time.monotonic() + lockstep)
                        peer.wait_messages(party.name, sent, until)
                for peer in [] if lockstep is not None and sent >= count else list(peers):
                    need = sent - WINDOW
                    until = min(self.deadline, time.monotonic() + self.options.settle)
                    if need > 0 and not peer.wait_messages(party.name, need, until):
                        # Lines are not arriving: stop pacing on this peer (the loss
                        # check will say what went missing) rather than crawl.
                        peers.remove(peer)
                if not party.send(self.token(party.name, size=size), self.deadline):
                    if not self.expired:
                        self.record.notes.append(
                            f"{party.name} stopped taking input after {sent} lines "
                            f"({party.log.exit_status or 'its terminal closed'})"
                        )
                    return
                sent += 1
            if leave:
                party.close(busy_until=self.deadline)

        thread = threading.Thread(target=run, name=f"stream-{party.name}", daemon=True)
        thread.start()
        return thread

    def join(self, threads: list[threading.Thread]) -> bool:
        for thread in threads:
            thread.join(timeout=max(0.0, self.deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def expect(self, receiver: str, senders: list[str]) -> None:
        self.record.expectations.append(Expectation(receiver, senders))

    def _expected_keys(self) -> dict[str, set[tuple[str, int]]]:
        """Each expected sender's counted keys, built once per look (not once per
        receiver: 500 receivers of 500 senders would rebuild them 250,000 times)."""
        keys: dict[str, set[tuple[str, int]]] = {}
        for exp in self.record.expectations:
            for sender in exp.senders:
                if sender not in keys:
                    keys[sender] = {s.token.key for s in self.record.sent_by(sender, COUNTED)}
        return keys

    def missing(self) -> list[str]:
        out = []
        keys = self._expected_keys()
        for exp in self.record.expectations:
            party = self.parties[exp.receiver]
            for sender in exp.senders:
                lack = len(keys[sender]) - party.count_from(keys[sender])
                if lack:
                    out.append(f"{lack} of {sender}'s lines at {exp.receiver}")
        return out

    def settle(self, nudge: bool = False) -> None:
        """Wait until every expected delivery happened, or nothing moves for ``settle`` s.

        ``nudge``: a receiver still missing lines after NUDGE_QUIET without progress types
        a hello (never counted): a client that reads only after it sent then shows what
        it holds back, so a late line is judged late (duplex), not lost.

        Error handling: passing the run's deadline marks the record timed out, with what
        was still awaited, so the "bounded time" check fails instead of the run hanging.
        """
        start = self.clock()
        self.phase("settle", start, self._settle(nudge))

    def _settle(self, nudge: bool) -> str:
        # What is awaited does not change once all sending is done: built once, and each
        # look keeps only what is still missing, so it costs what is left, not what was
        # expected (500 receivers of 500 senders: half a million keys at every look).
        awaited = self._awaited()
        last = -1
        quiet_since = nudged = time.monotonic()
        interval = NUDGE_QUIET
        while True:
            awaited = [(r, self.parties[r].not_received(keys)) for r, keys in awaited]
            count = sum(len(keys) for _, keys in awaited)
            if not count:
                return "everything arrived"
            now = time.monotonic()
            if now >= self.deadline:
                self.record.timed_out = True
                self.record.stalled = self.missing()
                return f"cut by --timeout: {count} deliveries missing"
            if count != last:
                if last >= 0:
                    quiet_since, interval = now, NUDGE_QUIET
                last = count
            gone = self.server_gone()
            if gone is not None:
                # What was on its way when the server exited gets --settle s from then
                # (or from the last arrival), no more: nudges cannot be relayed now.
                if now - max(quiet_since, self.t0 + gone) >= self.options.settle:
                    gave_up = (
                        f"gave up waiting: the server had exited, and nothing arrived for "
                        f"{self.options.settle:g}s"
                    )
                    self.record.notes.append(f"{gave_up}: " + "; ".join(self.missing()[:3]))
                    return f"{gave_up}: {count} deliveries missing"
            elif now - max(quiet_since, nudged) >= self.options.settle:
                gave_up = f"gave up waiting after {self.options.settle:g}s without progress"
                self.record.notes.append(f"{gave_up}: " + "; ".join(self.missing()[:3]))
                return f"{gave_up}: {count} deliveries missing"
            if nudge and gone is None and now - max(quiet_since, nudged) >= interval:
                # Each nudge waits twice as long as the last: a relay that serves one
                # talker at a time needs that talker quiet before it serves the others.
                nudged, interval = now, interval * 2
                for receiver in self._lacking(awaited):
                    if receiver.alive and not receiver.closed:
                        receiver.send(self.token(receiver.name, "nudge", HELLO), self.deadline)
            # Polling: the absence of a delivery has no event to wait on.
            time.sleep(0.05)

    def _awaited(self) -> list[tuple[str, set[tuple[str, int]]]]:
        """Each expectation's receiver and every key it is to receive."""
        keys = self._expected_keys()
        return [
            (exp.receiver, set().union(*(keys[s] for s in exp.senders)))
            for exp in self.record.expectations
        ]

    def _lacking(self, awaited: list[tuple[str, set[tuple[str, int]]]]) -> list[Party]:
        out = []
        for receiver, keys in awaited:
            party = self.parties[receiver]
            if party.count_from(keys) < len(keys) and party not in out:
                out.append(party)
        return out

    def burst_party(self, name: str, receivers: list[Party]) -> Party:
        """A byte-exact party that joins the room to write a burst (`burst`)."""
        start = self.clock()
        party = self.raw_party(name)
        connected = party.wait_text("connected", self.deadline)
        self.phase(f"start: {name}", start, "connected" if connected else "never connected")
        if not self.sync(party, receivers):
            self.record.notes.append(f"{name}'s hello never reached everyone")
        return party

    def burst(self, party: Party) -> None:
        """``party`` hands the server many lines in ONE write (about BURST_BYTES, mixed
        lengths, as a paste or a pipe does): a server that frames by read() chunk instead
        of by newline breaks the lines that straddle its reads."""
        tokens: list[Token] = []
        size = 0
        while size < BURST_BYTES:
            tok = self.token(party.name)
            tokens.append(tok)
            size += len(tok.encode()) + 1
        if party.send_block(b"", tokens, self.deadline):
            self.record.notes.append(
                f"{party.name} wrote {len(tokens)} lines ({size} bytes) in one write"
            )
        else:
            self.record.notes.append(f"{party.name} could not write its burst")

    def finish_streams(
        self, threads: list[threading.Thread], nudge: bool = False, *, since: float | None = None
    ) -> None:
        """Wait for the stream threads, then `settle`; ``since`` (run clock): when the
        streams began, to record them as a phase."""
        done = self.join(threads)
        if since is not None:
            outcome = "every talker done" if done else "cut by --timeout"
            self.phase(f"streams: {', '.join(t.name for t in threads)}", since, outcome)
        if not done:
            self.record.timed_out = True
            self.record.stalled = [f"{t.name} still sending" for t in threads if t.is_alive()]
        self.settle(nudge)

    def specific(self, name: str, ok: bool, detail: str) -> None:
        """Record an expectation only this project's server promises (n/a otherwise)."""
        if self.record.specific is not None:
            self.record.specific[name] = (ok, detail)


def _names(parties: Sequence[Party]) -> str:
    """Parties for a record's phase or note: by name when few."""
    if len(parties) <= 3:
        return ", ".join(p.name for p in parties) or "nobody"
    return f"{len(parties)} parties"


class Scenario(abc.ABC):
    """One behaviour to exercise. Subclasses set `name`/`summary` and implement `run`."""

    name: str
    summary: str
    min_clients = 2
    # Options this scenario asks of this project's server, filled into a server command's
    # ``{server_options}`` (the default command has it; a --server-cmd without it is run
    # as given). The scenario sees whether they were applied: `Target.options_applied`.
    server_options: tuple[str, ...] = ()
    # Why this scenario cannot run its server on other machines (--hosts ssh), if so.
    local_only = ""

    def check_options(self, options: Options) -> None:
        """Raise ValueError (one line) for options this scenario cannot use."""
        return None

    @abc.abstractmethod
    def run(self, ctx: Context) -> None:
        """Drive the parties; fill ``ctx.record`` (expectations, duplex pairs, turns)."""
