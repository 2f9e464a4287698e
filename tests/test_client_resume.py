"""`chatbox-client --resume` and `--fallback IP:PORT`: a client that outlives its server.

Real client processes through pipes, real servers, a real redis-server for the cluster:
a node is killed with SIGKILL while a talker on the other node goes on, and the client
must go on on the other node, saying so in one line, and show every line exactly once
(live or as `[history] `) - also the ones said while it was away or reconnecting.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from client_parties import OneShotServer, Party, child_env, client_argv
from live_server import Peer, ServerProcess, running_server
from redis_fixture import RedisServer, redis_server  # noqa: F401 - the fixture

from chatbox import protocol
from harness.daemon import free_port

Spawn = Callable[..., Party]
NUMBERED = re.compile(r"(?:\[history\] )?<(\S+)> (\d+)$")


def merged(*args: str) -> list[str]:
    """The client's argv with its stderr (where its own lines go) merged into stdout."""
    return ["sh", "-c", 'exec "$@" 2>&1', "sh", *client_argv(*args)]


@pytest.mark.parametrize(
    ("fallback", "said"),
    [
        ("127.0.0.1", "invalid --fallback '127.0.0.1': expected IP:PORT"),
        ("::1:5000", "invalid --fallback '::1:5000': expected IP:PORT"),
        ("localhost:0", "invalid --fallback 'localhost:0'"),
        (":5000", "invalid --fallback ':5000'"),
    ],
)
def test_a_bad_fallback_is_one_line_exit_2(fallback: str, said: str) -> None:
    done = subprocess.run(
        client_argv("5000", "--fallback", fallback),
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=20,
    )
    assert done.returncode == 2
    assert said in done.stderr.splitlines()[-1], done.stderr
    assert "Traceback" not in done.stderr


def test_help_explains_resume_and_fallback() -> None:
    done = subprocess.run(client_argv("--help"), capture_output=True, text=True, timeout=20)
    text = " ".join(done.stdout.split())
    assert "--resume" in text and "--fallback IP:PORT" in text
    assert "repeat for more" in text and "nothing twice" in text


def talk_numbered(talker: Peer, total: int, start: int = 1) -> threading.Thread:
    """Say start..total, one line per round trip (so they spread over many server turns)."""

    def talk() -> None:
        for n in range(start, total + 1):
            talker.send(f"{n}\n/history 1\n".encode())
            talker.expect("* end of history")

    thread = threading.Thread(target=talk, daemon=True)
    thread.start()
    return thread


def numbers_from(client: Party, sender: str, total: int) -> list[int]:
    """The numbers of ``sender``'s lines the client showed, live or replayed, once it
    showed ``total``."""
    client.expect(rf"(\[history\] )?<{re.escape(sender)}> {total}$")
    found = [NUMBERED.match(line) for line in client.lines]
    return [int(m.group(2)) for m in found if m is not None and m.group(1) == sender]


@pytest.fixture(params=["thread", pytest.param("fork", marks=pytest.mark.fork)])
def two_nodes(
    redis_server: RedisServer,  # noqa: F811
    request: pytest.FixtureRequest,
) -> Iterator[list[ServerProcess]]:
    """Two cluster nodes, in each mode: in fork mode a worker holds the client's socket
    and must let it go when its node dies."""
    started: list[ServerProcess] = []
    try:
        for _ in range(2):
            args = ["--host", "127.0.0.1", "--cluster", redis_server.url, "--cluster-lease", "3"]
            started.append(ServerProcess(*args, "--mode", request.param, "0"))
        yield started
    finally:
        for node in started:
            node.stop()


def line_ending(peer: Peer, suffix: str) -> str:
    """The first line the peer reads that ends with ``suffix`` (fails on timeout)."""
    while not (line := peer.line()).endswith(suffix):
        pass
    return line


def welcomed(peer: Peer) -> str:
    line = peer.line()
    assert line.startswith("* welcome "), line
    return line.split()[2].rstrip(";")


