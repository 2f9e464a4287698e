"""The forking server's processes: what a worker costs, who ends it, and what a
signal to the whole process group does - through a real server process.

Workers are forked from a small fork server made at start-up, never from the hub, so
a worker's memory does not depend on what the hub holds; and only the hub acts on
SIGTERM, SIGINT and SIGHUP, so a signal to the group (systemd, `kill -TERM -PGID`)
still gives every client its `* server shutting down`.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
from pathlib import Path

import pytest
from live_server import (
    FORK_SERVER_COMM,
    WAIT,
    ServerProcess,
    joined_peers,
    private_memory,
    running_server,
    wait_until,
)

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
MODES = [pytest.param("fork", marks=needs_fork), "thread"]

# What the hub holds while an idle client connects: far more than a worker ever needs.
HUB_QUEUE = 64 << 20
LINE = b"x" * 3999 + b"\n"


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.mark.fork
@needs_fork
def test_a_worker_does_not_keep_what_the_hub_held_when_it_started() -> None:
    """A client connecting while the hub queues 64 MiB for a stopped reader: once the
    hub has let the queue go, that client's worker holds a few MiB of its own, not a
    copy of the queue (a worker forked from the hub kept the queue's pages alive)."""
    with running_server(
        "0", "--host", "127.0.0.1", "--mode", "fork",
        "--sendq", str(4 * HUB_QUEUE), "--flood-lines", "0", "--flood-bytes", "0",
    ) as srv:  # fmt: skip
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", srv.port))
        stopped = srv.connect_socket(raw)
        stopped.expect("* welcome")
        (talker,) = joined_peers(srv, 1)
        talker.send(LINE * (HUB_QUEUE // len(LINE)))
        talker.send(b"/who\n")
        talker.expect("* here (2)")  # every line before it is in the stopped reader's queue

        before = set(srv.workers())
        idle = srv.connect()
        idle.expect("* welcome")
        talker.expect("* guest3 joined")
        wait_until(lambda: len(set(srv.workers()) - before) == 1, "the idle client's worker")
        (worker,) = set(srv.workers()) - before

        # The stopped reader resets: the hub drops its queue and frees the memory.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stopped.close()
        talker.expect("* guest1 left")
        held = private_memory(worker)
        assert held < HUB_QUEUE // 8, f"an idle worker holds {held >> 20} MiB of its own"
        idle.send(b"still served\n")
        assert talker.line() == "<guest3> still served"


def _ignores(pid: int, signum: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    (mask,) = [line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")]
    return bool(int(mask, 16) & (1 << (signum - 1)))


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_to_the_process_group_tells_every_client_and_ends_everything(
    mode: str,
) -> None:
    """systemd and `kill -TERM -PGID` signal every process of the server at once: the
    workers must leave the shutdown to the hub, so every client hears why it ends."""
    srv = ServerProcess("0", "--host", "127.0.0.1", "--mode", mode)
    try:
        peers = joined_peers(srv, 15)
        if mode == "fork":
            wait_until(lambda: len(srv.workers()) == 15, "a worker per client")
        processes = srv.descendants()
        # The hub busy elsewhere when the signal comes (stopped, to make it certain):
        # whatever the others do with it is done before the hub gets to it.
        os.kill(srv.pid, signal.SIGSTOP)
        try:
            os.killpg(srv.pid, signal.SIGTERM)
            wait_until(
                lambda: all(_gone(pid) or _ignores(pid, signal.SIGTERM) for pid in processes),
                "the signal taken by every process below the hub",
            )
        finally:
            os.kill(srv.pid, signal.SIGCONT)
        # Promised: gone within 2 s; 5 leaves room for a loaded machine.
        assert srv.proc.wait(5) == 0
        heard = [peer.read_to_eof() for peer in peers]
        assert heard == [["* server shutting down"]] * len(peers)
        wait_until(lambda: all(_gone(pid) for pid in processes), "every worker ended")
    finally:
        srv.stop()


def _fork_server(srv: ServerProcess) -> int:
    found = [pid for pid in srv.children() if _comm(pid) == FORK_SERVER_COMM]
    assert len(found) == 1, f"children: {[(pid, _comm(pid)) for pid in srv.children()]}"
    return found[0]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _sockets(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


@pytest.mark.fork
@needs_fork
def test_the_fork_server_holds_no_socket_of_the_hub_or_of_a_client() -> None:
    """Not the listener (the port would outlive the hub), not a client's socket (its
    connection would outlive its leaving): only its own line to the hub."""
    with running_server("0", "--host", "127.0.0.1", "--mode", "fork") as srv:
        forker = _fork_server(srv)
        alone = os.listdir(f"/proc/{forker}/fd")
        peers = joined_peers(srv, 3)
        peers[0].send(b"/who\n")
        peers[0].expect("* here (3)")
        wait_until(lambda: len(srv.workers()) == 3, "three workers")
        assert len(os.listdir(f"/proc/{forker}/fd")) == len(alone)
        assert not _sockets(forker) & _sockets(srv.pid)
        for worker in srv.workers():
            assert not _sockets(forker) & _sockets(worker)


def _libraries(pid: int) -> set[str]:
    """The shared objects mapped into process ``pid``, by file name."""
    found = set()
    for row in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = row.split(maxsplit=5)[5:]
        if path and ".so" in path[0]:
            found.add(Path(path[0]).name)
    return found


@pytest.mark.fork
@needs_fork
def test_workers_come_from_a_fork_server_without_the_hubs_modules(tmp_path: Path) -> None:
    """The hub has loaded the history's sqlite3 (and its own modules) by the time it
    starts workers; the fork server - and so each worker - has only what a worker
    needs, so every fork copies a smaller process: sqlite3 is not in it, and the
    workers still serve (a line goes round)."""
    history = str(tmp_path / "history.db")
    with running_server(
        "0", "--host", "127.0.0.1", "--mode", "fork", "--history-file", history
    ) as srv:
        assert any("sqlite3" in name for name in _libraries(srv.pid)), "the hub has sqlite3"
        forker = _fork_server(srv)
        alice, bob = joined_peers(srv, 2)
        alice.send(b"hello from a small worker\n")
        while not bob.line().endswith("> hello from a small worker"):
            pass
        for pid in (forker, *srv.workers()):
            assert not [name for name in _libraries(pid) if "sqlite3" in name], pid


@pytest.mark.fork
@needs_fork
def test_a_dead_fork_server_is_replaced_once_and_shutdown_still_ends_all() -> None:
    """Killed (the OOM killer, an operator): the hub says so and makes a new one for
    the next client, everyone here is served on; killed again at once, it is not
    replaced again (no fork loop): new clients get `! server busy`. The end still
    ends every worker, the orphaned ones included."""
    srv = ServerProcess("0", "--host", "127.0.0.1", "--mode", "fork")
    try:
        alice, bob = joined_peers(srv, 2)
        wait_until(lambda: len(srv.workers()) == 2, "two workers")
        first = _fork_server(srv)
        processes = srv.descendants()
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: "fork server" in srv.stderr(), "the hub to notice")
        carol = srv.connect()
        carol.expect("* welcome")
        second = _fork_server(srv)
        assert second != first
        alice.send(b"still here\n")
        assert bob.expect("<guest1> still here") == ["* guest3 joined"]
        assert carol.line() == "<guest1> still here"
        processes += srv.descendants()

        os.kill(second, signal.SIGKILL)
        wait_until(lambda: srv.stderr().count("is gone") == 2, "the hub to notice again")
        late = srv.connect()
        assert late.read_to_eof() == ["! server busy, try again later"]

        assert srv.terminate(timeout=5) == 0
        for peer in (alice, bob, carol):
            assert peer.read_to_eof()[-1:] == ["* server shutting down"]
        wait_until(lambda: all(_gone(pid) for pid in processes), "every worker ended", WAIT)
        assert "made a new fork server" in srv.stderr()
        assert "Traceback" not in srv.stderr()
    finally:
        srv.stop()


@pytest.mark.fork
@needs_fork
def test_a_killed_hub_leaves_no_process_and_no_client_behind() -> None:
    """kill -9 of the hub: the fork server sees its line to the hub close, the
    workers their channels; every client sees its connection end, nothing lives on."""
    srv = ServerProcess("0", "--host", "127.0.0.1", "--mode", "fork")
    try:
        peers = joined_peers(srv, 3)
        wait_until(lambda: len(srv.workers()) == 3, "three workers")
        processes = srv.descendants()
        os.kill(srv.pid, signal.SIGKILL)
        for peer in peers:
            assert peer.read_to_eof() == []
        wait_until(lambda: all(_gone(pid) for pid in processes), "every process ended", WAIT)
    finally:
        srv.stop()


@pytest.mark.fork
@needs_fork
def test_a_stuck_fork_server_does_not_hang_the_hub() -> None:
    """A fork server that stops answering (SIGSTOP here) is given up on after a
    bound: the client waiting for it is refused, the room goes on."""
    srv = ServerProcess("0", "--host", "127.0.0.1", "--mode", "fork")
    forker = 0
    try:
        alice, bob = joined_peers(srv, 2)
        forker = _fork_server(srv)
        os.kill(forker, signal.SIGSTOP)
        late = srv.connect()
        assert late.read_to_eof() == ["! server busy, try again later"]
        wait_until(lambda: "did not answer" in srv.stderr(), "the hub to say why")
        alice.send(b"still here\n")
        assert bob.line() == "<guest1> still here"
        later = srv.connect()  # served by the fork server made in the stuck one's place
        later.expect("* welcome")
        assert srv.terminate(timeout=5) == 0
    finally:
        if forker and not _gone(forker):
            os.kill(forker, signal.SIGCONT)
        srv.stop()


@needs_fork
def test_the_fork_server_forks_plainly_only_with_one_thread() -> None:
    """libc's fork skips Python's after-fork repairs, which only locks held by another
    thread need: with a second thread running it must be `os.fork`."""
    import threading

    from chatbox.server.forkserver import _fast_fork

    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert _fast_fork() is os.fork
    finally:
        release.set()
        other.join()
