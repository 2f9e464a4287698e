"""A cluster under test: a real ``redis-server`` and N chatbox nodes that share one room.

``--cluster N`` makes the target a `ClusterTarget`: a redis-server on the network's store
host (its own namespace with ``--hosts netns``, else the server's host), started in a fresh
temporary folder on a port of its own, with persistence off and protected mode off but
bound to that host's address alone; then N servers, each on a node host, each started with
``--cluster redis://ADDR:PORT/0`` (through ``{server_options}``). Client parties are
spread over the nodes round-robin (party i connects to node i mod N), so every check that
compares receivers compares receivers on different servers.

A node killed on purpose (`kill_node`, the failover scenario) is not a death the run
fails on; any other node, or the store, dying is.

Resource handling: `stop` ends every node (SIGTERM, so they leave the room properly),
then the store, reaps them all and removes the store's folder, whatever happened; the
processes are registered with the lifeline, so a killed harness takes them along.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
import time
from collections.abc import Sequence

from harness.daemon import Daemon, DaemonError, Readiness, head_and_tail
from harness.hosts import Network
from harness.target import PORT_ATTEMPTS, START_TIMEOUT, SetupError, Target

STORE_READY = "Ready to accept connections"  # redis-server's line once it listens
REAP_TIMEOUT = 10.0
NO_REDIS = (
    "--cluster needs redis-server, which is not installed here "
    "(Debian: apt-get install redis-server)"
)


def store_argv(binary: str, address: str, port: int, folder: str) -> list[str]:
    """A redis-server that keeps nothing on disk, listens on ``address`` alone and logs to
    stdout. Protected mode would refuse the nodes (no password on a non-loopback address);
    the address is inside the run's own network, which nothing else can reach."""
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        address,
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        folder,
        "--logfile",
        "",
        "--daemonize",
        "no",
    ]


def _ready_or_gone(store: Daemon) -> bool:
    """Whether the store said it is ready, or has exited (call holding its ``cond``)."""
    return any(STORE_READY in line for line in store.stdout) or store.exit_status() != ""


def wait_store_ready(store: Daemon, deadline: float) -> list[str]:
    """Wait until a started redis-server says it is ready, exits, or the deadline passes;
    return all it said (ready when `STORE_READY` is among it and it still runs)."""
    with store.cond:
        store.cond.wait_for(
            functools.partial(_ready_or_gone, store),
            timeout=max(0.0, deadline - time.monotonic()),
        )
        return list(store.stdout) + list(store.stderr)


def store_ready(store: Daemon, said: list[str]) -> bool:
    return any(STORE_READY in line for line in said) and not store.exit_status()


