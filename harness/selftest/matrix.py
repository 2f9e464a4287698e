"""The selftest matrix: every fault against every scenario, and the checks that caught it.

Each cell is one real harness run (`python -m harness.run` as a user runs it, with the
DEFAULT options) against a relay of `harness.selftest.relays` - or, for a faulty client,
the correct relay with that client as ``--client-cmd``. A fault's own scenario (the one
that must catch it) must fail exactly its expected checks; a cell there that fails
nothing is MISSED. The correct relay and this project's server must pass everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from harness.selftest.relays import MODES, client_cmd, relay_cmd

SCENARIOS = ("duplex", "broadcast", "bad-input")
OURS = "ours"  # the row for this project's server with its own client
RUN_TIMEOUT = 180.0  # seconds for one harness run (trickle's --timeout is far below)


@dataclass(frozen=True)
class Fault:
    """A fault, the scenario that must catch it and exactly what it must fail."""

    mode: str
    scenario: str
    fails: frozenset[str]
    extra: tuple[str, ...] = ()  # options beyond the defaults, and why in `why`
    why: str = ""
    # Checks the fault fails in some runs only (timing), with the reason in `why`.
    may_also: frozenset[str] = frozenset()

    def judge(self, failed: set[str]) -> bool:
        """Whether ``failed`` is what this fault must fail (its own scenario)."""
        return self.fails <= failed <= self.fails | self.may_also

    def argv(self, scenario: str) -> list[str]:
        if self.mode == OURS:
            server: list[str] = []
        elif self.mode == "halfclient":
            server = ["--server-cmd", relay_cmd("ok"), "--client-cmd", client_cmd()]
        else:
            server = ["--server-cmd", relay_cmd(self.mode)]
        return ["--scenario", scenario, *server, *self.extra]


def _f(
    mode: str,
    scenario: str,
    *fails: str,
    extra: tuple[str, ...] = (),
    why: str = "",
    may_also: tuple[str, ...] = (),
) -> Fault:
    return Fault(mode, scenario, frozenset(fails), extra, why, frozenset(may_also))


# One row per fault. `extra` is empty unless the fault cannot end otherwise.
FAULTS: list[Fault] = [
    _f("ok", "duplex"),
    _f(OURS, "duplex"),
    _f("drop", "duplex", "no loss"),
    _f("duplicate", "duplex", "no duplicates"),
    _f("reorder", "duplex", "per-sender FIFO"),
    _f("simplex", "duplex", "no loss", "full duplex"),
    _f("halfduplex", "duplex", "full duplex"),
    _f("halfclient", "duplex", "full duplex"),
    _f(
        "chunkprefix",
        "duplex",
        "no loss",
        "payload intact",
        may_also=("one message per line",),
        why="a name glued after a token ('stray bytes') needs a read to end exactly "
        "between a token and its newline, which only some runs have",
    ),
    _f(
        "trickle",
        "duplex",
        "bounded time",
        "no loss",
        extra=("--timeout", "5"),
        why="it always makes progress: only the deadline ends it (default 60 s)",
    ),
    _f("echo", "duplex", "no echo"),
    _f("merge", "duplex", "one message per line"),
    _f("wrongname", "duplex", "right sender"),
    _f("split", "duplex", "no loss", "payload intact"),
    _f("truncate", "duplex", "no loss", "payload intact"),
    _f("crossorder", "broadcast", "same order at every receiver"),
    # Slow one way, not lossy: whichever way the room sync ended, nothing is lost.
    _f(
        "slowway",
        "duplex",
        "full duplex",
        why="a line held 3 s one way while the other way flows is what the full-duplex "
        "rule calls half duplex; nothing is lost",
    ),
    _f("dropclose", "broadcast", "no loss"),
    _f("nulswallow", "bad-input", "no loss"),
    # Correct, but a name first: passes with --join (without it the cause names --join).
    _f(
        "nickname",
        "duplex",
        extra=("--join", "{name}"),
        why="each client must send its name first; --join '{name}' sends it",
    ),
    # Faults of the server's life, not of relaying: the cause line names them.
    _f(
        "probedie",
        "duplex",
        why="it dies of a probe; the default readiness waits for its line and never probes",
    ),
    _f(
        "dies",
        "duplex",
        "server survived",
        "no loss",
        may_also=("full duplex",),
        why="what was sent after its death never arrives; duplex cannot be judged if it dies "
        "before the quiet phases",
    ),
]
assert {f.mode for f in FAULTS} - {OURS} == set(MODES), "every relay mode has a row"


@dataclass
class Cell:
    fault: Fault
    scenario: str
    code: int
    failed: set[str] = field(default_factory=set)
    error: str = ""

    @property
    def expected(self) -> frozenset[str] | None:
        """What this cell must fail, or None where it is not judged."""
        if self.fault.mode in ("ok", OURS):
            return frozenset()
        return self.fault.fails if self.scenario == self.fault.scenario else None

    @property
    def ok(self) -> bool:
        if self.error:
            return False
        if self.expected is None:
            return True
        if self.fault.mode in ("ok", OURS):
            return not self.failed
        return self.fault.judge(self.failed)

    def text(self) -> str:
        if self.error:
            return f"ERROR {self.error}"
        if self.failed:
            shown = ", ".join(sorted(self.failed))
        else:
            shown = "MISSED" if self.expected else "pass"
        return (
            shown
            if self.ok
            else f"{shown} (expected {', '.join(sorted(self.expected or ())) or 'pass'})"
        )


def run_cell(fault: Fault, scenario: str, root: str) -> Cell:
    """One harness run; its JSON report says which checks failed."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        argv = [sys.executable, "-m", "harness.run", "--quiet", "--json", report]
        try:
            proc = subprocess.run(
                [*argv, *fault.argv(scenario)],
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
                cwd=root,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Cell(fault, scenario, -1, error=f"no result within {RUN_TIMEOUT:g}s")
        if not os.path.exists(report):
            last = (proc.stderr.strip().splitlines() or ["no report"])[-1]
            return Cell(fault, scenario, proc.returncode, error=last[:80])
        with open(report, encoding="utf-8") as f:
            doc = json.load(f)
    failed = {c["name"] for run in doc["runs"] for c in run["checks"] if c["status"] == "fail"}
    return Cell(fault, scenario, proc.returncode, failed)


def run_matrix(faults: Sequence[Fault], scenarios: Sequence[str], jobs: int) -> list[Cell]:
    root = os.getcwd()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_cell, f, s, root) for f in faults for s in scenarios]
        return [fut.result() for fut in futures]


