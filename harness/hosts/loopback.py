"""The loopback host kind: every process runs on this machine and talks over 127.0.0.1."""

from __future__ import annotations

from collections.abc import Sequence

from harness.hosts.base import Host, Network


class LoopbackHost(Host):
    kind = "loopback"

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.label = "loopback"
        self.address = address

    def command(self, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        return list(argv)


class LoopbackNetwork(Network):
    """Server and all clients on this machine; nothing to create or remove."""

    kind = "loopback"

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.server = LoopbackHost(address)
        self.clients = [self.server]

    @property
    def listen_address(self) -> str:
        return self.server.address

    @property
    def connect_address(self) -> str:
        return self.server.address

    def close(self) -> None:
        pass
