"""Several real server processes sharing one room through a real redis-server.

Every check is on what a client on one node or another reads: one order for everyone,
names unique across nodes, /who across nodes, a killed node's members leaving, and a
line refused aloud while Redis does not answer.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from live_server import WAIT, Peer, ServerProcess, running_server
from needs import needs
from redis_fixture import RedisServer, redis_server  # noqa: F401 - the fixture

from chatbox import protocol
from chatbox.server.cluster import stream_order
from harness.daemon import free_port

# Short, since some tests wait for a dead node's lease to run out; long enough that a live
# node's keeper renews in time on a loaded machine (else it is taken for dead, and then
# disconnects its clients).
LEASE = "3"


@pytest.fixture(params=["thread", pytest.param("fork", marks=pytest.mark.fork)])
def nodes(
    redis_server: RedisServer,  # noqa: F811
    request: pytest.FixtureRequest,
) -> Iterator[list[ServerProcess]]:
    """Two nodes (A and B) on one Redis, each on its own port, in each mode."""
    started: list[ServerProcess] = []
    try:
        for _ in range(2):
            args = ["--host", "127.0.0.1", "--cluster", redis_server.url, "--cluster-lease", LEASE]
            started.append(ServerProcess(*args, "--mode", request.param, "0"))
        yield started
    finally:
        for node in started:
            node.stop()


def join(node: ServerProcess) -> tuple[Peer, str]:
    peer = node.connect()
    welcome = peer.line()
    assert welcome.startswith("* welcome "), welcome
    return peer, welcome.split()[2].rstrip(";")


def joined_when_ready(node: ServerProcess) -> Peer:
    """A client of ``node`` once it admits one: a node that has just been out of touch
    with Redis refuses newcomers (``! cluster unavailable``) until its backoff ends."""
    deadline = time.monotonic() + WAIT
    while True:
        peer = node.connect()
        said = peer.line()
        if said.startswith("* welcome "):
            return peer
        peer.close()
        assert said == "! cluster unavailable" and time.monotonic() < deadline, said


def until(peer: Peer, prefix: str) -> str:
    """The first line starting with ``prefix`` this peer reads (earlier ones skipped)."""
    while True:
        line = peer.line()
        if line.startswith(prefix):
            return line


def chat_lines(peer: Peer, count: int) -> list[str]:
    """The next ``count`` chat lines this peer reads (notices skipped)."""
    got: list[str] = []
    while len(got) < count:
        line = peer.line()
        if line.startswith("<"):
            got.append(line)
    return got


def test_every_client_on_every_node_sees_one_order(nodes: list[ServerProcess]) -> None:
    a, b = nodes
    (a1, n_a1), (a2, _) = join(a), join(a)
    (b1, n_b1), (b2, _) = join(b), join(b)
    peers = [a1, a2, b1, b2]
    # Everyone is in the room once each has read a line said after the last join.
    b2.send(b"ready\n")
    for peer in (a1, a2, b1):
        peer.expect("<")
    rounds, per_round = 5, 20
    for r in range(rounds):
        senders = [
            threading.Thread(
                target=p.send,
                args=(b"".join(f"{n}-{r}-{i}\n".encode() for i in range(per_round)),),
            )
            for p, n in ((a1, n_a1), (b1, n_b1))
        ]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
    total = 2 * rounds * per_round
    seen = {id(p): chat_lines(p, total) for p in (a2, b2)}
    assert seen[id(a2)] == seen[id(b2)], "the two nodes delivered in different orders"
    for name in (n_a1, n_b1):
        mine = [line.split("> ")[1] for line in seen[id(a2)] if line.startswith(f"<{name}>")]
        assert mine == [f"{name}-{r}-{i}" for r in range(rounds) for i in range(per_round)]
    # Each sender got the other's lines, in that same order.
    other_of_a1 = [line for line in seen[id(a2)] if line.startswith(f"<{n_b1}>")]
    assert chat_lines(a1, len(other_of_a1)) == other_of_a1
    for peer in peers:
        peer.close()


def test_a_name_is_unique_across_nodes_and_who_lists_every_node(
    nodes: list[ServerProcess],
) -> None:
    a, b = nodes
    (a1, _), (b1, n_b1) = join(a), join(b)
    a1.send(b"/nick alice\n")
    a1.expect("* you are now known as alice")
    b1.send(b"/nick ALICE\n")
    assert until(b1, "! ") == "! name 'ALICE' is taken"
    b1.send(b"/who\n")
    who = until(b1, "* here")
    assert who == f"* here (2): {', '.join(sorted(['alice', n_b1]))}", who
    a1.close()
    b1.close()


def test_a_killed_node_s_members_leave_and_free_their_names(nodes: list[ServerProcess]) -> None:
    a, b = nodes
    (a1, _), (b1, _) = join(a), join(b)
    a1.send(b"/nick alice\n")
    a1.expect("* you are now known as alice")
    b1.send(b"/nick alice\n")
    assert until(b1, "! ") == "! name 'alice' is taken"  # while A lives
    os.kill(a.pid, signal.SIGKILL)
    b1.expect("* alice left (server lost)")
    b1.send(b"/nick alice\n")
    b1.expect("* you are now known as alice")
    b1.close()


def test_lines_are_refused_aloud_while_redis_does_not_answer(
    nodes: list[ServerProcess],
    redis_server: RedisServer,  # noqa: F811
) -> None:
    a, b = nodes
    (a1, n_a1), (b1, _) = join(a), join(b)
    redis_server.pause()
    try:
        a1.send(b"lost in the outage\n")
        a1.expect("! cluster unavailable")
    finally:
        redis_server.resume()
    # The node reconnects by itself: /who answers again once its backoff has passed.
    while True:
        a1.send(b"/who\n")
        if a1.line().startswith("* here"):
            break
    a1.send(b"after the outage\n")
    # The refused line was in Redis's socket when the node gave up on it: it must not be
    # appended late, when Redis answers again. What comes after it arrives.
    assert until(b1, "<") == f"<{n_a1}> after the outage"
    a1.close()
    b1.close()


def test_a_private_message_reaches_its_name_on_another_node(nodes: list[ServerProcess]) -> None:
    a, b = nodes
    (a1, n_a1), (a2, _) = join(a), join(a)
    (b1, _) = join(b)
    b1.send(b"/nick bob\n")
    b1.expect("* you are now known as bob")
    a1.send(b"/msg bob for bob only\nfor all\n")
    assert until(b1, "[private]") == f"[private] <{n_a1}> for bob only"
    assert until(b1, "<") == f"<{n_a1}> for all"
    # The other client on A got the public line and nothing of the private one.
    assert [line for line in a2.expect(f"<{n_a1}> for all") if not line.startswith("* ")] == []
    for peer in (a1, a2, b1):
        peer.close()


def test_a_stopped_node_s_members_leave_at_once(nodes: list[ServerProcess]) -> None:
    a, b = nodes
    (a1, _), (b1, _) = join(a), join(b)
    a1.send(b"/nick alice\n")
    a1.expect("* you are now known as alice")
    assert a.terminate() == 0
    assert a1.read_to_eof()[-1:] == ["* server shutting down"]
    b1.expect("* alice left (server shutting down)")
    b1.send(b"/nick alice\n")
    b1.expect("* you are now known as alice")
    b1.close()


def test_a_stopped_node_says_no_traceback(nodes: list[ServerProcess]) -> None:
    # Its reader is inside a blocking XREAD when SIGTERM comes (it blocks 1 s at a time
    # and is not waited for): closing its connection under it must end it quietly.
    for node in nodes:
        join(node)  # the node has served a client: its reader has read the stream
        assert node.terminate() == 0
        node.daemon.join_drains()
        assert "Traceback" not in node.stderr(), node.stderr()


def run_server(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "chatbox.server", "--host", "127.0.0.1", *args, "0"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=WAIT)


@needs(None if importlib.util.find_spec("redis") else "redis-py is not installed")
@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--cluster", "redis://127.0.0.1:{port}/0"], "cannot reach the cluster at"),
        (["--cluster", "nowhere://x"], "bad --cluster URL"),
        (["--mode", "fork", "--cluster", "redis://127.0.0.1:{port}/0"], "cannot reach the cluster"),
    ],
)
def test_a_cluster_that_cannot_be_used_is_said_in_one_line(args: list[str], said: str) -> None:
    port = str(free_port())  # nothing listens there
    done = run_server(*(arg.replace("{port}", port) for arg in args))
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and said in lines[0], done.stderr


def test_history_replays_lines_said_on_every_node(nodes: list[ServerProcess]) -> None:
    a, b = nodes
    (a1, n_a1), (b1, n_b1) = join(a), join(b)
    a1.send(b"from a\n")
    until(b1, "<")
    b1.send(b"from b\n/msg " + n_a1.encode() + b" secret\n")
    until(a1, "[private]")
    (b2, _) = join(b)
    b2.send(b"/history 5\n")
    assert b2.expect("* end of history")[-3:] == [
        "* history: the last 2 lines",
        f"[history] <{n_a1}> from a",
        f"[history] <{n_b1}> from b",
    ]
    for peer in (a1, b1, b2):
        peer.close()


def test_a_storm_of_joins_on_one_node_is_one_notice_at_another(nodes: list[ServerProcess]) -> None:
    a, b = nodes
    watcher, _ = join(b)
    storm = 30
    a.proc.send_signal(signal.SIGSTOP)  # the connections wait in its backlog, together
    try:
        peers = [Peer(socket.create_connection(("127.0.0.1", a.port), timeout=WAIT))]
        peers += [
            Peer(socket.create_connection(("127.0.0.1", a.port), timeout=WAIT))
            for _ in range(storm - 1)
        ]
    finally:
        a.proc.send_signal(signal.SIGCONT)
    counted = 0
    notices = 0
    while counted < storm:
        match = protocol.JOINED_LINE.match(watcher.line())
        if match is not None:
            names, others = protocol.notice_names(match)
            counted += len(names) + others
            notices += 1
    assert counted == storm  # every joiner announced, none twice
    assert notices < storm  # and not one line each
    for peer in [watcher, *peers]:
        peer.close()


def test_a_welcome_in_a_crowded_cluster_names_twenty_and_counts_the_rest(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    # A lease of its own, long: 25 claims must outlive a loaded machine's slow renewals.
    args = ["--host", "127.0.0.1", "--cluster", redis_server.url, "--cluster-lease", "30", "0"]
    with running_server(*args) as a, running_server(*args) as b:
        crowded_welcome(a, b)


def crowded_welcome(a: ServerProcess, b: ServerProcess) -> None:
    crowd = [join(node)[0] for node in (a, b) * 12]  # 24 members, on both nodes
    newcomer = b.connect()
    welcome = newcomer.line()
    match = protocol.WELCOME_LINE.match(welcome)
    assert match is not None, welcome
    assert len(match.group(2).split(", ")) == protocol.WELCOME_NAMES
    assert welcome.endswith(" and 4 more (/who lists everyone)"), welcome
    newcomer.send(b"/who\n")
    assert until(newcomer, "* here (").startswith("* here (25): ")
    for peer in [*crowd, newcomer]:
        peer.close()


@pytest.fixture(params=["thread", pytest.param("fork", marks=pytest.mark.fork)])
def patient_node(
    redis_server: RedisServer,  # noqa: F811
    request: pytest.FixtureRequest,
) -> Iterator[ServerProcess]:
    """One node that waits a minute for Redis before it gives up on a call."""
    args = ["--host", "127.0.0.1", "--cluster", redis_server.url, "--cluster-lease", "30"]
    node = ServerProcess(*args, "--cluster-timeout", "60", "--mode", request.param, "0")
    try:
        yield node
    finally:
        node.stop()


def test_a_call_waiting_on_redis_holds_up_nobody_else(
    patient_node: ServerProcess,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    (a1, n_a1), (a2, _) = join(patient_node), join(patient_node)
    a2.send(b"/nick bea\n")
    a2.expect("* you are now known as bea")
    redis_server.pause()
    try:
        # a1's /who waits for Redis (for up to a minute); meanwhile a2 is answered, and
        # its own lines and commands that need no Redis go on.
        a1.send(b"/who\n")
        a2.send(b"/help\n")
        a2.expect("* /nick")
        a2.send(b"/nick 42bad\n")
        assert until(a2, "! ").startswith("! ")
    finally:
        redis_server.resume()
    assert until(a1, "* here") == f"* here (2): {', '.join(sorted([n_a1, 'bea']))}"
    a1.close()
    a2.close()


def test_a_members_lines_wait_behind_its_own_command(nodes: list[ServerProcess]) -> None:
    a, b = nodes
    (a1, n_a1), (b1, _) = join(a), join(b)
    # The rename needs Redis; the line after it must go out under the new name, after
    # the notice of the rename, as typed.
    a1.send(b"/nick zed\nsaid as zed\n/me waves\n/who\n")
    assert until(b1, f"* {n_a1} is ") == f"* {n_a1} is now known as zed"
    assert b1.line() == "<zed> said as zed"
    assert b1.line() == "* <zed> waves"
    a1.expect("* you are now known as zed")
    assert until(a1, "* here").startswith("* here (2): ")
    a1.close()
    b1.close()


class ProxiedNodes:
    """Node A on Redis, node B on Redis through a real TCP proxy (`harness.impair`):
    stopping the proxy (SIGSTOP) cuts B off while B and Redis both live on."""

    def __init__(self, redis_server: RedisServer, *options: str) -> None:  # noqa: F811
        target = f"127.0.0.1:{redis_server.port}"
        argv = [sys.executable, "-m", "harness.impair", "--listen", "127.0.0.1:0"]
        self.proxy = subprocess.Popen(
            [*argv, "--target", target], stdout=subprocess.PIPE, text=True
        )
        self.nodes: list[ServerProcess] = []
        try:
            assert self.proxy.stdout is not None
            announced = self.proxy.stdout.readline()
            assert announced.startswith("listening on "), announced
            via_proxy = f"redis://127.0.0.1:{announced.rsplit(':', 1)[1].strip()}/0"
            for url in (redis_server.url, via_proxy):
                args = ["--host", "127.0.0.1", "--cluster", url, *options]
                self.nodes.append(ServerProcess(*args, "0"))
        except BaseException:
            self.stop()
            raise

    def cut_b_off(self) -> None:
        self.proxy.send_signal(signal.SIGSTOP)

    def reconnect_b(self) -> None:
        self.proxy.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.proxy.kill()
        self.proxy.wait(10)


@pytest.fixture
def proxied(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[ProxiedNodes]:  # noqa: F811
    pair = ProxiedNodes(redis_server, *getattr(request, "param", ("--cluster-lease", LEASE)))
    try:
        yield pair
    finally:
        pair.stop()


def test_a_node_cut_off_past_its_lease_disconnects_its_clients(proxied: ProxiedNodes) -> None:
    # Node A takes B for dead while B is cut off, and tells the room.
    a, b = proxied.nodes
    (a1, _), (b1, n_b1) = join(a), join(b)
    proxied.cut_b_off()
    try:
        a1.expect(f"* {n_b1} left (server lost)")
    finally:
        proxied.reconnect_b()
    # Back in touch, B finds it was taken for dead: its client's name may be someone
    # else's by now, so the client is told and disconnected (a client with --resume
    # comes back and is shown what it missed).
    said = until(b1, "! disconnected")
    assert said == "! disconnected: this server was cut off from the cluster"
    assert b1.read_to_eof() == []
    b2 = joined_when_ready(b)  # B serves new clients as before, in the one room
    b2.send(b"/who\n")
    assert until(b2, "* here (").startswith("* here (2): ")
    for peer in (a1, b2):
        peer.close()


@pytest.mark.parametrize(
    "proxied", [("--cluster-lease", "60", "--cluster-timeout", "60")], indirect=True
)
def test_a_node_behind_the_one_a_client_came_from_sends_nothing_twice(
    proxied: ProxiedNodes,
) -> None:
    a, b = proxied.nodes
    (talker, name), (on_a, _) = join(a), join(a)
    on_a.send(b"/resume\n")
    until(on_a, "[id] ")
    on_b, _ = join(b)  # the same user's next connection, on the node that will lag
    proxied.cut_b_off()
    try:
        talker.send(b"one\ntwo\n")
        until(on_a, f"<{name}> two")
        place = until(on_a, "[id] ").split()[1]
        # B has delivered neither line: the place is ahead of it.
        on_b.send(f"/resume {place}\n".encode())
    finally:
        proxied.reconnect_b()
    live_before: list[str] = []
    while not (said := on_b.line()).startswith("* history: "):
        if said.startswith("<"):
            live_before.append(said)
    # Either B had not reached the lines when it took the /resume (nothing repeats,
    # and B keeps them back from this member), or it had (they came live before the
    # reply, and the reply says they repeat what it had).
    head = f"* history: 0 lines since {place}"
    if live_before:
        assert live_before == [f"<{name}> one", f"<{name}> two"]
        head += "; the 2 live lines before this repeat what you had"
    assert said == head
    assert on_b.line() == "* end of history"
    # Its place: that one (or a later one B has delivered since), not the older one B
    # was at when it answered.
    mark = on_b.line()
    assert mark.startswith("[id] ") and stream_order(mark[5:].encode()) >= stream_order(
        place.encode()
    ), (mark, place)
    talker.send(b"three\n")
    assert until(on_b, "<") == f"<{name}> three"
    for peer in (talker, on_a, on_b):
        peer.close()


def test_lines_held_behind_commands_are_charged_to_the_flood_allowance_once(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    # Flood control on, at its default rates (500 lines a second, a 2 s burst): 900
    # lines, every other one a /who, are within the burst, so never held back. Each
    # /who waits for Redis, and the lines after it wait with it; charged again each time
    # they wait, the paste would be charged about 100,000 lines, its sender throttled for
    # longer than --flood-timeout and cut off as a flooder.
    args = ["--host", "127.0.0.1", "--cluster", redis_server.url, "--flood-timeout", "3"]
    node = ServerProcess(*args, "0")
    try:
        (paster, name), (reader, _) = join(node), join(node)
        pairs = 450
        paster.send(b"".join(b"/who\nline %d\n" % i for i in range(pairs)))
        assert chat_lines(reader, pairs) == [f"<{name}> line {i}" for i in range(pairs)]
        whos = 0
        while whos < pairs:
            answer = paster.line()
            assert not answer.startswith("! "), answer
            whos += answer.startswith("* here (")
    finally:
        node.stop()
