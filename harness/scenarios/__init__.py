"""Scenarios: one module per behaviour; `SCENARIOS` maps each name to its class.

Adding a scenario is one module with a `Scenario` subclass and one entry here.
"""

from __future__ import annotations

from harness.scenarios.bad_input import BadInput
from harness.scenarios.base import Context, Options, Scenario
from harness.scenarios.broadcast import Broadcast
from harness.scenarios.churn import Churn
from harness.scenarios.conversation import Conversation, ScriptError, parse_script
from harness.scenarios.crash import Crash
from harness.scenarios.duplex import Duplex
from harness.scenarios.failover import Failover
from harness.scenarios.slow_reader import SlowReader

SCENARIOS: dict[str, type[Scenario]] = {
    cls.name: cls
    for cls in (
        Duplex,
        Conversation,
        Broadcast,
        Churn,
        SlowReader,
        BadInput,
        Crash,
        Failover,
    )
}

__all__ = [
    "SCENARIOS",
    "Context",
    "Options",
    "Scenario",
    "ScriptError",
    "parse_script",
]
