"""Where harness processes run: one module per host kind over `harness.hosts.base`.

`open_network` is the one switch point: the runner names a kind and gets a `Network`;
adding a kind means one module and one entry in `NETWORK_KINDS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.hosts.base import Host, HostError, Network
from harness.hosts.loopback import LoopbackHost, LoopbackNetwork


@dataclass
class NetworkOptions:
    """What the user asked for on the command line (``--hosts`` and friends)."""

    kind: str = "loopback"
    clients: int = 2  # how many client parties the run will start
    server_host: str | None = None  # ssh: USER@HOST of the server
    client_hosts: list[str] = field(default_factory=list)  # ssh: USER@HOST per client host
    subnet: str = "198.18.0.0/24"  # netns: addresses for the test network
    ssh_options: list[str] = field(default_factory=list)  # ssh: extra -o options


def _open_loopback(options: NetworkOptions) -> Network:
    return LoopbackNetwork()


# kind -> factory. Other kinds register here from their own modules.
NETWORK_KINDS = {"loopback": _open_loopback}


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