def render(cells: Sequence[Cell], scenarios: Sequence[str]) -> str:
    rows: dict[str, dict[str, Cell]] = {}
    for c in cells:
        rows.setdefault(c.fault.mode, {})[c.scenario] = c
    width = max(len(m) for m in rows) + 2
    cols = {s: max([len(s)] + [len(c.text()) for c in cells if c.scenario == s]) for s in scenarios}
    out = [f"{'fault':<{width}}" + "".join(f"| {s:<{cols[s]}} " for s in scenarios)]
    out.append("-" * len(out[0]))
    for mode, by in rows.items():
        line = f"{mode:<{width}}"
        for s in scenarios:
            c = by[s]
            mark = "*" if c.expected is not None and c.fault.mode not in ("ok", OURS) else " "
            line += f"|{mark}{c.text():<{cols[s]}} "
        out.append(line.rstrip())
    out.append("")
    out.append("* the scenario that must catch the fault (exactly those checks fail)")
    for f in {c.fault.mode: c.fault for c in cells}.values():
        if f.extra:
            out.append(f"{f.mode}: also {' '.join(f.extra)}: {f.why}")
        if f.may_also:
            out.append(f"{f.mode}: may also fail {', '.join(sorted(f.may_also))}: {f.why}")
    bad = [c for c in cells if not c.ok]
    out.append(
        "selftest: every fault caught as expected"
        if not bad
        else f"selftest: {len(bad)} cell(s) not as expected"
    )
    return "\n".join(out) + "\n"
