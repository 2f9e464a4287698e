"""The servers under test: how each one starts, where it listens, what memory it holds.

A `ServerSpec` is a name and a command template with ``{host}`` and ``{port}`` in it.
The built-in ones are this project's server in fork and in thread mode, the asyncio
baseline from benchmarks/ and ``ncat --chat``; any other chat server plugs in through
``--server-cmd``. A server is ready when it prints ``listening on HOST:PORT`` (port 0
then tells its real port) or, for servers that print nothing, when the kernel's socket
table shows it listening on the port chosen for it. Each workload gets a fresh server,
so none inherits another's state.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness import processes

HOST = "127.0.0.1"  # loopback only: the benchmark never sends anything off this machine

# A server has this long to say it is listening; Python servers start in well under 1 s.
START_TIMEOUT = 15.0
# SIGTERM first (a clean shutdown is part of being a good server), then SIGKILL.
STOP_GRACE = 3.0

_LISTENING = re.compile(rb"listening on (\S+):(\d+)")
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class RunningServer:
    """One started server process (and, through it, all its workers).

    Resource handling: use as a context manager; leaving it ends the whole process
    group the server runs in (SIGTERM, then SIGKILL after `STOP_GRACE`) and reaps it.
    Error handling: `start` raises `ServerError` with the tail of the server's stderr
    when it exits or stays silent instead of listening.
    """

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.host = HOST
        self.port = 0
        # Closed in stop(): it outlives this method, so no `with` fits.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc: subprocess.Popen[bytes] | None = None
        self._drain: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

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
        port = 0 if self.spec.announces else free_port()
        argv = self.spec.argv(self.host, port)
        try:
            self._proc = subprocess.Popen(
                argv,
                # An open, silent stdin: ncat --chat ends every connection at EOF on it.
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=processes.child_env(),
                start_new_session=True,  # one group: stopping it ends every worker too
                preexec_fn=processes.preexec(),
            )
        except OSError as exc:
            raise ServerError(f"{self.spec.name}: cannot run {argv[0]}: {exc.strerror}") from None
        # If the bench itself is killed, the lifeline's watchdog ends the server's group.
        processes.Lifeline.get().register(self._proc.pid)
        deadline = time.monotonic() + START_TIMEOUT
        if port:
            self.port = port
            self._start_drain()
            self._wait_port(deadline)
        else:
            self.port = self._wait_listening(deadline)
            self._start_drain()

    def _start_drain(self) -> None:
        # Whatever the server prints later must not fill the pipe and block it.
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        self._drain = threading.Thread(target=_drain, args=(fd,), daemon=True)
        self._drain.start()

    def _wait_listening(self, deadline: float) -> int:
        assert self._proc is not None and self._proc.stdout is not None
        out = self._proc.stdout
        seen = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([out], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(out.fileno(), 4096)
            if not chunk:
                raise ServerError(f"{self.spec.name}: exited before listening{self._tail()}")
            seen += chunk
            match = _LISTENING.search(seen)
            if match and b"\n" in seen[match.end() :]:
                return int(match.group(2))
        raise ServerError(f"{self.spec.name}: did not say 'listening on' in {START_TIMEOUT:.0f} s")

    def _wait_port(self, deadline: float) -> None:
        """Wait until something listens on our port.

        Such a server announces nothing, so its port is polled - in the kernel's socket
        table, not by connecting: a probe connection that closes before the server
        accepts it makes ncat quit ("getpeername failed").
        """
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(f"{self.spec.name}: exited before listening{self._tail()}")
            if _listening(self.port):
                return
            time.sleep(0.02)
        raise ServerError(
            f"{self.spec.name}: port {self.port} did not open in {START_TIMEOUT:.0f} s"
        )

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
        # Workers that outlived their parent are still in the group; end them too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        processes.Lifeline.get().unregister(proc.pid)
        if self._drain is not None:
            self._drain.join(STOP_GRACE)  # the pipe ends with the last process of the group
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        self._stderr.close()
        self._proc = None

    def _tail(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
        return f": {text[-1]}" if text else ""

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


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
            pass