class ClusterTarget(Target):
    """N chatbox nodes on one redis-server (see the module's docstring)."""

    def __init__(
        self,
        network: Network,
        server_template: str,
        *,
        nodes: int,
        lease: float,  # the nodes' --cluster-lease (default: `Options.cluster_lease`)
        impair: str | None,
        timeout: float,
        server_options: Sequence[str] = (),
        readiness: Readiness | None = None,
    ) -> None:
        super().__init__(
            network,
            server_template,
            impair=impair,
            timeout=timeout,
            server_options=server_options,
            readiness=readiness,
        )
        self.node_count = nodes
        self.lease = lease
        self.nodes: list[Target] = []
        self.killed: set[int] = set()  # nodes killed on purpose
        self.store: Daemon | None = None
        self.store_folder = ""
        self.url = ""

    # -- start ---------------------------------------------------------------------

    def start(self) -> None:
        if "{server_options}" not in self.template:
            raise SetupError(
                "--cluster needs a server command with {server_options} (where the nodes "
                "get --cluster URL)"
            )
        deadline = time.monotonic() + min(self.timeout, START_TIMEOUT)
        self._start_store(deadline)
        options = [
            *self.server_options,
            "--cluster",
            self.url,
            "--cluster-lease",
            f"{self.lease:g}",
        ]
        for index in range(self.node_count):
            node = Target(
                self.network,
                self.template,
                impair=self.impair,
                timeout=max(1.0, deadline - time.monotonic()),
                server_options=options,
                readiness=self.readiness,
                host=self.network.node_host(index),
                label=f"node {index}",
            )
            self.nodes.append(node)
            node.start()
        first = self.nodes[0]
        self.server, self.proxy = first.server, first.proxy
        self.port, self.client_port = first.port, first.client_port
        self.ready = True

    def _start_store(self, deadline: float) -> None:
        host = self.network.store_host()
        if host.sees_processes:  # this machine: a folder of our own, removed at the end
            binary = shutil.which("redis-server")
            if binary is None:
                raise SetupError(NO_REDIS)
            self.store_folder = tempfile.mkdtemp(prefix="chatbox-redis-")
            folder = self.store_folder
        else:
            # Another machine (ssh): its own redis-server, in /tmp; with persistence off
            # it writes nothing there.
            binary, folder = "redis-server", "/tmp"
        for attempt in range(PORT_ATTEMPTS):
            port = self.network.pick_port()
            store = Daemon(
                "redis-server", host.command(store_argv(binary, host.address, port, folder))
            )
            self.store = store
            try:
                store.start()
            except DaemonError as exc:
                raise SetupError(str(exc)) from None
            said = wait_store_ready(store, deadline)
            if store_ready(store, said):
                self.url = f"redis://{host.address}:{port}/0"
                return
            store.stop()
            # Another process (a parallel test) took the port in between: try another.
            if not any("in use" in line for line in said) or attempt == PORT_ATTEMPTS - 1:
                why = store.exit_status() or "not ready in time"
                tail = "\n".join(head_and_tail(said, 5)) or "(it said nothing)"
                raise SetupError(f"redis-server did not start ({why}); it said:\n{tail}")

    # -- what the run asks ---------------------------------------------------------

    def endpoint(self, index: int) -> tuple[int, str, int]:
        if not self.nodes:
            return super().endpoint(index)
        node = index % len(self.nodes)
        target = self.nodes[node]
        return node, target.connect_address, target.client_port

    @property
    def ready_how(self) -> str:
        if not self.nodes:
            return ""
        how = self.nodes[0].ready_how
        return f"{how}; {len(self.nodes)} nodes on redis-server at {self.url}"

    def cluster_info(self) -> dict[str, object]:
        """The nodes and the store, for the report (``network.cluster`` in the JSON)."""
        store = self.network.store_host()
        nodes = [
            {"node": i, "host": n.host.label, "address": n.connect_address, "port": n.client_port}
            for i, n in enumerate(self.nodes)
        ]
        return {"nodes": nodes, "url": self.url, "host": store.label, "lease": self.lease}

    def kill_node(self, index: int) -> None:
        """SIGKILL node ``index`` (its whole process group) and wait for it to end: a
        power loss, which the run does not count as a death."""
        self.killed.add(index)
        node = self.nodes[index]
        daemon = node.server
        if daemon is None or daemon.proc is None:
            return
        node.host.kill(daemon)
        with contextlib.suppress(Exception):
            daemon.proc.wait(REAP_TIMEOUT)

    def died(self) -> str:
        for index, node in enumerate(self.nodes):
            status = "" if index in self.killed else node.died()
            if status:
                return f"node {index} of {len(self.nodes)}: {status}"
        status = self.store.died() if self.store is not None else ""
        return f"redis-server: {status}" if status else ""

    def children(self) -> list[int]:
        return [pid for node in self.nodes for pid in node.children()]

    def daemons(self) -> list[Daemon]:
        out = [d for node in self.nodes for d in node.daemons()]
        return out + ([self.store] if self.store is not None else [])

    def stderr_lines(self) -> list[str]:
        lines = [
            f"[node {i}] {line}" for i, n in enumerate(self.nodes) for line in n.stderr_lines()
        ]
        if self.store is not None:
            lines += [f"[redis-server] {line}" for line in self.store.stdout + self.store.stderr]
        return lines

    def stderr_excerpt(self) -> list[str]:
        return head_and_tail(self.stderr_lines())

    def proxy_log(self, t0: float) -> list[tuple[float, str]] | None:
        logs = [n.proxy_log(t0) for n in self.nodes]
        if all(log is None for log in logs):
            return None
        merged = [(t, f"node {i}: {line}") for i, log in enumerate(logs) for t, line in log or []]
        return sorted(merged)

    def stop(self) -> str:
        """Stop every node, then the store; how each node ended, in one line."""
        statuses: list[str] = []
        try:
            for index, node in enumerate(self.nodes):
                statuses.append(f"node {index}: {node.stop() or 'not started'}")
        finally:
            if self.store is not None:
                self.store.stop()
            if self.store_folder:
                shutil.rmtree(self.store_folder, ignore_errors=True)
        return "; ".join(statuses)
