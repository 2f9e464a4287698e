"""The servers under test: how each one starts, where it listens, what memory it holds.

A `ServerSpec` is a name and a command template with ``{host}`` and ``{port}`` in it.
The built-in ones are this project's server in fork and in thread mode, the asyncio
baseline from benchmarks/ and ``ncat --chat``; any other chat server plugs in through
``--server-cmd``. A server is started as a `harness.daemon.Daemon` and is ready when it
prints ``listening on HOST:PORT`` (port 0 then tells its real port) or, for servers that
print nothing, when the kernel's socket table shows it listening on the port chosen for
it. Each workload gets a fresh server, so none inherits another's state.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.daemon import Daemon, DaemonError, Readiness, free_port

HOST = "127.0.0.1"  # loopback only: the benchmark never sends anything off this machine

# A server has this long to say it is listening; Python servers start in well under 1 s.
START_TIMEOUT = 15.0
_REPO = Path(__file__).resolve().parents[2]
_NAME = re.compile(r"^([A-Za-z][\w.-]*)=(?=\S)")


class ServerError(Exception):
    """A server could not be started; the message says why, in one line."""


@dataclass(frozen=True)
class ServerSpec:
    name: str
    template: str  # a command line with {host} and {port}
    # Clients the connection ramp goes up to for this server (the targets:
    # 1,000 for a process per client, 5,000 for a thread per client).
    ramp: int = 1000
    # Says `listening on HOST:PORT` on stdout, so it can take port 0. Other servers get
    # a free port chosen here and are ready when they listen on it.
    announces: bool = False
    # The server's accept backlog where it is small (ncat listens with 10): the load
    # generator then connects that many at a time and waits until they are in.
    backlog: int | None = None

    def argv(self, host: str, port: int) -> list[str]:
        return shlex.split(self.template.format(host=host, port=port))


def builtin_specs() -> dict[str, ServerSpec]:
    python = shlex.quote(sys.executable)
    server = f"{python} -m chatbox.server {{port}} --host {{host}} --max-clients 6000"
    broker = shlex.quote(str(_REPO / "benchmarks" / "asyncio_broker.py"))
    return {
        "fork": ServerSpec("fork", f"{server} --mode fork", 1000, True),
        "thread": ServerSpec("thread", f"{server} --mode thread", 5000, True),
        "asyncio": ServerSpec("asyncio", f"{python} {broker} {{port}} --host {{host}}", 5000, True),
        # ncat multiplexes with select(), so FD_SETSIZE (1024) bounds it; its default
        # --max-conns of 100 would bound it first.
        "ncat": ServerSpec(
            "ncat", "ncat -l --chat --max-conns 5000 {host} {port}", 1000, backlog=10
        ),
    }


def parse_server_cmd(text: str, index: int) -> ServerSpec:
    """``[NAME=]TEMPLATE`` from the command line as a spec; unnamed ones are custom1, ..."""
    match = _NAME.match(text)
    name, template = (match.group(1), text[match.end() :]) if match else (f"custom{index}", text)
    if "{port}" not in template:
        raise ServerError(
            f"--server-cmd {text!r}: the template needs {{port}} (and may use {{host}})"
        )
    try:
        shlex.split(template.format(host=HOST, port=0))
    except (ValueError, KeyError, IndexError) as exc:
        raise ServerError(f"--server-cmd {text!r}: cannot parse: {exc}") from None
    return ServerSpec(name, template, 1000)


def available(spec: ServerSpec) -> str | None:
    """Why ``spec`` cannot run here, or None if it can."""
    argv = spec.argv(HOST, 0)
    if not argv:
        return "empty command"
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} is not installed"
    for arg in argv[1:]:
        # A script the command runs (the baseline lives in benchmarks/, which only a
        # source checkout has, not an installed package).
        if arg.endswith(".py") and not Path(arg).is_file():
            where = " (benchmarks/ comes with a source checkout)" if "benchmarks" in arg else ""
            return f"{arg} not found{where}"
    return None


class RunningServer:
    """One started server process (and, through it, all its workers).

    Resource handling: use as a context manager; leaving it ends the whole process
    group the server runs in (SIGTERM, then SIGKILL) and reaps it (`harness.daemon`).
    Error handling: `start` raises `ServerError` with the server's stderr when it exits
    or stays silent instead of listening.
    """

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.host = HOST
        self.port = 0
        self._daemon: Daemon | None = None

    @property
    def pid(self) -> int:
        assert self._daemon is not None
        return self._daemon.pid

    def __enter__(self) -> RunningServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        # Announcing servers take port 0 and say which port they got. The others are
        # ready when the kernel's socket table shows them listening on the port chosen
        # here - not by connecting: a probe connection that closes before the server
        # accepts it makes ncat quit ("getpeername failed").
        port = 0 if self.spec.announces else free_port(HOST)
        readiness = Readiness("line" if self.spec.announces else "port")
        # An open, silent stdin: ncat --chat ends every connection at EOF on it.
        self._daemon = Daemon(self.spec.name, self.spec.argv(self.host, port), keep_stdin=True)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            self._daemon.start()
            self.port = self._daemon.wait_ready(readiness, port, _listening, deadline)
        except DaemonError as exc:
            raise ServerError(f"{self.spec.name}: {exc}") from None

    def alive(self) -> bool:
        return self._daemon is not None and self._daemon.exit_status() == ""

    def stop(self) -> None:
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None

    # --- memory -------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """The server process and all its descendants (its workers, in fork mode)."""
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, ()))
        return tree

    def pss_bytes(self) -> tuple[int, int]:
        """(PSS of the server and all its workers in bytes, number of processes).

        PSS shares each page among the processes mapping it, so forked workers that
        share the parent's pages copy-on-write count only their share.
        """
        total = 0
        pids = self.pids()
        for pid in pids:
            try:
                with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                    for row in f:
                        if row.startswith(b"Pss:"):
                            total += int(row.split()[1]) * 1024
                            break
            except OSError:
                continue  # ended while we looked
        return total, len(pids)


def _listening(port: int) -> bool:
    """Whether a socket on this machine listens on TCP ``port`` (from /proc/net)."""
    wanted = f":{port:04X} "
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for row in f:
                    fields = row.split()
                    # fields[1] is local ADDRESS:PORT in hex, fields[3] the state; 0A = LISTEN
                    if len(fields) > 3 and fields[3] == "0A" and (fields[1] + " ").endswith(wanted):
                        return True
        except OSError:
            continue
    return False
