"""The target: the chat server under test, started on the network's server host.

Any implementation is started from a command template with ``{port}`` and ``{host}``
placeholders (``{python}`` is the host's interpreter, ``{server_options}`` what the
scenario asks of this project's server). The network picks the port; the server is
started as a `harness.daemon.Daemon` and waited for as ``--ready`` says (by default its
``listening on HOST:PORT`` line, a gentle port probe only if it prints nothing). A server
that exits first is a setup error that shows its exit status and its stderr.

With ``--impair SPEC`` an impairment proxy (`harness.impair.launch`) is started on the
server's host in front of it, and clients connect to the proxy instead.

How the server ended is looked at right before the harness stops it, so a server that
died at any point of the run is never reported as one that survived.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Sequence

from harness.daemon import Daemon, DaemonError, Readiness, head_and_tail
from harness.hosts import Host, Network
from harness.processes import children_of

# {server_options}: what the scenario asks of this project's server (slow-reader: a small
# --sendq and --slow-timeout); empty for the others. Foreign --server-cmd templates simply
# do not contain it and are run as given. The harness is one machine posing as many
# clients, often from one address (a netns host, an ssh host): per-address limits off.
# Its parties stream lines as fast as the room relays them, which is a load test, not a
# person typing: per-client flood limits off too.
DEFAULT_SERVER = (
    "{python} -m chatbox.server {port} --host {host} --max-per-ip 0 --connect-rate 0 "
    "--flood-lines 0 --flood-bytes 0 {server_options}"
)
# {client_options}: what every client of the run is given (TLS, password: harness.secure).
DEFAULT_CLIENT = "{python} -m chatbox.client {port} {host} {client_options}"
PORT_ATTEMPTS = 3  # a free port can be taken by someone else before the server binds it
START_TIMEOUT = 30.0  # the most a server may take to be ready, within --timeout


class SetupError(Exception):
    """The run could not be set up; the message (one line or more) says why."""


def is_ours(server_template: str) -> bool:
    """Whether the server under test is this project's (its specific promises apply)."""
    return "chatbox.server" in server_template or "chatbox-server" in server_template


def python_for(host: Host) -> str:
    """The interpreter to name on ``host``: ours locally, ``python3`` on another machine."""
    return host.python


def expand(
    template: str,
    *,
    host: str,
    port: int | str,
    python: str,
    server_options: str = "",
    client_options: str = "",
) -> list[str]:
    """Fill a command template; raise `SetupError` for a malformed one."""
    try:
        text = template.format(
            host=host,
            port=port,
            python=shlex.quote(python),
            server_options=server_options,
            client_options=client_options,
        )
        return shlex.split(text)
    except (KeyError, IndexError, ValueError) as exc:
        raise SetupError(f"bad command template {template!r}: {exc}") from None


