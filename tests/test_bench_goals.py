"""The bench's goal lines: PASS, MISS by how much, and n/a with the reason (a reference
that was not built for want of a C compiler), judged on figures of one run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from harness.bench import report
from harness.bench.servers import NO_COMPILER, builtin_specs, prepare


def pingpong(p50: float, cpu: float) -> dict[str, Any]:
    return {"workloads": {"pingpong": {"valid": True, "rtt_p50_us": p50, "cpu_per_line_us": cpu}}}


def results(**servers: dict[str, Any]) -> dict[str, Any]:
    return {
        "baseline": "select",
        "references": {"python": "select", "c": "c"},
        "servers": servers,
    }


def by_target(judged: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {g["target"]: g for g in judged}


def test_goals_pass_within_the_limit_and_miss_by_how_much() -> None:
    run = results(
        select=pingpong(60.0, 20.0), fork=pingpong(72.0, 40.0), c={"skipped": NO_COMPILER}
    )
    judged = by_target(report.goals(run))
    p50 = judged["fork: ping-pong p50 <= 1.3x select"]
    assert p50["met"] is True and p50["value"] == 1.2
    assert p50["detail"] == "1.20x (1.08x inside the limit)"
    cpu = judged["fork: server CPU per relayed line <= 1.5x select"]
    assert cpu["met"] is False and cpu["value"] == 2.0
    assert cpu["detail"] == "2.00x (missed by 1.33x)"
    run["goals"] = report.goals(run)  # as the bench's command line does
    text = report.render(run)
    assert "  PASS goal 1 fork: ping-pong p50 <= 1.3x select: 1.20x" in text
    assert "  MISS goal 1 fork: server CPU per relayed line <= 1.5x select: 2.00x" in text


def test_goals_against_a_reference_not_built_say_why_and_judge_nothing() -> None:
    run = results(select=pingpong(60.0, 20.0), fork=pingpong(60.0, 20.0))
    run["servers"]["c"] = {"skipped": NO_COMPILER}
    judged = by_target(report.goals(run))
    fanout = judged["fork: fan-out (10) CPU per delivery <= 2x c"]
    assert fanout["met"] is None
    assert fanout["detail"] == "n/a: c: not built: no C compiler"
    run["goals"] = report.goals(run)
    text = report.render(run)
    assert "  n/a  goal 2 fork: fan-out (10) CPU per delivery <= 2x c: n/a: c: not built" in text
    assert "  c: skipped: not built: no C compiler" in text


def test_goals_of_an_invalid_run_are_not_judged() -> None:
    damaged = pingpong(30.0, 5.0)
    damaged["workloads"]["pingpong"]["valid"] = False
    run = results(select=pingpong(60.0, 20.0), fork=damaged)
    p50 = by_target(report.goals(run))["fork: ping-pong p50 <= 1.3x select"]
    assert p50["met"] is None and "fork has no valid figure" in p50["detail"]


def test_the_C_reference_is_not_built_without_a_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no cc, gcc or clang on it
    # The checkout's source: an installed harness (as tox runs it) has no examples/.
    source = Path(__file__).resolve().parents[1] / "examples" / "c_chatbox" / "server.c"
    spec, why = prepare(dataclasses.replace(builtin_specs()["c"], source=source), tmp_path)
    assert why == NO_COMPILER == "not built: no C compiler"
    assert spec.source is not None  # still a source, no binary to run
    assert not list(tmp_path.iterdir())
