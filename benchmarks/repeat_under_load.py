"""Every scenario, many times, beside CPU hogs: does the harness ever give a false verdict?

    python benchmarks/repeat_under_load.py [--repeat 30] [--hogs 2] [--modes fork,thread]
                                           [--scenarios duplex,broadcast,...] [--json OUT]

Runs ``python -m harness.run --scenario S --repeat N`` against this project's server in
each ``--mode``, while ``--hogs`` CPU-bound processes compete for the cores, and prints a
table of runs passed per scenario and mode. A correct server must pass every run: any
failure is a false verdict (or a real race in the server) and its report is kept.

Not a CI test: it takes minutes and its point is the load. Bounded: each hog ends itself
after ``--hog-seconds`` and is ended by its pid when the script finishes, whatever
happens; each harness run has its own ``--timeout``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("duplex", "conversation", "broadcast", "churn", "slow-reader", "bad-input", "crash")
# As the harness's default server command: its parties stream at full speed from one
# address, so the per-address and per-client flood limits are off.
SERVER = (
    "{python} -m chatbox.server {port} --host {host} --mode MODE --max-per-ip 0 "
    "--connect-rate 0 --flood-lines 0 --flood-bytes 0 {server_options}"
)
HOG = "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\n" + (
    "while time.monotonic() < end: pass\n"
)


def start_hogs(count: int, seconds: float) -> list[subprocess.Popen[bytes]]:
    """CPU-bound processes that end by themselves after ``seconds``."""
    return [
        subprocess.Popen([sys.executable, "-c", HOG, str(seconds)], start_new_session=True)
        for _ in range(count)
    ]


def stop_hogs(hogs: list[subprocess.Popen[bytes]]) -> None:
    for hog in hogs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hog.pid, signal.SIGTERM)
    for hog in hogs:
        hog.wait()


def run_scenario(scenario: str, mode: str, repeat: int, out_dir: str) -> dict[str, Any]:
    """One ``harness.run --repeat`` as a user would; returns passed/runs and the report."""
    report = os.path.join(out_dir, f"{scenario}-{mode}.json")
    argv = [
        sys.executable,
        "-m",
        "harness.run",
        "--quiet",
        "--scenario",
        scenario,
        "--repeat",
        str(repeat),
        "--server-cmd",
        SERVER.replace("MODE", mode),
        "--json",
        report,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    wall = time.monotonic() - started
    runs: list[dict[str, Any]] = []
    if os.path.exists(report):
        with open(report, encoding="utf-8") as f:
            runs = json.load(f).get("runs", [])
    passed = sum(1 for r in runs if r.get("passed"))
    return {
        "scenario": scenario,
        "mode": mode,
        "exit": proc.returncode,
        "runs": len(runs),
        "passed": passed,
        "wall_s": round(wall, 1),
        "failed_checks": sorted(
            {str(c["name"]) for r in runs for c in r.get("checks", []) if c.get("status") == "fail"}
        ),
        "stdout_tail": proc.stdout[-2000:] if proc.returncode else "",
        "stderr_tail": proc.stderr[-2000:] if proc.returncode else "",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--hogs", type=int, default=2)
    parser.add_argument("--hog-seconds", type=float, default=3600.0)
    parser.add_argument("--modes", default="fork,thread")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    hogs = start_hogs(args.hogs, args.hog_seconds)
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="cbx-repeat-") as out_dir:
            for mode in args.modes.split(","):
                for scenario in args.scenarios.split(","):
                    result = run_scenario(scenario, mode, args.repeat, out_dir)
                    results.append(result)
                    failed = ", ".join(result["failed_checks"])
                    print(
                        f"{scenario:<13} {mode:<6} {result['passed']}/{result['runs']} passed "
                        f"(exit {result['exit']}, {result['wall_s']} s)"
                        + (f"  failed: {failed}" if failed else ""),
                        flush=True,
                    )
                    if result["exit"]:
                        print(result["stdout_tail"], result["stderr_tail"], sep="\n", flush=True)
    finally:
        stop_hogs(hogs)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"hogs": args.hogs, "repeat": args.repeat, "results": results}, f, indent=2)
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
