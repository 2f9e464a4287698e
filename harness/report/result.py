"""The outcome of one scenario run, as every report format sees it."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.checks import FAIL, NOT_APPLICABLE, PASS, CheckResult, cause
from harness.transcript import RunRecord

STDERR_LINES = 20  # of the server's stderr, reports show this many from each end


@dataclass
class RunResult:
    scenario: str
    iteration: int  # 1-based, for --repeat
    record: RunRecord
    checks: list[CheckResult] = field(default_factory=list)
    server_exit: str = ""  # how the server ended when the harness stopped it
    server_stderr: str = ""  # all of it (reports show its head and tail)
    server_death: str = ""  # "the server died (...) during ...": the run's cause
    server_ready: str = ""  # how its readiness was established
    error: str = ""  # a setup error that prevented the run (exit code 2)

    @property
    def passed(self) -> bool:
        return not self.error and all(c.status != FAIL for c in self.checks)

    @property
    def cause(self) -> str:
        """The one failure that explains the others (the server's death, a connection
        reset, a room that never formed), if any."""
        return self.server_death or cause(self.checks, self.record)

    def stderr_excerpt(self) -> tuple[list[str], list[str], int]:
        """The server's stderr as reports show it: (head, tail, lines left out between)."""
        lines = self.server_stderr.splitlines()
        if len(lines) <= 2 * STDERR_LINES:
            return lines, [], 0
        return lines[:STDERR_LINES], lines[-STDERR_LINES:], len(lines) - 2 * STDERR_LINES

    def status_of(self, name: str) -> str:
        for c in self.checks:
            if c.name == name:
                return c.status
        return NOT_APPLICABLE

    def to_dict(self) -> dict[str, object]:
        rec = self.record
        head, tail, _ = self.stderr_excerpt()
        return {
            "scenario": self.scenario,
            "iteration": self.iteration,
            "seed": rec.seed,
            "passed": self.passed,
            "cause": self.cause,
            "error": self.error,
            "duration_s": round(rec.duration, 4),
            "network": rec.network,
            "server": {
                "command": rec.server_command,
                "ready": self.server_ready,
                "exit": self.server_exit,
                "died_during_run": rec.server_exit,
                "death": self.server_death,
                "stderr_lines": len(self.server_stderr.splitlines()),
                "stderr_head": "\n".join(head),
                "stderr_tail": "\n".join(tail),
            },
            "deliveries": rec.deliveries(),
            "checks": [
                {
                    "name": c.name,
                    "status": c.status,
                    "detail": c.detail,
                    "offender": c.offender,
                    "context": c.context,
                    **({"observed": c.observed} if c.observed else {}),
                }
                for c in self.checks
            ],
            "parties": {
                name: {
                    "where": log.where,
                    "command": log.command,
                    "sent": len(log.sent),
                    "received": len(log.received),
                    "damaged": len(log.damage),
                    "exit": log.exit_status,
                }
                for name, log in rec.parties.items()
            },
            "notes": rec.notes,
            "phases": [
                {
                    "name": ph.name,
                    "start": round(ph.start, 4),
                    "end": round(ph.end, 4),
                    "duration": round(ph.duration, 4),
                    "outcome": ph.outcome,
                }
                for ph in rec.phases
            ],
            "impair_log": (
                None
                if rec.impair_log is None
                else [{"t": round(t, 4), "line": line} for t, line in rec.impair_log]
            ),
        }


__all__ = ["FAIL", "NOT_APPLICABLE", "PASS", "RunResult"]
