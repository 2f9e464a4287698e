"""The loopback host kind: every process runs on this machine and talks over 127.0.0.1."""

from __future__ import annotations

from collections.abc import Sequence

from harness.daemon import connectable, free_port
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
        self._rtt: float | None = None

    def round_trip_ms(self) -> float | None:
        """Loopback's TCP round trip, measured once like any other kind's (the baseline
        against which a namespace or ssh run's figure means something)."""
        if self._rtt is None:
            from harness.hosts.roundtrip import measure_round_trip_ms

            self._rtt = measure_round_trip_ms(
                self.server, self.server, bind=self.server.address, connect=self.server.address
            )
        return self._rtt

    def pick_port(self) -> int:
        return free_port(self.server.address)

    def accepts(self, port: int, address: str | None = None) -> bool:
        return connectable(address or self.server.address, port)

    @property
    def listen_address(self) -> str:
        return self.server.address

    @property
    def connect_address(self) -> str:
        return self.server.address

    def close(self) -> None:
        pass
