"""The netns host kind: a private test network of network namespaces on this machine.

Topology (a star, like hosts on one switch)::

    server ns (198.18.0.1) --veth--+
    client ns 0 (198.18.0.2) --veth--+-- bridge in its own namespace
    client ns 1 (198.18.0.3) --veth--+

Every veth is created directly inside the namespaces it joins, never in the machine's own
namespace, so deleting the namespaces deletes every link with them. Traffic stays inside
the namespaces this run made; addresses come from 198.18.0.0/15, the range reserved for
network test beds (RFC 2544), so they can never be somebody's real service.

Names: namespaces are ``cbx<pid>-<random>-<role>`` (unique per run and per xdist worker,
and recognisable in ``ip netns list``); interface names must fit the kernel's 15
characters, so they are ``cb`` + base36(pid) + 3 random hex + role.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Sequence
from typing import ClassVar

from harness.hosts.base import Host, HostError, Network
from harness.hosts.namespaces import Namespaces, candidate_modes, open_namespaces, run_checked
from harness.hosts.roundtrip import measure_round_trip_ms

# Client namespaces when the caller does not say: two already prove traffic between
# hosts and round-robin spreading; more cost a veth and ~10 ms each and prove nothing new.
DEFAULT_CLIENT_HOSTS = 2
MAX_CLIENT_HOSTS = 64  # keeps interface names within 15 characters (role "c63")
MAX_NODE_HOSTS = 9  # cluster nodes (roles "s", "s1" ... "s8")

ALLOWED_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
NAMESPACE_PREFIX = "cbx"


def process_prefix(pid: int | None = None) -> str:
    """The start of every namespace name a process gives its networks: ``cbx<pid>-``."""
    return f"{NAMESPACE_PREFIX}{os.getpid() if pid is None else pid}-"


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out


def check_subnet(text: str, hosts: int) -> ipaddress.IPv4Network:
    """Parse ``text`` as the test subnet and check it holds ``hosts`` addresses.

    Error handling: raises `HostError` for a bad network, one outside 198.18.0.0/15, or
    one too small.
    """
    try:
        subnet = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise HostError(f"bad --subnet {text!r}: {exc}") from None
    if not isinstance(subnet, ipaddress.IPv4Network) or not subnet.subnet_of(ALLOWED_RANGE):
        raise HostError(f"--subnet {text} must lie inside {ALLOWED_RANGE} (network test range)")
    if subnet.num_addresses - 2 < hosts:
        raise HostError(f"--subnet {text} is too small for {hosts} hosts")
    return subnet


class NetnsHost(Host):
    """A host that is a network namespace on this machine."""

    kind = "netns"

    def __init__(self, namespaces: Namespaces, namespace: str, interface: str, address: str):
        self._namespaces = namespaces
        self.namespace = namespace
        self.interface = interface
        self.label = f"netns {namespaces.label(namespace)}"
        self.address = address

    def command(self, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        # The pty (if any) is made locally by the caller and simply inherited: a namespace
        # changes the network, not the terminal.
        return [*self._namespaces.prefix(self.namespace), *argv]

    def describe(self) -> dict[str, str]:
        info = super().describe()
        info["namespace"] = self.namespace
        info["interface"] = self.interface
        return info


class NetnsNetwork(Network):
    """One server namespace and ``client_hosts`` client namespaces joined by a bridge.

    Resource handling: every namespace is recorded with the janitor before it exists;
    ``close`` (also on failure, Ctrl-C, or harness death via the janitor's pipe) kills any
    process left inside and deletes the namespaces, and with them every link.

    Error handling: raises `HostError` with the reason when the network cannot be built;
    whatever was already made is removed first.
    """

    kind = "netns"
    # Named (``ip netns``) networks this process has built: a leak check at the end of a
    # test session (`harness.pytest_plugin`) looks for ``cbx<pid>-`` names only if any.
    named_built: ClassVar[int] = 0

    def __init__(
        self,
        subnet: str = "198.18.0.0/24",
        client_hosts: int = DEFAULT_CLIENT_HOSTS,
        *,
        mode: str = "auto",
        node_hosts: int = 1,
        store_host: bool = False,
    ) -> None:
        if not 1 <= client_hosts <= MAX_CLIENT_HOSTS:
            raise HostError(f"netns client hosts must be 1-{MAX_CLIENT_HOSTS}, not {client_hosts}")
        if not 1 <= node_hosts <= MAX_NODE_HOSTS:
            raise HostError(f"netns server hosts must be 1-{MAX_NODE_HOSTS}, not {node_hosts}")
        # Roles: the server (cluster node 0), the other nodes, the store (Redis), clients.
        self.server_roles = ["s", *(f"s{i}" for i in range(1, node_hosts))]
        self.store_role = "r" if store_host else ""
        net = check_subnet(subnet, client_hosts + node_hosts + int(store_host))
        self.subnet = net
        pid = os.getpid()
        rand = secrets.token_hex(2)
        self.run_id = f"{process_prefix(pid)}{rand}"
        self.link_tag = f"cb{_base36(pid)}{rand[:3]}"
        self._rtt: float | None = None
        self._closed = False
        self.impaired_with = ""  # set by `netem`
        self.bridge_namespace = ""
        self.hosts: list[NetnsHost] = []  # server first, then the clients
        failures = []
        for candidate in candidate_modes(mode):
            try:
                self._open(candidate, net, client_hosts)
                return
            except HostError as exc:
                failures.append(f"{candidate}: {exc}")
        raise HostError(
            "netns needs root or unprivileged user namespaces; here " + "; ".join(failures)
        )

    def _open(self, mode: str, net: ipaddress.IPv4Network, client_hosts: int) -> None:
        """Build the whole network with one backend, or remove what it made and raise."""
        self.bridge_namespace = ""
        self.hosts = []
        self._closed = False
        self.namespaces = open_namespaces(mode)
        if mode == "named":
            NetnsNetwork.named_built += 1
        try:
            self._build(net, client_hosts)
        except BaseException:
            self.close_quietly()
            raise

    def _build(self, net: ipaddress.IPv4Network, client_hosts: int) -> None:
        ns = self.namespaces
        bridge_ns = f"{self.run_id}-br"
        bridge = f"{self.link_tag}br"
        extra = [self.store_role] if self.store_role else []
        roles = [*self.server_roles, *extra, *(f"c{i}" for i in range(client_hosts))]
        addresses = list(net.hosts())
        self.bridge_namespace = bridge_ns
        ns.create(bridge_ns)
        hosts = self.hosts
        for role, address in zip(roles, addresses, strict=False):
            name = f"{self.run_id}-{role}"
            ns.create(name)
            hosts.append(NetnsHost(ns, name, f"{self.link_tag}{role}", str(address)))
        bridge_cmds = [
            "link set lo up",
            f"link add {bridge} type bridge",
            f"link set {bridge} up",
        ]
        for host in hosts:
            port = f"{host.interface}p"
            bridge_cmds += [
                f"link add {port} type veth peer name {host.interface} "
                f"netns {ns.reference(host.namespace)}",
                f"link set {port} master {bridge}",
                f"link set {port} up",
            ]
        ns.ip_batch(bridge_ns, bridge_cmds)
        for host in hosts:
            ns.ip_batch(
                host.namespace,
                [
                    "link set lo up",
                    f"addr add {host.address}/{net.prefixlen} dev {host.interface}",
                    f"link set {host.interface} up",
                ],
            )
        servers = len(self.server_roles)
        self.server = hosts[0]
        self.nodes = list(hosts[:servers])
        self.store = hosts[servers] if self.store_role else self.server
        self.clients = list(hosts[servers + len(extra) :])

    def node_hosts(self) -> list[Host]:
        return list(self.nodes)

    def store_host(self) -> Host:
        return self.store

    @property
    def listen_address(self) -> str:
        # Every address of the server's own namespace: its veth (for the clients) and its
        # loopback (for an impairment proxy beside it). Nothing else can reach in there.
        return "0.0.0.0"

    @property
    def connect_address(self) -> str:
        return self.server.address

    @property
    def namespace_names(self) -> list[str]:
        """Every namespace of this run (bridge first)."""
        return [self.bridge_namespace, *(h.namespace for h in self.hosts)]

    def round_trip_ms(self) -> float | None:
        """Median TCP round trip (ms) between client host 0 and the server host, measured
        once with a one-byte echo between the two namespaces and then cached."""
        if self._rtt is None and not self._closed:
            self._rtt = measure_round_trip_ms(
                self.server, self.clients[0], bind=self.server.address, connect=self.connect_address
            )
        return self._rtt

    def netem(self, spec: str) -> str | None:
        """Impair the links themselves with ``tc netem`` (instead of the TCP proxy).

        ``spec`` is `harness.impair`'s (delay, jitter, bandwidth). netem runs on each host's
        own veth, on the way out, so each direction gets the delay once, as with the proxy.
        Returns None once applied, or why netem cannot do it here (no netem in this kernel,
        no ``tc``, or a toxic only the proxy has: slice, reset-after) - the caller then uses
        the proxy and reports which one it used.

        Error handling: never raises for an unusable netem; a malformed spec is a reason too.
        """
        from harness.impair import SpecError, parse_spec

        try:
            toxics = parse_spec(spec)
        except SpecError as exc:
            return str(exc)
        if toxics.slice is not None or toxics.reset_after is not None:
            return "slice and reset-after need the TCP proxy (netem works on packets)"
        args = ["netem"]
        if toxics.delay or toxics.jitter:
            args += ["delay", f"{toxics.delay * 1e6:.0f}us", f"{toxics.jitter * 1e6:.0f}us"]
        if toxics.rate is not None:
            args += ["rate", f"{toxics.rate * 8:.0f}bit"]
        for host in self.hosts:
            try:
                qdisc = ["tc", "qdisc", "replace", "dev", host.interface, "root", *args]
                run_checked(host.command(qdisc), what="tc netem")
            except HostError as exc:
                return str(exc)
        self._rtt = None  # the links changed: measure again
        self.impaired_with = f"netem {' '.join(args[1:])}".strip()
        return None

    def describe(self) -> dict[str, object]:
        info = super().describe()
        info["namespace_mode"] = self.namespaces.mode
        if self.impaired_with:
            info["link_impairment"] = self.impaired_with
        info["subnet"] = str(self.subnet)
        info["bridge_namespace"] = self.bridge_namespace
        if len(self.nodes) > 1:
            info["nodes"] = [h.describe() for h in self.nodes]
        if self.store_role:
            info["store"] = self.store.describe()
        return info

    def close(self) -> None:
        """Remove every namespace (and so every link) of this run. Idempotent.

        Error handling: raises `HostError` if the janitor reports something it could not
        remove (a real leak worth failing on).
        """
        if self._closed:
            return
        self._closed = True
        self.namespaces.close()

    def close_quietly(self) -> None:
        try:
            self.close()
        except HostError:
            pass