class Target:
    """The server under test (and the impairment proxy, if any) on ``network``.

    Resource handling: `stop` ends and reaps both processes; the run calls it whatever
    happened. Error handling: `start` raises `SetupError` with the server's exit status
    and stderr when it exits or is not ready in time.
    """

    node_count = 1  # servers the clients are spread over (a cluster has more)

    def __init__(
        self,
        network: Network,
        server_template: str,
        *,
        impair: str | None,
        timeout: float,
        server_options: Sequence[str] = (),
        readiness: Readiness | None = None,
        host: Host | None = None,
        label: str = "server",
    ) -> None:
        self.network = network
        # Where the server runs: the network's server host, or a cluster node's host.
        self.host = host or network.server
        self.label = label
        self.template = server_template
        self.server_options = list(server_options)
        # Whether the scenario's server options reached the server (its template has
        # the {server_options} placeholder): only then may it count on their effect.
        self.options_applied = bool(server_options) and "{server_options}" in server_template
        self.impair = impair
        self.timeout = timeout
        self.readiness = readiness or Readiness()
        self.server: Daemon | None = None
        self.proxy: Daemon | None = None
        self.ready = False  # the server was ready: a death from now on is a failed run
        self.port = 0  # the port the server listens on
        self.client_port = 0  # the port clients connect to (the proxy's, if any)

    @property
    def connect_address(self) -> str:
        if self.host is self.network.server:
            return self.network.connect_address
        return self.host.address

    def endpoint(self, index: int) -> tuple[int, str, int]:
        """Where client party number ``index`` connects: (node, address, port). One
        server is node 0 for everyone; a cluster spreads parties over its nodes."""
        return 0, self.connect_address, self.client_port

    def _accepts(self, port: int) -> bool:
        return self.network.accepts(port, self.connect_address)

    def cluster_info(self) -> dict[str, object] | None:
        """A cluster's nodes and store, for the report; None for one server."""
        return None

    def daemons(self) -> list[Daemon]:
        """Every process this target started (for the leftover check)."""
        return [d for d in (self.server, self.proxy) if d is not None]

    def stderr_lines(self) -> list[str]:
        """All the server said on stderr."""
        return self.server.stderr_lines() if self.server is not None else []

    def start(self) -> None:
        host = self.host
        listen = self.network.listen_address
        options = " ".join(shlex.quote(o) for o in self.server_options)
        deadline = time.monotonic() + min(self.timeout, START_TIMEOUT)
        for attempt in range(PORT_ATTEMPTS):
            port = self.network.pick_port()
            argv = expand(
                self.template, host=listen, port=port, python=host.python, server_options=options
            )
            self.server = Daemon(self.label, host.command(argv))
            try:
                self.server.start()
                self.port = self.server.wait_ready(self.readiness, port, self._accepts, deadline)
                break
            except DaemonError as exc:
                self.server.stop()
                # Another process (a parallel test worker) took the port in between.
                in_use = any("in use" in line for line in self.server.stderr_lines())
                if not in_use or attempt == PORT_ATTEMPTS - 1:
                    raise SetupError(str(exc)) from None
        self.ready = True
        self.client_port = self.port
        if self.impair:
            from harness.impair import launch

            try:
                self.proxy = launch(
                    host, listen, self.port, self.impair, "impairment proxy", deadline
                )
            except DaemonError as exc:
                raise SetupError(str(exc)) from None
            assert self.proxy.announced is not None
            self.client_port = self.proxy.announced[1]

    @property
    def ready_how(self) -> str:
        """How the server's readiness was established, for the report."""
        return self.server.ready_how if self.server is not None else ""

    def died(self) -> str:
        """How the server ended, if it has died on its own ("" while it runs, and for the
        end the harness gave it)."""
        return self.server.died() if self.server is not None else ""

    def stderr_excerpt(self) -> list[str]:
        """The server's stderr as a report shows it: its head and its tail."""
        return head_and_tail(self.server.stderr_lines()) if self.server is not None else []

    def children(self) -> list[int]:
        """Descendant pids of the server process (its workers, in a forking server)."""
        if self.server is None or not self.host.sees_processes:
            return []
        out: list[int] = []
        todo = [self.server.pid]
        while todo:
            kids = children_of(todo.pop())
            out.extend(kids)
            todo.extend(kids)
        return out

    def proxy_log(self, t0: float) -> list[tuple[float, str]] | None:
        """What the impairment proxy said on stderr (its resets), timed from ``t0``; None
        when no proxy is in the path. Complete once `stop` has returned."""
        if self.proxy is None:
            return None
        return self.proxy.stderr_since(t0)

    def stop(self) -> str:
        """Stop proxy and server; return how the server ended (its exit status).

        `died` then says whether it had already died before it was stopped."""
        if self.server is not None and not self.server.stopped:
            # Looked at first: ending the proxy (or waiting for it) must not hide a death.
            self.server.stopped = True
            self.server.died_before_stop = self.server.exit_status()
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.stop()
        if self.server is None:
            return ""
        return self.server.stop()
