"""benchmarks/abuse.py: a tiny real run reports every phase's figures, what happened to
the flooder and the stopped reader, and whether an honest chatter was cut off.

Nothing here asserts a speed (the benchmark measures that, as ratios); the flood limits
are made tiny so that the flooder's disconnection happens within a short phase.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "abuse.py"


def _abuse(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.parametrize("mode", ["fork", "thread"])
def test_abuse_reports_latency_the_flooder_and_the_stopped_reader(
    mode: str, tmp_path: Path
) -> None:
    out = tmp_path / "abuse.json"
    chatters = 3
    run = _abuse(
        "--modes", mode, "--chatters", str(chatters), "--rate", "4", "--seconds", "3",
        "--repeat", "1", "--phases", "abuse",
        "--server-args", "--flood-burst 0.1 --flood-timeout 0.5",
        "--json", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    phases = {row["phase"]: row for row in json.loads(out.read_text())}
    assert list(phases) == ["quiet", "abuse"]
    for row in phases.values():
        assert row["mode"] == mode
        assert row["lines"] > 0
        # Every honest line reached every other chatter once, or is counted missing.
        assert row["samples"] + row["missing"] == row["lines"] * (chatters - 1), row
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert isinstance(row["honest_cut_off"], list)
    abuse = phases["abuse"]
    assert abuse["stopped_readers"] >= 1
    (flooder,) = abuse["flooder"]
    assert flooder["lines"] > 0 and flooder["connections"] >= 1
    # Held to a burst of 0.1 s (50 lines), and over it for 0.5 s, it is told it is
    # flooding and cut off.
    assert flooder["flooding"] >= 1, flooder
    assert abuse["flood_lines_relayed"] > 0
    assert "goal (p99 <= 2x quiet, nobody cut): " in run.stdout
    assert f"{mode} abuse: flooder wrote" in run.stdout


def test_abuse_refuses_an_unknown_phase_in_one_line(tmp_path: Path) -> None:
    run = _abuse("--phases", "quiet,stampede", cwd=tmp_path)
    assert run.returncode == 2
    assert "unknown phase 'stampede'" in run.stderr
    assert "Traceback" not in run.stderr
