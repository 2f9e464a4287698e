"""harness: launches real chat servers and clients and checks what they deliver.

Layers (docs/architecture.md): `harness.run` (CLI) -> `harness.scenarios` (what to do)
-> `harness.checks` (what must hold) -> `harness.report` (what you see). A
`harness.session.Run` (used by the CLI and the pytest plugin) holds a run's network
(`harness.hosts`), its target (`harness.target`, the server under test) and its
scenario context; scenarios drive `harness.party` (a client in a pty). Servers are
started as `harness.daemon.Daemon`s, every child under `harness.processes`.

Only the pure, process-free parts are re-exported here, so importing the package (as
every submodule import does) starts nothing and stays cheap.
"""

from harness.checks import CheckResult, run_checks
from harness.tokens import Token, scan
from harness.transcript import PartyLog, RunRecord

__all__ = ["CheckResult", "PartyLog", "RunRecord", "Token", "run_checks", "scan"]
