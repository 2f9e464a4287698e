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

import dataclasses
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness.bench.cpu import (
    descendants,
    process_cpu_seconds,
    reaped_cpu_seconds,
    tree_cpu_seconds,
)
from harness.daemon import Daemon, DaemonError, Readiness, free_port

HOST = "127.0.0.1"  # loopback only: the benchmark never sends anything off this machine

# A server has this long to say it is listening; Python servers start in well under 1 s.
START_TIMEOUT = 15.0
_REPO = Path(__file__).resolve().parents[2]
C_RELAY = _REPO / "examples" / "c_chatbox" / "server.c"
NO_COMPILER = "not built: no C compiler"
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
    # A C source built with `cc -O2` before the run (`prepare`); the template's
    # ``{binary}`` is where the build went.
    source: Path | None = None
    # A cluster: this many nodes of this project's server (the template) sharing one
    # room through a redis-server started for each workload; clients are spread over
    # the nodes round-robin. 0: one server.
    nodes: int = 0

    def argv(self, host: str, port: int) -> list[str]:
        return shlex.split(self.template.format(host=host, port=port))


def builtin_specs() -> dict[str, ServerSpec]:
    python = shlex.quote(sys.executable)
    # Streams at full speed are the point here: per-client flood limits off.
    server = (
        f"{python} -m chatbox.server {{port}} --host {{host}} --max-clients 6000 "
        "--flood-lines 0 --flood-bytes 0"
    )
    broker = shlex.quote(str(_REPO / "benchmarks" / "asyncio_broker.py"))
    relay = shlex.quote(str(_REPO / "benchmarks" / "select_relay.py"))
    return {
        "fork": ServerSpec("fork", f"{server} --mode fork", 1000, True),
        "thread": ServerSpec("thread", f"{server} --mode thread", 5000, True),
        "asyncio": ServerSpec("asyncio", f"{python} {broker} {{port}} --host {{host}}", 5000, True),
        # The references: the floor for one line in Python, and the practical limit.
        "select": ServerSpec("select", f"{python} {relay} {{port}} --host {{host}}", 5000, True),
        # The C example holds at most 1,000 clients (its MAX_CLIENTS).
        "c": ServerSpec("c", "{binary} {port} {host}", 1000, True, source=C_RELAY),
        # ncat multiplexes with select(), so FD_SETSIZE (1024) bounds it; its default
        # --max-conns of 100 would bound it first.
        "ncat": ServerSpec(
            "ncat", "ncat -l --chat --max-conns 5000 {host} {port}", 1000, backlog=10
        ),
        # This project's server as a cluster of 1, 2 and 3 nodes on one redis-server: the
        # engine's cost, against "thread" (the same server alone) in the same run.
        **{
            f"cluster{n}": ServerSpec(f"cluster{n}", f"{server} --mode thread", 1000, True, nodes=n)
            for n in (1, 2, 3)
        },
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


def compiler() -> str | None:
    """The C compiler on PATH, if any."""
    return next((p for p in map(shutil.which, ("cc", "gcc", "clang")) if p), None)


def prepare(spec: ServerSpec, workdir: Path) -> tuple[ServerSpec, str | None]:
    """Build ``spec``'s C source into ``workdir`` with ``cc -O2``: the spec that runs the
    build, or why there is none ("not built: ..."). Specs without a source pass as they are."""
    if spec.source is None:
        return spec, None
    if not spec.source.is_file():
        return spec, f"not built: {spec.source.name} not found (it comes with a source checkout)"
    cc = compiler()
    if cc is None:
        return spec, NO_COMPILER
    binary = workdir / spec.name
    argv = [cc, "-O2", "-o", str(binary), str(spec.source)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return spec, f"not built: {cc}: {exc}"
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
        return spec, f"not built: {cc} -O2 failed: {first}"
    template = spec.template.replace("{binary}", shlex.quote(str(binary)))
    return dataclasses.replace(spec, template=template, source=None), None


def available(spec: ServerSpec) -> str | None:
    """Why ``spec`` cannot run here, or None if it can."""
    if spec.source is not None:
        return "not built"  # `prepare` builds it first
    argv = spec.argv(HOST, 0)
    if not argv:
        return "empty command"
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} is not installed"
    if spec.nodes:
        if shutil.which("redis-server") is None:
            return "redis-server is not installed (Debian: apt-get install redis-server)"
        if importlib.util.find_spec("redis") is None:
            return "redis-py is not installed (pip install 'chatbox[cluster]')"
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
        # A cluster's other nodes and its redis-server (and the store's folder).
        self._others: list[Daemon] = []
        self._store_folder = ""
        self.endpoints: list[tuple[str, int]] = []

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
        if self.spec.nodes:
            self._start_cluster()
            return
        self._daemon = self._start_one(self.spec.name, self.spec.argv(self.host, 0))
        self.endpoints = [(self.host, self.port)]

    def _start_one(self, label: str, argv: list[str]) -> Daemon:
        # Announcing servers take port 0 and say which port they got. The others are
        # ready when the kernel's socket table shows them listening on the port chosen
        # here - not by connecting: a probe connection that closes before the server
        # accepts it makes ncat quit ("getpeername failed").
        port = 0 if self.spec.announces else free_port(HOST)
        if not self.spec.announces:
            argv = self.spec.argv(self.host, port)
        readiness = Readiness("line" if self.spec.announces else "port")
        # An open, silent stdin: ncat --chat ends every connection at EOF on it.
        daemon = Daemon(label, argv, keep_stdin=True)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            daemon.start()
            self.port = daemon.wait_ready(readiness, port, _listening, deadline)
        except DaemonError as exc:
            daemon.stop()
            raise ServerError(f"{self.spec.name}: {exc}") from None
        return daemon

    def _start_cluster(self) -> None:
        """A redis-server in a fresh folder on a free port, then the nodes on it."""
        from harness.cluster import store_argv, store_ready, wait_store_ready

        binary = shutil.which("redis-server") or "redis-server"
        self._store_folder = tempfile.mkdtemp(prefix="bench-redis-")
        port = free_port(HOST)
        store = Daemon("redis-server", store_argv(binary, HOST, port, self._store_folder))
        self._others.append(store)
        try:
            store.start()
        except DaemonError as exc:
            raise ServerError(f"{self.spec.name}: {exc}") from None
        said = wait_store_ready(store, time.monotonic() + START_TIMEOUT)
        if not store_ready(store, said):
            raise ServerError(f"{self.spec.name}: redis-server did not start: {said[-1:]}")
        cluster = ["--cluster", f"redis://{HOST}:{port}/0"]
        for index in range(self.spec.nodes):
            node = self._start_one(
                f"{self.spec.name}-node{index}", [*self.spec.argv(self.host, 0), *cluster]
            )
            if self._daemon is None:
                self._daemon = node  # node 0: `pid`, and what `port` names
            else:
                self._others.insert(0, node)
            self.endpoints.append((self.host, self.port))
        self.port = self.endpoints[0][1]

    def alive(self) -> bool:
        daemons = [self._daemon, *self._others]
        return all(d is not None and d.exit_status() == "" for d in daemons)

    def stop(self) -> None:
        """Stop the server (a cluster: its nodes, then its redis-server) and reap it."""
        try:
            if self._daemon is not None:
                self._daemon.stop()
                self._daemon = None
        finally:
            for daemon in self._others:  # the other nodes first, the store last
                daemon.stop()
            self._others = []
            if self._store_folder:
                shutil.rmtree(self._store_folder, ignore_errors=True)
                self._store_folder = ""

    # --- CPU ----------------------------------------------------------------------------

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) used so far by the server, all its threads, its
        live workers and the workers it has reaped, each once (`harness.bench.cpu`).
        Read before and after a timed window, the difference is what the window cost
        the server."""
        return tree_cpu_seconds(self._roots())

    def _roots(self) -> list[int]:
        return [self.pid, *(d.pid for d in self._others if d.pid)]

    def store_cpu_seconds(self) -> float:
        """CPU seconds used so far by a cluster's redis-server (0 for one server): its
        share of `cpu_seconds`."""
        store = self._others[-1] if self.spec.nodes and self._others else None
        if store is None or not store.pid:
            return 0.0
        return process_cpu_seconds(store.pid) or 0.0

    # --- memory -------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """The server process and all its descendants (its workers, in fork mode)."""
        return descendants(self._roots())

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


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(CPU seconds of the process itself - all its threads, to the ns -, of its children
    that ended and were reaped - in clock ticks). OSError if it is gone."""
    own, reaped = process_cpu_seconds(pid), reaped_cpu_seconds(pid)
    if own is None or reaped is None:
        raise ProcessLookupError(pid)
    return own, reaped


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