def test_a_client_goes_on_on_the_other_node_when_its_node_is_killed(
    two_nodes: list[ServerProcess], spawn: Spawn
) -> None:
    a, b = two_nodes
    total = 200
    talker = b.connect()
    talker_name = welcomed(talker)
    client = spawn(merged(str(a.port), "127.0.0.1", "--fallback", f"127.0.0.1:{b.port}"))
    client.join()
    talker.expect(f"* {client.name} joined")
    talking = talk_numbered(talker, total)
    client.expect(rf"<{talker_name}> {total // 4}$")
    os.kill(a.pid, signal.SIGKILL)  # mid-stream: the client's node is gone at once
    client.expect(rf"\* reconnected to 127\.0\.0\.1:{b.port}$")
    talking.join()
    # Each line once, in the room's order: the replay of what it missed, then what
    # came live (the lines said while it came back wait for the replay to end).
    assert numbers_from(client, talker_name, total) == list(range(1, total + 1))
    # What it types now is said on the other node.
    client.send(b"after the failover\n")
    line_ending(talker, "> after the failover")
    client.close_stdin()
    status, _ = client.wait()
    assert status == 0
    assert not [line for line in client.lines if line.startswith("[id]")]


def test_lines_said_while_no_server_takes_the_client_are_replayed_once(
    redis_server: RedisServer,  # noqa: F811
    two_nodes: list[ServerProcess],
    spawn: Spawn,
) -> None:
    a, b = two_nodes
    later_port = free_port()  # the fallback, not up yet when the client's node dies
    talker = b.connect()
    talker_name = welcomed(talker)
    client = spawn(merged(str(a.port), "127.0.0.1", "--fallback", f"127.0.0.1:{later_port}"))
    client.join()
    talker.expect(f"* {client.name} joined")
    talk_numbered(talker, 50).join()
    client.expect(rf"<{talker_name}> 50$")
    os.kill(a.pid, signal.SIGKILL)
    talk_numbered(talker, 100, start=51).join()  # nobody can take the client now
    args = ["--host", "127.0.0.1", "--cluster", redis_server.url, "--cluster-lease", "3"]
    later = ServerProcess(*args, str(later_port))
    try:
        talking = talk_numbered(talker, 200, start=101)  # while it comes back, and after
        client.expect(rf"\* reconnected to 127\.0\.0\.1:{later_port}$")
        talking.join()
        assert numbers_from(client, talker_name, 200) == list(range(1, 201))
        assert f"[history] <{talker_name}> 51" in client.lines
        client.close_stdin()
        assert client.wait()[0] == 0
    finally:
        later.stop()


def test_after_a_failover_the_client_takes_its_name_back_once_the_lease_ends(
    two_nodes: list[ServerProcess], spawn: Spawn
) -> None:
    a, b = two_nodes
    talker = b.connect()
    welcomed(talker)
    client = spawn(merged(str(a.port), "--name", "carol", "--fallback", f"127.0.0.1:{b.port}"))
    client.expect(r"\* you are now known as carol$")
    line_ending(talker, " is now known as carol")
    os.kill(a.pid, signal.SIGKILL)
    client.expect(rf"\* reconnected to 127\.0\.0\.1:{b.port}$")
    # The dead node holds the name for its lease (1 s here); then the client gets it.
    line_ending(talker, " is now known as carol")
    client.send(b"carol again\n")
    assert line_ending(talker, "> carol again") == "<carol> carol again"
    client.close_stdin()
    assert client.wait()[0] == 0
    assert sum(line == "! name 'carol' is taken" for line in client.lines) <= 1


def test_a_client_goes_on_on_a_fallback_when_a_single_server_dies(spawn: Spawn) -> None:
    first = ServerProcess("--host", "127.0.0.1", "0")
    second = ServerProcess("--host", "127.0.0.1", "0")
    try:
        listener = second.connect()
        welcomed(listener)
        client = spawn(
            merged(str(first.port), "--name", "carol", "--fallback", f"127.0.0.1:{second.port}")
        )
        client.join()
        client.expect(r"\* you are now known as carol$")
        first.proc.kill()  # the server simply dies
        client.expect(rf"\* reconnected to 127\.0\.0\.1:{second.port}$")
        line_ending(listener, " is now known as carol")  # back under the name it had
        client.send(b"still here\n")
        assert listener.line() == "<carol> still here"
        client.close_stdin()
        assert client.wait()[0] == 0
    finally:
        first.stop()
        second.stop()


