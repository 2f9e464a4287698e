"""A run's live parts: the network, the target, the context and the record, and their end.

`Run` is what both the command line (`harness.run`) and the pytest plugin stand on: it
opens the network of hosts, chooses how to impair it, starts the target, builds the
scenario's `Context`, and at the end ends every party, the proxy and the server, keeps
what they said, lists anything left running and closes the network - in that order,
whatever happened.

It also says what really happened to the server. How the server ended is looked at right
before the harness stops it; a server that died after it was ready is *the* cause of a
failed run (`death`), wherever it happened - while the parties were joining (which then
fails with "client exited before joining"), during the run, or while the parties left -
and is never a client's setup failure. A server that never became ready is a setup error
(`SetupError`, with its stderr).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence
from types import TracebackType

from harness.daemon import Readiness
from harness.hosts import HostError, Network, NetworkOptions, open_network
from harness.hosts.roundtrip import proxy_round_trip_ms
from harness.processes import wait_gone
from harness.scenarios.base import Context, Options
from harness.target import SetupError, Target
from harness.transcript import RunRecord

PROXY_NOTES = 10  # proxy stderr lines copied into the notes; the rest are in the artifacts


def signal_name(status: str) -> str:
    """``signal 6`` -> ``signal 6, SIGABRT``; anything else as it is."""
    kind, _, number = status.partition(" ")
    if kind == "signal" and number.isdigit():
        try:
            return f"{status}, {signal.Signals(int(number)).name}"
        except ValueError:
            return status
    return status


class Run:
    """One run of one scenario against one target on one network.

    Resource handling: `open` (or ``with``) creates; `close` ends every party, the proxy
    and the server, and removes the network - also when `open` failed half-way. Safe to
    call twice. Error handling: `open` raises `SetupError` for a network or a target that
    cannot be set up (a server that exits before it is ready, with its stderr).
    """

    def __init__(
        self,
        name: str,
        options: Options,
        server_template: str,
        *,
        network: NetworkOptions | None = None,
        impair: str | None = None,
        server_options: Sequence[str] = (),
        readiness: Readiness | None = None,
        record: RunRecord | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self.server_template = server_template
        self.network_options = network or NetworkOptions(
            kind="loopback",
            clients=options.clients,
            node_hosts=max(1, options.cluster_nodes),
            store_host=options.cluster_nodes > 0,
        )
        self.impair = impair
        self.server_options = list(server_options)
        self.readiness = readiness
        self.record = record or RunRecord(name, timeout=options.timeout, settle=options.settle)
        self.network: Network | None = None
        self.target: Target | None = None
        self.ctx: Context | None = None
        self.t0 = time.monotonic()
        self.death = ""  # "the server died (...) during ...": the run's cause, if any
        self.server_exit = ""  # how the server ended when the harness stopped it
        self.server_stderr: list[str] = []  # all of it
        self._closed = False

    @property
    def context(self) -> Context:
        assert self.ctx is not None, "the run is not open"
        return self.ctx

    def open(self) -> Context:
        """Network, impairment, target, context; return the context."""
        try:
            self.network = open_network(self.network_options)
        except HostError as exc:
            raise SetupError(str(exc)) from None
        network = self.network
        proxy_spec, impaired_by = self._choose_impairment(network)
        record = self.record
        record.network = dict(network.describe())
        record.network["impair"] = self.impair or ""
        record.network["impaired_by"] = impaired_by
        if self.options.cluster_nodes:
            from harness.cluster import ClusterTarget

            self.target = ClusterTarget(
                network,
                self.server_template,
                nodes=self.options.cluster_nodes,
                lease=self.options.cluster_lease,
                impair=proxy_spec,
                timeout=self.options.timeout,
                server_options=self.server_options,
                readiness=self.readiness,
            )
        else:
            self.target = Target(
                network,
                self.server_template,
                impair=proxy_spec,
                timeout=self.options.timeout,
                server_options=self.server_options,
                readiness=self.readiness,
            )
        self.target.start()
        record.network["ready"] = self.target.ready_how
        cluster = self.target.cluster_info()
        if cluster is not None:
            record.network["cluster"] = cluster
        if self.target.proxy is not None and proxy_spec:
            # The raw link's round trip says nothing of the proxy's toxics: time the path
            # the chat traffic takes too.
            record.network["round_trip_proxy_ms"] = proxy_round_trip_ms(network, proxy_spec)
        if self.target.server is not None:
            record.server_command = " ".join(self.target.server.argv)
        self.ctx = Context(self.name, self.options, network, self.target, record)
        return self.ctx

    def _choose_impairment(self, network: Network) -> tuple[str | None, str]:
        """Impair the links themselves where the host kind can (netem), else use the proxy.

        Returns the spec for the TCP proxy (None when it is not needed) and, for the
        report, what does the impairing.
        """
        if not self.impair:
            return None, ""
        reason = network.netem(self.impair)
        if reason is None:
            return None, "tc netem on the links"
        return self.impair, f"TCP proxy (harness.impair); not netem: {reason}"

    def server_died(self, during: str) -> bool:
        """Whether the server, once ready, has died; if so, name it as the run's cause."""
        target = self.target
        if self.death or target is None or not target.ready:
            return bool(self.death)
        status = target.died()
        if status:
            self.death = f"the server died ({signal_name(status)}) {during}"
            self.record.server_exit = status
        return bool(status)

    def close(self) -> None:
        """End everything in reverse order of creation and keep what it said."""
        if self._closed:
            return
        self._closed = True
        record = self.record
        try:
            if self.ctx is not None:
                record.duration = self.ctx.clock()
                self.server_died("during the run")
                self.ctx.close_all()
            if self.target is not None:
                self.server_exit = self.target.stop()
                self.server_died("while the parties were leaving")
                self.server_stderr = self.target.stderr_lines()
                self._note_proxy(self.target, self.ctx.t0 if self.ctx is not None else self.t0)
            record.leftovers = self._leftovers()
        finally:
            if self.network is not None:
                self.network.close()

    def _note_proxy(self, target: Target, t0: float) -> None:
        """Keep what the impairment proxy said (its resets) with the run, timed from t0."""
        record = self.record
        record.impair_log = target.proxy_log(t0)
        if not record.impair_log:
            return
        for t, line in record.impair_log[:PROXY_NOTES]:
            record.notes.append(f"impairment proxy at {t:.4f}s: {line}")
        if len(record.impair_log) > PROXY_NOTES:
            more = len(record.impair_log) - PROXY_NOTES
            record.notes.append(f"impairment proxy: {more} more line(s) (see --artifacts)")

    def _leftovers(self) -> list[str]:
        groups: dict[int, str] = {}
        if self.ctx is not None:
            groups.update({p.pid: f"party {n}" for n, p in self.ctx.parties.items() if p.pid})
        if self.target is not None:
            for daemon in self.target.daemons():
                if daemon.pid:
                    groups[daemon.pid] = daemon.label
        return [f"{groups[g]} (process group {g})" for g in wait_gone(list(groups))]

    def __enter__(self) -> Context:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
