"""The benchmark: chat servers measured side by side on loopback, as ratios.

``python -m harness.bench`` runs the same workloads (`workloads`) against each server
(`servers`): this project's server in fork and thread mode, the asyncio baseline in
benchmarks/, ncat --chat, any other through ``--server-cmd``. Raw sockets driven from
one selector loop (`loadgen`) make the load; every line carries a token (`ledger`) that
proves completeness and per-sender order while measuring; `report` prints figures,
ratios and targets, `plot` draws them.
"""

from harness.bench.ledger import Tally, verify
from harness.bench.servers import RunningServer, ServerError, ServerSpec, builtin_specs
from harness.bench.workloads import QUICK, WORKLOADS, Sizes, run

__all__ = [
    "QUICK",
    "WORKLOADS",
    "RunningServer",
    "ServerError",
    "ServerSpec",
    "Sizes",
    "Tally",
    "builtin_specs",
    "run",
    "verify",
]