def test_resume_across_a_restart_of_a_server_with_a_history_file(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = str(free_port())
    args = ["--host", "127.0.0.1", "--history-file", str(tmp_path / "h.db"), port]
    server = ServerProcess(*args)
    try:
        talker = server.connect()
        talker_name = welcomed(talker)
        client = spawn(merged(port, "--resume"))
        client.join()
        talker.send(b"before the restart\n")
        client.expect(rf"<{talker_name}> before the restart$")
        assert server.terminate() == 0  # the client did not /quit: it comes back
        server.stop()
        server = ServerProcess(*args)
        other = server.connect()
        other_name = welcomed(other)
        other.send(b"after the restart\n/history 1\n")
        other.expect("* end of history")
        client.expect(r"\* reconnected to 127\.0\.0\.1:" + port + "$")
        client.expect(rf"(\[history\] )?<{other_name}> after the restart$")
        client.send(b"back\n")
        line_ending(other, "> back")
        client.close_stdin()
        assert client.wait()[0] == 0
        said_before = [line for line in client.lines if line.endswith("> before the restart")]
        assert said_before == [f"<{talker_name}> before the restart"]  # not replayed again
    finally:
        server.stop()


def read_until(conn: socket.socket, token: bytes) -> bytes:
    """What ``conn`` receives up to and including ``token`` (fails on EOF or timeout)."""
    data = b""
    while token not in data:
        chunk = conn.recv(65536)
        assert chunk, f"the client closed before sending {token!r}; it sent {data!r}"
        data += chunk
    return data


def stops_before_its_first_mark(first: OneShotServer, said: bytes) -> None:
    """Be the client's first server: take its `/resume`, send ``said`` (never an `[id]`
    line), then close gracefully and wait until the client has closed too."""
    conn = first.accept()
    read_until(conn, b"/resume\n")
    conn.sendall(said)
    conn.shutdown(socket.SHUT_WR)
    first.read_until_eof()


def test_a_server_that_stops_before_its_first_mark_costs_no_line(spawn: Spawn) -> None:
    """The first server says the welcome and one line, then stops before it ever marks
    the client's place: on the fallback the client must still get what it missed."""
    with running_server("--host", "127.0.0.1", "0") as fallback, OneShotServer() as first:
        talker = fallback.connect()
        talker_name = welcomed(talker)
        talker.send(b"1\n2\n3\n/history 1\n")
        talker.expect("* end of history")  # the fallback keeps all three
        client = spawn(merged(str(first.port), "--fallback", f"127.0.0.1:{fallback.port}"))
        # As a node of the room that relayed line 1 to the client and then died.
        said = protocol.welcome("guest9", [talker_name]) + f"<{talker_name}> 1\n".encode()
        stops_before_its_first_mark(first, said)
        client.expect(rf"<{talker_name}> 1$")
        client.expect(rf"\* reconnected to 127\.0\.0\.1:{fallback.port}$")
        talker.expect("* ")  # the client joined the fallback: what comes now is live
        talker.send(b"4\n")
        # Lines 2 and 3 were said while it was away; 1 it had shown; 4 came live.
        assert numbers_from(client, talker_name, 4) == [1, 2, 3, 4]
        assert f"[history] <{talker_name}> 2" in client.lines
        client.close_stdin()
        assert client.wait()[0] == 0


def marks_of(server: ServerProcess) -> tuple[Peer, str]:
    """A peer of ``server`` that asked for its place, and the place now: from now on it
    reads an `[id]` line after every turn in which the room's history moved."""
    watcher = server.connect()
    welcomed(watcher)
    watcher.send(b"/resume\n")
    return watcher, next_mark(watcher)


def next_mark(watcher: Peer) -> str:
    while not (line := watcher.line()).startswith("[id] "):
        pass
    return line[len("[id] ") :]


def say_marked(talker: Peer, watcher: Peer, *lines: str) -> list[str]:
    """The talker says each line in a turn of its own; the place after each."""
    places = []
    for line in lines:
        talker.send(line.encode() + b"\n")
        places.append(next_mark(watcher))
    return places


def talked(client: Party, sender: str, last: str) -> list[str]:
    """What the client showed of ``sender``'s lines (live or replayed, marked so), once
    it showed ``last``."""
    client.expect(rf"(\[history\] )?<{re.escape(sender)}> {re.escape(last)}$")
    return [line for line in client.lines if re.match(rf"(\[history\] )?<{sender}> ", line)]


def test_a_line_said_twice_around_the_break_is_shown_twice(spawn: Spawn) -> None:
    """The first server relayed 'ok' and died before marking it; 'ok' was said again
    while the client was away: the replay has both, and only the first was seen."""
    with running_server("--host", "127.0.0.1", "0") as fallback, OneShotServer() as first:
        watcher, before = marks_of(fallback)
        talker = fallback.connect()
        talker_name = welcomed(talker)
        say_marked(talker, watcher, "ok", "ok")
        client = spawn(merged(str(first.port), "--fallback", f"127.0.0.1:{fallback.port}"))
        said = f"[id] {before}\n<{talker_name}> ok\n"
        stops_before_its_first_mark(
            first, protocol.welcome("guest9", [talker_name]) + said.encode()
        )
        client.expect(rf"\* reconnected to 127\.0\.0\.1:{fallback.port}$")
        talker.expect("* ")  # the client is back
        talker.send(b"end\n")
        chat = f"<{talker_name}>"
        shown = talked(client, talker_name, "end")
        assert shown == [f"{chat} ok", f"[history] {chat} ok", f"{chat} end"]
        client.close_stdin()
        assert client.wait()[0] == 0


def test_a_mark_cut_short_by_the_break_is_not_taken_for_a_place(spawn: Spawn) -> None:
    """`[id] EPOCH.12` cut after `EPOCH.1` names a real, older place: taken for one,
    lines 2 to 12 would be replayed and shown twice."""
    with running_server("--host", "127.0.0.1", "0") as fallback, OneShotServer() as first:
        watcher, _ = marks_of(fallback)
        talker = fallback.connect()
        talker_name = welcomed(talker)
        places = say_marked(talker, watcher, *(str(n) for n in range(1, 13)))
        cut = places[11][:-1]
        assert cut.rpartition(".")[2].isdigit()  # the cut one is a place too
        client = spawn(merged(str(first.port), "--fallback", f"127.0.0.1:{fallback.port}"))
        chat = "".join(f"<{talker_name}> {n}\n" for n in range(1, 12))
        said = f"{chat}[id] {places[10]}\n<{talker_name}> 12\n[id] {cut}"
        stops_before_its_first_mark(
            first, protocol.welcome("guest9", [talker_name]) + said.encode()
        )
        talker.send(b"13\n")  # while the client is away
        client.expect(rf"\* reconnected to 127\.0\.0\.1:{fallback.port}$")
        line_ending(talker, " joined")
        talker.send(b"14\n")
        assert numbers_from(client, talker_name, 14) == list(range(1, 15))
        assert not [line for line in client.lines if line.startswith("[i")]
        client.close_stdin()
        assert client.wait()[0] == 0


def test_a_server_that_dies_mid_replay_leaves_no_line_shown_twice(spawn: Spawn) -> None:
    """The client's second server dies halfway through its replay: the third replays
    from the same place, and what the second had shown is left out too."""
    with (
        running_server("--host", "127.0.0.1", "0") as third,
        OneShotServer() as first,
        OneShotServer() as second,
    ):
        watcher, _ = marks_of(third)
        talker = third.connect()
        name = welcomed(talker)
        places = say_marked(talker, watcher, "1", "2", "3", "4")
        servers = [
            "--fallback",
            f"127.0.0.1:{second.port}",
            "--fallback",
            f"127.0.0.1:{third.port}",
        ]
        client = spawn(merged(str(first.port), *servers))
        welcome = protocol.welcome("guest9", [name])
        said = f"<{name}> 1\n[id] {places[0]}\n<{name}> 2\n"
        stops_before_its_first_mark(first, welcome + said.encode())
        # Replays since the place after 1: 2 (the client had it) and 3, then dies.
        conn = second.accept()
        read_until(conn, f"/resume {places[0]}\n".encode())
        replay = (
            f"* history: 3 lines since {places[0]}\n[history] <{name}> 2\n[history] <{name}> 3\n"
        )
        conn.sendall(welcome + replay.encode())
        conn.shutdown(socket.SHUT_WR)
        second.read_until_eof()
        client.expect(rf"\* reconnected to 127\.0\.0\.1:{third.port}$")
        line_ending(talker, " joined")
        talker.send(b"5\n")
        assert numbers_from(client, name, 5) == [1, 2, 3, 4, 5]
        client.close_stdin()
        assert client.wait()[0] == 0


def test_a_line_seen_before_the_break_leaves_an_equal_later_one_alone(spawn: Spawn) -> None:
    """The line the client saw ('ok') is no longer kept when it comes back; an 'ok'
    said later, while it was away, is in the replay and was never seen: it is shown."""
    args = ["--host", "127.0.0.1", "--history-lines", "3", "0"]
    with running_server(*args) as fallback, OneShotServer() as first:
        watcher, before = marks_of(fallback)
        talker = fallback.connect()
        talker_name = welcomed(talker)
        say_marked(talker, watcher, "ok", "2", "3", "ok", "5")  # keeps 3, ok, 5
        client = spawn(merged(str(first.port), "--fallback", f"127.0.0.1:{fallback.port}"))
        said = f"[id] {before}\n<{talker_name}> ok\n"
        stops_before_its_first_mark(
            first, protocol.welcome("guest9", [talker_name]) + said.encode()
        )
        client.expect(rf"\* reconnected to 127\.0\.0\.1:{fallback.port}$")
        client.expect(r"\* end of history$")  # before "end" pushes "3" out of the history
        talker.send(b"end\n")
        chat = f"<{talker_name}>"
        replayed = [f"[history] {chat} {n}" for n in ("3", "ok", "5")]
        assert talked(client, talker_name, "end") == [f"{chat} ok", *replayed, f"{chat} end"]
        client.close_stdin()
        assert client.wait()[0] == 0


def test_lines_shown_after_the_last_mark_are_not_shown_again_by_a_node_behind(
    spawn: Spawn,
) -> None:
    """In a cluster, the node the client comes back to may not have delivered its place
    yet: it replays nothing and then sends live what follows the place, starting with
    the lines the client was shown on the dead node after its last mark.

    Both nodes are played by the test, speaking as docs/protocol.md says such nodes
    do; the real ones are tested with a real redis-server above."""
    with OneShotServer() as first, OneShotServer() as second:
        client = spawn(merged(str(first.port), "--fallback", f"127.0.0.1:{second.port}"))
        welcome = protocol.welcome("guest9", ["bob"])
        place, behind = "1733212345678-0", "1733212345600-0"
        said = f"<bob> 1\n[id] {place}\n<bob> 2\n"
        stops_before_its_first_mark(first, welcome + said.encode())
        conn = second.accept()
        read_until(conn, f"/resume {place}\n".encode())
        reply = f"* history: 0 lines since {place}\n* end of history\n[id] {behind}\n"
        conn.sendall(welcome + reply.encode() + b"<bob> 2\n<bob> 3\n")
        client.expect(r"<bob> 3$")
        client.close_stdin()
        assert read_until(conn, b"/quit\n")
        conn.close()
        assert client.wait()[0] == 0
        assert numbers_from(client, "bob", 3) == [1, 2, 3]
