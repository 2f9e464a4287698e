"""Shutdown of a full room: N clients connected, SIGTERM, how long until the server has
exited and how many clients were told `* server shutting down`.

    python benchmarks/shutdown.py [--mode fork] [--clients 1000] [--repeat 3]
                                  [--group] [--hogs N] [--source DIR ...]

Each ``--source DIR`` (default: this checkout) runs the server from DIR (on PYTHONPATH):
before and after in one run, interleaved round by round. For each run a fresh server
is started, ``--clients`` connections are opened from 127.0.0.1 (exempt from the
per-address limits) until ``/who`` counts them all, then SIGTERM goes to the server
(``--group``: to its whole process group, as systemd does). The figures: the wall time
from the signal until every client has seen its stream end, until the server process
has exited (the promise is 2 s), until no
process of its group is left (the fork server and the workers too), and how many
clients read `* server shutting down` as their last line before the end of the stream.
``--hogs N``: N processes that only spin run from before the clients connect until the
end of the shutdown (a machine busy with other work, where the promise was missed).

Bounded: each step has a deadline; every server is ended by its process group id and
reaped, every socket closed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.drain import read_ready

sys.path.insert(0, str(Path(__file__).resolve().parent))

from room_load import HOG, end_side, start_side

HERE = Path(__file__).resolve().parents[1]
STEP_DEADLINE = 120.0
NOTICE = b"* server shutting down"


def start(source: Path, mode: str, clients: int) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": str(source)}
    argv = [sys.executable, "-m", "chatbox.server", "0", "--host", "127.0.0.1", "--mode", mode]
    argv += ["--max-clients", str(clients + 16)]
    proc = subprocess.Popen(
        argv,
        cwd=source,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on"):
        stop(proc)
        raise SystemExit(f"the server from {source} did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def stop(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def here(watcher: socket.socket, file: object) -> int:
    watcher.sendall(b"/who\n")
    while True:
        line: bytes = file.readline()  # type: ignore[attr-defined]
        if not line:
            raise SystemExit("the watcher was disconnected")
        if line.startswith(b"* here ("):
            return int(line.split(b"(", 1)[1].split(b")", 1)[0])


def group_alive(pgid: int) -> bool:
    """Whether a process of the group is left that is not a zombie (reaped or not, a
    zombie no longer runs)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def one_run(source: Path, args: argparse.Namespace) -> tuple[float, float, float, int]:
    until = str(time.monotonic() + 3 * STEP_DEADLINE)
    hogs = [start_side(HOG, [until]) for _ in range(args.hogs)]
    proc, port = start(source, args.mode, args.clients)
    socks: list[socket.socket] = []
    try:
        watcher = socket.create_connection(("127.0.0.1", port), timeout=STEP_DEADLINE)
        file = watcher.makefile("rb")
        socks.append(watcher)
        for _ in range(args.clients - 1):
            sock = socket.create_connection(("127.0.0.1", port), timeout=STEP_DEADLINE)
            sock.setblocking(False)
            socks.append(sock)
        deadline = time.monotonic() + STEP_DEADLINE
        while here(watcher, file) < args.clients:
            if time.monotonic() > deadline:
                raise SystemExit("not every client got in")
            time.sleep(0.2)  # polling the room's count, bounded by the deadline
        signalled = time.perf_counter()
        if args.group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        # The clients are read as the server ends, so that the time the last of them
        # saw its stream end is known, and the server's exit is watched meanwhile.
        exit_s = None
        tails = {sock: bytearray() for sock in socks[1:]}
        open_ = set(tails)
        deadline = time.monotonic() + STEP_DEADLINE
        while open_ and time.monotonic() < deadline:
            for sock, data in read_ready(open_, 0.05, most=1000).items():
                tails[sock] = (tails[sock] + data)[-256:]
            if exit_s is None and proc.poll() is not None:
                exit_s = time.perf_counter() - signalled
        ended_s = time.perf_counter() - signalled
        proc.wait(STEP_DEADLINE)
        if exit_s is None:
            exit_s = time.perf_counter() - signalled
        deadline = time.monotonic() + STEP_DEADLINE
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)  # polling /proc, bounded by the deadline
        group_s = time.perf_counter() - signalled
        told = sum(bytes(t).rstrip(b"\n").endswith(NOTICE) for t in tails.values())
        with contextlib.suppress(OSError):
            rest = file.read()
            told += rest.rstrip(b"\n").endswith(NOTICE)
        file.close()
        return ended_s, exit_s, group_s, told
    finally:
        for hog in hogs:
            end_side(hog)
        for sock in socks:
            sock.close()
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="fork")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--group", action="store_true")
    parser.add_argument("--hogs", type=int, default=0, help="processes that only spin")
    parser.add_argument("--source", type=Path, action="append")
    args = parser.parse_args()
    sources = args.source or [HERE]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.clients + 256)), hard))
    results: dict[Path, list[tuple[float, float, float, int]]] = {s: [] for s in sources}
    for round_ in range(args.repeat):
        for source in sources:
            ended_s, exit_s, group_s, told = one_run(source, args)
            results[source].append((ended_s, exit_s, group_s, told))
            print(
                f"round {round_ + 1} {source}: every client's stream ended {ended_s:.2f} s "
                f"after SIGTERM, server exited {exit_s:.2f} s, group gone {group_s:.2f} s, "
                f"{told}/{args.clients} told (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    for source, runs in results.items():
        ends = [r[0] for r in runs]
        exits = [r[1] for r in runs]
        groups = [r[2] for r in runs]
        told = [r[3] for r in runs]
        print(
            f"{source}: streams ended max {max(ends):.2f} s; exit median "
            f"{statistics.median(exits):.2f} s, max {max(exits):.2f} s; group gone max "
            f"{max(groups):.2f} s; told {min(told)}-{max(told)} of {args.clients}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
