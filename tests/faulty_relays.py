"""The faulty relays of `harness.selftest.relays`, for the harness's own tests.

``python tests/faulty_relays.py MODE PORT [--host HOST] [--every N]`` runs one (the same
as ``python -m harness.selftest.relays``); the relays live in the harness package so
that ``python -m harness.selftest`` works from an installed package. This module adds
the test helpers: `run_harness` runs ``python -m harness.run`` as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # run as a script from anywhere: the harness package is here

from harness.selftest.relays import (  # noqa: E402
    DIES_FIRST,
    DIES_LAST,
    DIES_LINES,
    MODES,
    client_cmd,
    main,
    relay_cmd,
)

__all__ = [
    "DIES_FIRST",
    "DIES_LAST",
    "DIES_LINES",
    "MODES",
    "ROOT",
    "Outcome",
    "client_cmd",
    "main",
    "relay_cmd",
    "run_harness",
]

if __name__ == "__main__":
    sys.exit(main())


# -- helpers for the harness's own tests (importable as `faulty_relays`) --------------


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    report: dict[str, Any]

    def statuses(self, run: int = 0) -> dict[str, str]:
        """check name -> status for one run of the JSON report."""
        return {c["name"]: c["status"] for c in self.report["runs"][run]["checks"]}

    def failed(self) -> set[str]:
        return {
            n
            for r in range(len(self.report["runs"]))
            for n, s in self.statuses(r).items()
            if s == "fail"
        }


def run_harness(tmp: str, *args: str, timeout: float = 150) -> Outcome:
    """Run ``python -m harness.run`` as a user would, with a JSON report to read back.

    Resource handling: the harness ends its own children; ``subprocess.run`` kills it on
    timeout (its lifeline then ends whatever it started).
    """
    report = os.path.join(tmp, f"report-{os.getpid()}-{time.monotonic_ns()}.json")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "harness.run", "--quiet", "--json", report, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )
    doc: dict[str, Any] = {}
    if os.path.exists(report):
        with open(report, encoding="utf-8") as f:
            doc = json.load(f)
    return Outcome(proc.returncode, proc.stdout, proc.stderr, doc)
