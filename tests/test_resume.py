"""`/resume [ID]` against real servers: what a client missed while away, exactly once.

A client that asked (`/resume`) is told its place after each turn (`[id] ID`); one that
comes back with `/resume ID` gets what was said since, as `[history] ` lines, and then
live lines: nothing twice, nothing skipped, also for lines said while it reconnects.
On a single server (in memory, and with --history-file across a restart) and on two
cluster nodes sharing a real redis-server. Plain clients never see an `[id]` line.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_server import Peer, ServerProcess, running_server
from redis_fixture import RedisServer, redis_server  # noqa: F401 - the fixture

from chatbox import protocol

BOB_LINE = re.compile(r"(\[history\] )?<(\S+)> (\d+)$")


def welcomed(peer: Peer) -> str:
    line = peer.line()
    assert line.startswith("* welcome "), line
    return line.split()[2].rstrip(";")


def next_id(peer: Peer) -> tuple[str, list[str]]:
    """Read up to the next `[id]` line: its id, and the lines before it."""
    seen: list[str] = []
    while True:
        line = peer.line()
        if line.startswith("[id] "):
            return line[5:], seen
        seen.append(line)


@pytest.fixture
def single() -> Iterator[ServerProcess]:
    with running_server("--host", "127.0.0.1", "0") as server:
        yield server


def test_resume_replays_what_was_missed_once_then_live_lines(single: ServerProcess) -> None:
    alice, bob = single.connect(), single.connect()
    welcomed(alice)
    bob_name = welcomed(bob)
    alice.send(b"/resume\n")
    next_id(alice)
    bob.send(b"1\n")
    mark, seen = next_id(alice)
    assert seen[-1] == f"<{bob_name}> 1"
    alice.close()
    bob.expect("* ")  # alice left: what bob says now, she misses
    bob.send(b"2\n3\n/history 1\n")
    bob.expect("* end of history")  # the room has taken both lines
    back = single.connect()
    back_name = welcomed(back)
    bob.expect(f"* {back_name} joined")
    bob.send(b"4\n")  # after she is back, before she resumes: reaches her live
    assert back.line() == f"<{bob_name}> 4"
    back.send(f"/resume {mark}\n".encode())
    bob_replay = [f"[history] <{bob_name}> 2", f"[history] <{bob_name}> 3"]
    assert back.expect("* end of history") == [f"* history: 2 lines since {mark}", *bob_replay]
    next_id(back)
    bob.send(b"5\n")
    assert next_id(back)[1] == [f"<{bob_name}> 5"]
    bob.send(b"/quit\n")
    assert not [line for line in bob.read_to_eof() if line.startswith("[id]")]
    back.close()


def resume_while_talking(first: ServerProcess, second: ServerProcess, total: int = 400) -> None:
    """Bob says ``total`` numbered lines on ``first`` while alice leaves it at some
    point and comes back on ``second`` with /resume: she must read each exactly once."""
    alice, bob = first.connect(), first.connect()
    welcomed(alice)
    bob_name = welcomed(bob)
    alice.send(b"/resume\n")
    next_id(alice)

    def talk() -> None:
        # One line per round trip: the lines spread over many of the hub's turns.
        for n in range(1, total + 1):
            bob.send(f"{n}\n/history 1\n".encode())
            bob.expect("* end of history")

    talking = threading.Thread(target=talk, daemon=True)
    talking.start()
    heard: list[int] = []
    mark = ""
    while not heard or heard[-1] < total // 4:
        mark, lines = next_id(alice)
        heard += [int(m.group(3)) for m in map(BOB_LINE.match, lines) if m]
    alice.close()
    back = second.connect()
    welcomed(back)
    back.send(f"/resume {mark}\n".encode())
    replayed: list[int] = []
    live: list[int] = []
    while total not in heard + replayed + live:
        line = back.line()
        head = protocol.RESUME_HEAD_LINE.match(line)
        if head is not None and head.group(1):
            # A node behind the first one said how many of the live lines it sent
            # before its reply were sent before (docs/protocol.md, Resuming).
            del live[: int(head.group(1))]
        match = BOB_LINE.match(line)
        if match is not None and match.group(2) == bob_name:
            (replayed if match.group(1) else live).append(int(match.group(3)))
    talking.join()
    everything = heard + replayed + live
    assert sorted(everything) == list(range(1, total + 1)), "a line missed or seen twice"
    assert replayed == sorted(replayed) and live == sorted(live)
    for peer in (bob, back):
        peer.close()


def test_resume_while_lines_are_said_loses_none_and_repeats_none(single: ServerProcess) -> None:
    resume_while_talking(single, single)


def test_resume_from_an_unknown_place_replays_all_kept_and_says_so(single: ServerProcess) -> None:
    bob = single.connect()
    bob_name = welcomed(bob)
    bob.send(b"said before\n/history 1\n")
    bob.expect("* end of history")
    alice = single.connect()
    welcomed(alice)
    alice.send(b"/resume 0bad.7\n")
    assert alice.expect("* end of history") == [
        "* history: 1 lines since 0bad.7 (older ones are no longer kept)",
        f"[history] <{bob_name}> said before",
    ]
    alice.send(b"/resume nonsense\n")
    assert [line[:5] for line in alice.expect("! usage: /resume [ID]")] == ["[id] "]
    for peer in (alice, bob):
        peer.close()


def test_a_history_file_keeps_history_and_places_across_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "history.db")
    with running_server("--host", "127.0.0.1", "--history-file", path, "0") as server:
        alice, bob = server.connect(), server.connect()
        welcomed(alice)
        bob_name = welcomed(bob)
        alice.send(b"/resume\n")
        next_id(alice)
        bob.send(b"seen\n")
        mark, _ = next_id(alice)
        alice.close()
        bob.expect("* ")
        bob.send(b"missed\n/quit\n")
        bob.read_to_eof()
        assert server.terminate() == 0
    with running_server("--host", "127.0.0.1", "--history-file", path, "0") as server:
        back = server.connect()
        welcomed(back)
        back.send(b"/history 5\n")
        assert back.expect("* end of history")[-2:] == [
            f"[history] <{bob_name}> seen",
            f"[history] <{bob_name}> missed",
        ]
        back.send(f"/resume {mark}\n".encode())
        assert back.expect("* end of history") == [
            f"* history: 1 lines since {mark}",
            f"[history] <{bob_name}> missed",
        ]
        back.close()


@pytest.fixture
def two_nodes(redis_server: RedisServer) -> Iterator[list[ServerProcess]]:  # noqa: F811
    started: list[ServerProcess] = []
    try:
        for _ in range(2):
            args = ["--host", "127.0.0.1", "--cluster", redis_server.url, "--cluster-lease", "3"]
            started.append(ServerProcess(*args, "0"))
        yield started
    finally:
        for node in started:
            node.stop()


def test_resume_on_another_node_gets_what_was_missed_once(two_nodes: list[ServerProcess]) -> None:
    resume_while_talking(two_nodes[0], two_nodes[1])


def test_resume_on_the_same_node_of_a_cluster(two_nodes: list[ServerProcess]) -> None:
    resume_while_talking(two_nodes[1], two_nodes[1], total=200)


def test_history_lines_bounds_what_a_history_file_keeps(tmp_path: Path) -> None:
    args = ["--host", "127.0.0.1", "--history-file", str(tmp_path / "h.db")]
    with running_server(*args, "--history-lines", "2", "0") as server:
        bob = server.connect()
        welcomed(bob)
        bob.send(b"one\ntwo\n/history 1\nthree\n/quit\n")
        bob.read_to_eof()
        assert server.terminate() == 0
    with running_server(*args, "--history-lines", "2", "0") as server:
        back = server.connect()
        welcomed(back)
        back.send(b"/history 10\n")
        assert [line.split("> ")[-1] for line in back.expect("* end of history")] == [
            "* history: the last 2 lines",
            "two",
            "three",
        ]
        back.close()


def bad_history_files(tmp_path: Path) -> list[tuple[str, str]]:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"x" * 4096)
    return [
        (str(garbage), "file is not a database"),
        (str(tmp_path / "no" / "such" / "folder.db"), "unable to open database file"),
        (str(tmp_path), "unable to open database file"),
    ]


def test_a_history_file_that_cannot_be_used_is_one_line_exit_1(tmp_path: Path) -> None:
    for path, said in bad_history_files(tmp_path):
        done = subprocess.run(
            [sys.executable, "-m", "chatbox.server", "0", "--history-file", path],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
        assert done.stderr == f"chatbox-server: cannot use --history-file {path}: {said}\n"


def test_a_history_file_is_refused_with_cluster(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatbox.server",
            "0",
            "--history-file",
            str(tmp_path / "h.db"),
            "--cluster",
            "redis://127.0.0.1:1/0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--history-file is for a single server" in done.stderr


def test_a_made_up_place_on_a_node_replays_what_is_kept_and_hides_nothing_live(
    two_nodes: list[ServerProcess],
) -> None:
    a, b = two_nodes
    carol = b.connect()
    welcomed(carol)
    bob = a.connect()
    bob_name = welcomed(bob)
    bob.send(b"kept\n")
    carol.expect(f"<{bob_name}> kept")  # node b has delivered it: alice joins after it
    alice = b.connect()
    welcomed(alice)
    alice.send(b"/resume 99999999999999-0\n")
    assert alice.expect("* end of history")[-2:] == [
        "* history: 1 lines since 99999999999999-0 (older ones are no longer kept)",
        f"[history] <{bob_name}> kept",
    ]
    bob.send(b"live\n")
    alice.expect(f"<{bob_name}> live")  # not held back by the made-up place
    for peer in (alice, bob, carol):
        peer.close()
