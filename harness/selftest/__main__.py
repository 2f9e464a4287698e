"""`python -m harness.selftest`: run the fault matrix and print it (exit 1 if a fault
is missed or caught by other checks than expected)."""

from __future__ import annotations

import argparse
import sys

from harness.selftest.matrix import FAULTS, SCENARIOS, render, run_matrix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.selftest",
        description="Run every faulty relay against the scenarios with default options "
        "and show which checks caught each fault.",
    )
    parser.add_argument(
        "--scenario", action="append", choices=SCENARIOS, help="columns (default: all)"
    )
    parser.add_argument(
        "--fault", action="append", metavar="MODE", help="rows (default: every fault)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    args = parser.parse_args(argv)
    known = {f.mode for f in FAULTS}
    unknown = sorted(set(args.fault or ()) - known)
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    faults = [f for f in FAULTS if not args.fault or f.mode in args.fault]
    scenarios = args.scenario or list(SCENARIOS)
    cells = run_matrix(faults, scenarios, max(1, args.jobs))
    sys.stdout.write(render(cells, scenarios))
    return 0 if all(c.ok for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
