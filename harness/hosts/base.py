"""What a host is: a place where the harness can start a process, and an address there.

A host never starts processes itself. Like pexpect's transports, a host kind only
decides *how* a command reaches its machine (directly, through `ip netns exec`, through
`ssh`); `harness.processes` starts the resulting local command, owns its process group and
lifeline, and reaps it. So a new kind of host is one small module over this base.

A `Network` is the set of hosts for one run: one for the server and one or more for the
clients, plus the addresses they use to reach each other.
"""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import TracebackType

from harness.daemon import Daemon, free_port

# Run on client host 0 by `Network.accepts`: exit 0 when the port takes a connection.
_PROBE = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)"


class HostError(Exception):
    """A host or network could not be set up; the message says why, in one line."""


class Host(abc.ABC):
    """One place to run processes.

    Attributes:
        kind: the host kind (``loopback``, ``netns``, ``ssh``).
        label: where this is, for reports (``loopback``, ``netns cbx12-c1``, ``bob@10.0.0.2``).
        address: the address other hosts of the same network reach this host at.
        python: the Python interpreter to name in argv for this host (ours for hosts on
            this machine; what the far side calls it, e.g. ``python3``, for ssh hosts).
    """

    kind: str
    label: str
    address: str
    python: str = sys.executable
    # Whether a process started here is a process of this machine, whose descendants
    # /proc shows (a forking server's workers); not through ssh.
    sees_processes: bool = True

    @abc.abstractmethod
    def command(self, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        """Return the local argv that runs ``argv`` on this host.

        ``tty`` says the process will be given a pseudo-terminal locally and needs one
        on the far side too (ssh's ``-tt``); local kinds ignore it.
        """

    def kill(self, daemon: Daemon) -> None:
        """End the process ``daemon`` runs here, and all its process group, with SIGKILL:
        a power loss (the failover scenario's). Here: the local process group."""
        if daemon.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGKILL)

    def describe(self) -> dict[str, str]:
        """Where processes on this host run, for the report."""
        return {"kind": self.kind, "host": self.label, "address": self.address}


class Network(abc.ABC):
    """The hosts of one run. Use as a context manager: leaving it removes everything it made.

    Resource handling: ``close`` must remove every namespace, link, key file or remote
    process the network created, and be safe to call twice; it also runs when the
    harness is killed, through the lifeline in ``harness.processes`` where the kind needs it.
    """

    kind: str
    server: Host
    clients: list[Host]

    def client_host(self, index: int) -> Host:
        """The host for client party number ``index`` (parties spread round-robin)."""
        return self.clients[index % len(self.clients)]

    def node_hosts(self) -> list[Host]:
        """The hosts for the nodes of a cluster under test, the server's first. Kinds that
        build no hosts of their own for them run every node on the server's host."""
        return [self.server]

    def node_host(self, index: int) -> Host:
        """The host for cluster node ``index`` (round-robin over `node_hosts`)."""
        hosts = self.node_hosts()
        return hosts[index % len(hosts)]

    def store_host(self) -> Host:
        """The host for the cluster's store (its redis-server): its own where the kind
        builds one, else the server's."""
        return self.server

    @property
    @abc.abstractmethod
    def listen_address(self) -> str:
        """The address the server binds to on its host."""

    @property
    @abc.abstractmethod
    def connect_address(self) -> str:
        """The address clients use to reach the server."""

    def round_trip_ms(self) -> float | None:
        """Measured round-trip time between a client host and the server host, if known."""
        return None

    def pick_port(self) -> int:
        """A port for the server to listen on: free on this machine, which is all that can
        be known here about another host (a port taken there is retried by the target)."""
        return free_port("")

    def accepts(self, port: int, address: str | None = None) -> bool:
        """Whether the server's port (at ``address``: a cluster node's; default the
        server's) accepts a connection from client host 0 (one connection, closed at
        once): the readiness probe for servers that announce nothing. Error handling: any
        failure to run the probe is a "no"."""
        host = self.client_host(0)
        target = address or self.connect_address
        argv = host.command([host.python, "-c", _PROBE, target, str(port)])
        try:
            done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    def netem(self, spec: str) -> str | None:
        """Impair the links themselves (``tc netem``); None once done, else why not (the
        caller then puts the TCP impairment proxy in front of the server)."""
        return f"{self.kind} links cannot be impaired with netem"

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "server": self.server.describe(),
            "clients": [h.describe() for h in self.clients],
            "connect_address": self.connect_address,
            "round_trip_ms": self.round_trip_ms(),
        }

    @abc.abstractmethod
    def close(self) -> None:
        """Remove everything this network created. Idempotent."""

    def __enter__(self) -> Network:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
