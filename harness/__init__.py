"""harness: launches real chat servers and clients and checks what they deliver.

Layers (docs/harness.md): `harness.run` (CLI) -> `harness.scenarios` (what to do) ->
`harness.checks` (what must hold) -> `harness.report` (what you see); scenarios drive
`harness.party` (a client in a pty), which `harness.processes` starts on a host from
`harness.hosts`; `harness.target` is the server under test.

Only the pure, process-free parts are re-exported here, so importing the package (as
every submodule import does) starts nothing and stays cheap.
"""

from harness.checks import CheckResult, run_checks
from harness.tokens import Token, scan
from harness.transcript import PartyLog, RunRecord

__all__ = ["CheckResult", "PartyLog", "RunRecord", "Token", "run_checks", "scan"]
