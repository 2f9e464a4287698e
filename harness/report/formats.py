"""Machine-readable reports: ``--json FILE`` and ``--junit FILE`` (for CI systems).

JUnit: one test suite per scenario run, one test case per check; a failed check is a
``<failure>`` carrying the offending message and its transcript, an n/a check is
``<skipped>`` with the reason, as CI systems expect.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from harness.checks import FAIL, NOT_APPLICABLE
from harness.report.result import RunResult


def to_json(results: Sequence[RunResult], exit_code: int) -> str:
    failed = [r.iteration for r in results if not r.passed]
    doc = {
        "passed": not failed,
        "exit_code": exit_code,
        "runs": [r.to_dict() for r in results],
        "failed_runs": failed,
        "flaky": bool(failed) and len(failed) < len(results),
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def to_junit(results: Sequence[RunResult]) -> str:
    suites = ET.Element("testsuites", name="chatbox-harness")
    for r in results:
        failures = sum(1 for c in r.checks if c.status == FAIL)
        skipped = sum(1 for c in r.checks if c.status == NOT_APPLICABLE)
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=f"{r.scenario}[run {r.iteration}]",
            tests=str(len(r.checks) or 1),
            failures=str(failures),
            errors="1" if r.error else "0",
            skipped=str(skipped),
            time=f"{r.record.duration:.3f}",
        )
        if r.error:
            case = ET.SubElement(suite, "testcase", classname=f"harness.{r.scenario}", name="setup")
            ET.SubElement(case, "error", message=r.error).text = r.server_stderr
            continue
        for c in r.checks:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"harness.{r.scenario}",
                name=c.name,
                time=f"{r.record.duration:.3f}",
            )
            if c.observed:
                props = ET.SubElement(case, "properties")
                ET.SubElement(props, "property", name="observed", value=c.observed)
            if c.status == FAIL:
                failure = ET.SubElement(case, "failure", message=c.detail)
                failure.text = "\n".join([f"first offending message: {c.offender}", *c.context])
            elif c.status == NOT_APPLICABLE:
                ET.SubElement(case, "skipped", message=c.detail)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write(path: str, text: str) -> None:
    """Write a report file, creating its directory.

    Error handling: an OSError propagates; the runner turns it into one line, exit 2.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
