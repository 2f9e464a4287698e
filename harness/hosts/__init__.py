"""Where harness processes run: one module per host kind over `harness.hosts.base`."""

from harness.hosts.base import Host, HostError, Network
from harness.hosts.loopback import LoopbackHost, LoopbackNetwork

__all__ = ["Host", "HostError", "LoopbackHost", "LoopbackNetwork", "Network"]
