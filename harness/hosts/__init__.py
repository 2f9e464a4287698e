"""Where harness processes run: one module per host kind over `harness.hosts.base`.

`open_network` is the one switch point: the runner names a kind and gets a `Network`;
adding a kind means one module and one entry in `NETWORK_KINDS`. Kinds other than
loopback are imported only when asked for, so the base never depends on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from harness.hosts.base import Host, HostError, Network
from harness.hosts.loopback import LoopbackHost, LoopbackNetwork


@dataclass(kw_only=True)
class NetworkOptions:
    """What the user asked for on the command line (``--hosts`` and friends)."""

    clients: int  # how many client parties the run will start (its default: `Options`)
    kind: str = "loopback"
    server_host: str | None = None  # ssh: USER@HOST of the server
    client_hosts: list[str] = field(default_factory=list)  # ssh: USER@HOST per client host
    subnet: str = "198.18.0.0/24"  # netns: addresses for the test network
    ssh_options: list[str] = field(default_factory=list)  # ssh: extra -o options
    # netns: client namespaces; None = one per client party, at most 2 (enough to prove
    # traffic between hosts; parties are spread round-robin over them).
    client_namespaces: int | None = None
    netns_mode: str = "auto"  # netns: auto | named (root, ip netns) | held (unshare)
    # netns: hosts for cluster nodes (the server's is the first) and one for the store
    # (redis-server) of a cluster under test; other kinds run them on the server's host.
    node_hosts: int = 1
    store_host: bool = False
    node_destinations: list[str] = field(default_factory=list)  # ssh: USER@HOST per node
    ssh_port: int | None = None  # ssh: -p PORT for every host
    ssh_identity: str | None = None  # ssh: -i FILE (with IdentitiesOnly=yes)
    ssh_python: str = "python3"  # ssh: the interpreter on the far hosts
    # ssh: the address clients use for the server; None = the address the server's sshd
    # saw our connection arrive at.
    server_address: str | None = None


def _open_loopback(options: NetworkOptions) -> Network:
    return LoopbackNetwork()


def _open_netns(options: NetworkOptions) -> Network:
    from harness.hosts.netns import DEFAULT_CLIENT_HOSTS, NetnsNetwork

    count = options.client_namespaces
    if count is None:
        count = max(1, min(options.clients, DEFAULT_CLIENT_HOSTS))
    return NetnsNetwork(
        options.subnet,
        count,
        mode=options.netns_mode,
        node_hosts=options.node_hosts,
        store_host=options.store_host,
    )


def _open_ssh(options: NetworkOptions) -> Network:
    from harness.hosts.ssh import SshNetwork

    if not options.server_host:
        raise HostError("--hosts ssh needs --server-host USER@HOST")
    return SshNetwork(
        options.server_host,
        options.client_hosts,
        port=options.ssh_port,
        identity=options.ssh_identity,
        options=options.ssh_options,
        python=options.ssh_python,
        server_address=options.server_address,
        node_hosts=options.node_destinations,
    )


# kind -> factory. A new kind is one module and one entry here.
NETWORK_KINDS: dict[str, Callable[[NetworkOptions], Network]] = {
    "loopback": _open_loopback,
    "netns": _open_netns,
    "ssh": _open_ssh,
}


def open_network(options: NetworkOptions) -> Network:
    """Build the network of hosts for one run.

    Error handling: raises `HostError` with a one-line reason when the kind is unknown or
    cannot be set up here (no root, no sshd...); the caller reports it and exits 2.
    """
    try:
        factory = NETWORK_KINDS[options.kind]
    except KeyError:
        known = ", ".join(sorted(NETWORK_KINDS))
        raise HostError(f"unknown host kind {options.kind!r} (known: {known})") from None
    return factory(options)


__all__ = [
    "NETWORK_KINDS",
    "Host",
    "HostError",
    "LoopbackHost",
    "LoopbackNetwork",
    "Network",
    "NetworkOptions",
    "open_network",
]
