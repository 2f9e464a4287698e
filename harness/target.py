"""The target: the chat server under test, started on the network's server host.

Any implementation is started from a command template with ``{port}`` and ``{host}``
placeholders (``{python}`` is this interpreter, ``{server_options}`` what the scenario asks
of this project's server). The harness picks a free port, starts
the server, and waits - on an event, never a fixed sleep - until either the server
announces ``listening on HOST:PORT`` on stdout or the port accepts connections, while
the process is alive. A server that exits first is a setup error that shows its stderr.

With ``--impair SPEC`` an impairment proxy (``harness.impair``) is started on the
server's host in front of it, and clients connect to the proxy instead.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from harness.hosts import Host, Network
from harness.processes import Lifeline, child_env, end_group, preexec

# {server_options}: what the scenario asks of this project's server (slow-reader: a small
# --sendq and --slow-timeout); empty for the others. Foreign --server-cmd templates simply
# do not contain it and are run as given.
DEFAULT_SERVER = "{python} -m chatbox.server {port} --host {host} {server_options}"
DEFAULT_CLIENT = "{python} -m chatbox.client {port} {host}"
_ANNOUNCE = re.compile(r"listening on \[?([^\]\s]*)\]?:(\d+)")
PORT_ATTEMPTS = 3  # a free port can be taken by someone else before the server binds it
PROBE_INTERVAL = 0.05  # between connection attempts when a server announces nothing
DRAIN_JOIN_S = 2.0  # reading a stopped process's last output must not hang the cleanup


class SetupError(Exception):
    """The target could not be started; the message (one line or more) says why."""


def is_ours(server_template: str) -> bool:
    """Whether the server under test is this project's (its specific promises apply)."""
    return "chatbox.server" in server_template or "chatbox-server" in server_template


def python_for(host: Host) -> str:
    """The interpreter to name on ``host``: ours locally, ``python3`` on another machine."""
    return getattr(host, "python", None) or sys.executable


def expand(
    template: str, *, host: str, port: int | str, python: str, server_options: str = ""
) -> list[str]:
    """Fill a command template; raise `SetupError` for a malformed one."""
    try:
        text = template.format(
            host=host, port=port, python=shlex.quote(python), server_options=server_options
        )
        return shlex.split(text)
    except (KeyError, IndexError, ValueError) as exc:
        raise SetupError(f"bad command template {template!r}: {exc}") from None


class Daemon:
    """A background process with its stdout and stderr drained into memory.

    Resource handling: own session and process group, registered with the lifeline;
    `stop` ends the group and reaps. Error handling: `start` raises `SetupError` when the
    command cannot be executed.
    """

    def __init__(self, label: str, argv: Sequence[str]) -> None:
        self.label = label
        self.argv = list(argv)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        # When each stderr line arrived (time.monotonic), so a report can place what a
        # process said (the impairment proxy's resets) on the run's time line.
        self.stderr_at: list[float] = []
        self.announced: tuple[str, int] | None = None
        self.cond = threading.Condition()
        self.proc: subprocess.Popen[bytes] | None = None
        self._drains: list[threading.Thread] = []

    def start(self) -> None:
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                env=child_env(),
                preexec_fn=preexec(),
            )
        except OSError as exc:
            raise SetupError(
                f"cannot start {self.label} ({self.argv[0]}): {exc.strerror}"
            ) from None
        Lifeline.get().register(self.proc.pid)
        for stream, sink, name in (
            (self.proc.stdout, self.stdout, "out"),
            (self.proc.stderr, self.stderr, "err"),
        ):
            drain = threading.Thread(
                target=self._drain, args=(stream, sink), name=f"{self.label}-{name}", daemon=True
            )
            drain.start()
            self._drains.append(drain)

    def _drain(self, stream: object, sink: list[str]) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self.cond:
                sink.append(line)
                if sink is self.stderr:
                    self.stderr_at.append(time.monotonic())
                if sink is self.stdout and self.announced is None:
                    match = _ANNOUNCE.search(line)
                    if match:
                        self.announced = (match.group(1), int(match.group(2)))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def exit_status(self) -> str:
        """Empty while running; otherwise how it ended."""
        if self.proc is None or self.proc.poll() is None:
            return ""
        code = self.proc.returncode
        return f"exit {code}" if code >= 0 else f"signal {-code}"

    def wait_announced(self, deadline: float) -> tuple[str, int] | None:
        with self.cond:
            self.cond.wait_for(
                lambda: self.announced is not None or self.exit_status() != "",
                timeout=max(0.0, deadline - time.monotonic()),
            )
            return self.announced

    def stop(self) -> str:
        """End the process group and reap; return how it ended."""
        if self.proc is None:
            return ""
        proc = self.proc
        end_group(proc.pid, lambda: proc.poll() is not None)
        Lifeline.get().unregister(proc.pid)
        # Its last words (a reset the proxy reported just before it ended) are still in
        # the pipes: read them to the end, bounded in case a grandchild holds them open.
        for drain in self._drains:
            drain.join(timeout=DRAIN_JOIN_S)
        return self.exit_status()

    def stderr_tail(self, lines: int = 15) -> str:
        with self.cond:
            return "\n".join(self.stderr[-lines:])

    def stderr_since(self, t0: float) -> list[tuple[float, str]]:
        """Every stderr line so far with its time in seconds since ``t0`` (monotonic)."""
        with self.cond:
            return [(at - t0, line) for at, line in zip(self.stderr_at, self.stderr, strict=True)]


def free_port(address: str) -> int:
    """A port free on this machine right now (the server binds it a moment later)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, 0))
        except OSError:
            s.bind(("", 0))
        return int(s.getsockname()[1])


def _connectable_here(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def _connectable_from(host: Host, address: str, port: int) -> bool:
    probe = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)"
    argv = host.command([python_for(host), "-c", probe, address, str(port)])
    try:
        return subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Target:
    """The server under test (and the impairment proxy, if any) on ``network``.

    Resource handling: use as a context manager or call `stop`; both processes are ended
    and reaped. Error handling: `start` raises `SetupError` with the server's stderr when
    it exits or stays unreachable.
    """

    def __init__(
        self,
        network: Network,
        server_template: str,
        *,
        impair: str | None,
        timeout: float,
        server_options: Sequence[str] = (),
    ) -> None:
        self.network = network
        self.template = server_template
        self.server_options = list(server_options)
        # Whether the scenario's server options reached the server (its template has
        # the {server_options} placeholder): only then may it count on their effect.
        self.options_applied = bool(server_options) and "{server_options}" in server_template
        self.impair = impair
        self.timeout = timeout
        self.server: Daemon | None = None
        self.proxy: Daemon | None = None
        self.port = 0  # the port the server listens on
        self.client_port = 0  # the port clients connect to (the proxy's, if any)

    @property
    def connect_address(self) -> str:
        return self.network.connect_address

    def start(self) -> None:
        host = self.network.server
        listen = self.network.listen_address
        for attempt in range(PORT_ATTEMPTS):
            port = free_port(listen) if self.network.kind == "loopback" else free_port("")
            options = " ".join(shlex.quote(o) for o in self.server_options)
            argv = expand(
                self.template,
                host=listen,
                port=port,
                python=python_for(host),
                server_options=options,
            )
            self.server = Daemon("server", host.command(argv))
            self.server.start()
            try:
                self.port = self._wait_ready(self.server, port)
                break
            except SetupError:
                self.server.stop()
                # Another process (a parallel test worker) took the port in between.
                if "in use" not in self.server.stderr_tail() or attempt == PORT_ATTEMPTS - 1:
                    raise
        self.client_port = self.port
        if self.impair:
            self._start_proxy(host, listen)

    def _wait_ready(self, daemon: Daemon, port: int) -> int:
        deadline = time.monotonic() + min(self.timeout, 30.0)
        local = self.network.kind == "loopback"
        while True:
            announced = daemon.wait_announced(min(deadline, time.monotonic() + PROBE_INTERVAL))
            if announced is not None:
                return announced[1]
            status = daemon.exit_status()
            if status:
                raise SetupError(
                    f"the server exited ({status}) before accepting connections; "
                    f"its stderr:\n{daemon.stderr_tail() or '(empty)'}"
                )
            address = self.network.connect_address
            if local and _connectable_here(address, port):
                return port
            if not local and _connectable_from(self.network.client_host(0), address, port):
                return port
            if time.monotonic() >= deadline:
                raise SetupError(
                    f"the server did not accept connections on {address}:{port} in time; "
                    f"its stderr:\n{daemon.stderr_tail() or '(empty)'}"
                )

    def _start_proxy(self, host: Host, listen: str) -> None:
        assert self.impair is not None
        self.proxy = self._proxy_to(host, listen, self.port, "impair")
        assert self.proxy.announced is not None
        self.client_port = self.proxy.announced[1]

    def _proxy_to(self, host: Host, listen: str, port: int, label: str) -> Daemon:
        """Start an impairment proxy on ``host`` in front of ``port`` there; return it once
        it listens. Error handling: `SetupError` with its stderr if it does not start."""
        assert self.impair is not None
        # The proxy runs next to the server; it reaches it over the server host's own
        # loopback when the server listens there, else on the address it bound.
        target = "127.0.0.1" if listen.startswith("127.") or listen == "0.0.0.0" else listen
        argv = [
            python_for(host),
            "-m",
            "harness.impair",
            "--listen",
            f"{listen}:0",
            "--target",
            f"{target}:{port}",
            "--spec",
            self.impair,
        ]
        proxy = Daemon(label, host.command(argv))
        proxy.start()
        if proxy.wait_announced(time.monotonic() + min(self.timeout, 30.0)) is None:
            proxy.stop()
            raise SetupError(
                f"the impairment proxy did not start ({proxy.exit_status() or 'no answer'}); "
                f"its stderr:\n{proxy.stderr_tail() or '(empty)'}"
            )
        return proxy

    def proxy_round_trip_ms(self) -> float | None:
        """Median TCP round trip (ms) through the impairment proxy's path, or None.

        What is measured: one-byte round trips from client host 0 through a second proxy
        with the same toxics, on the server host, to a TCP echo there - the path the chat
        traffic takes, minus the chat server (which relays to others, not back).

        Resource handling: the echo and the second proxy are lifeline-registered daemons,
        ended and reaped before returning. Error handling: any failure returns None (the
        report then says "not measured"); a run never fails for want of it.
        """
        if self.impair is None:
            return None
        from harness.hosts.roundtrip import ANNOUNCING_ECHO_SOURCE, ping_command, run_ping

        host = self.network.server
        listen = self.network.listen_address
        echo = Daemon(
            "rtt-echo", host.command([python_for(host), "-c", ANNOUNCING_ECHO_SOURCE, listen])
        )
        proxy: Daemon | None = None
        try:
            echo.start()
            announced = echo.wait_announced(time.monotonic() + min(self.timeout, 30.0))
            if announced is None:
                return None
            proxy = self._proxy_to(host, listen, announced[1], "rtt-impair")
            assert proxy.announced is not None
            client = self.network.client_host(0)
            return run_ping(ping_command(client, self.connect_address, proxy.announced[1]))
        except SetupError:
            return None
        finally:
            if proxy is not None:
                proxy.stop()
            echo.stop()

    def children(self) -> list[int]:
        """Descendant pids of the server process (its workers, in a forking server)."""
        from harness.processes import children_of

        if self.server is None or self.network.kind == "ssh":
            return []
        out: list[int] = []
        todo = [self.server.pid]
        while todo:
            pid = todo.pop()
            kids = children_of(pid)
            out.extend(kids)
            todo.extend(kids)
        return out

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {
            "command": " ".join(self.server.argv) if self.server else "",
            "port": self.port,
            "client_port": self.client_port,
            "impair": self.impair or "",
        }
        return info

    def proxy_log(self, t0: float) -> list[tuple[float, str]] | None:
        """What the impairment proxy said on stderr (its resets), timed from ``t0``; None
        when no proxy is in the path. Complete once `stop` has returned."""
        if self.proxy is None:
            return None
        return self.proxy.stderr_since(t0)

    def stop(self) -> tuple[str, str]:
        """Stop proxy and server; return (server exit status, server stderr tail)."""
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.stop()
        if self.server is None:
            return ("", "")
        status = self.server.stop()
        return (status, self.server.stderr_tail())

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
