"""`python -m harness.bench`: run every workload against every named server, side by side.

One run, on loopback: this project's server in fork and in thread mode, the asyncio
baseline from benchmarks/, the two references (a minimal Python select relay from
benchmarks/, and the C example relay built with ``cc -O2`` where a compiler exists),
ncat --chat where it is installed, and any other server named with ``--server-cmd``.
Prints the figures, the ratios against the baseline and against both references, the
targets and the goals; writes JSON (``--json``) and an SVG plot (``--plot``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.bench import plot, report
from harness.bench.cpu import TICK
from harness.bench.servers import (
    ServerError,
    ServerSpec,
    available,
    builtin_specs,
    parse_server_cmd,
    prepare,
)
from harness.bench.workloads import QUICK, WORKLOADS, Sizes, run

DEFAULT_SERVERS = ("fork", "thread", "asyncio", "select", "c", "ncat")
# Descriptors the bench needs besides one per client: stdio, pipes, the selector, imports.
FD_SPARE = 200


class UsageError(Exception):
    """A bad option; the message says which, in one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness.bench",
        description="Measure chat servers side by side on loopback: round trip, full-duplex "
        "and fan-out deliveries/s, and how many clients they hold. Every workload also "
        "checks that no line is lost, repeated, reordered or broken; a server that fails "
        "that gets INVALID instead of a figure.",
    )
    parser.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help=f"comma-separated built-in servers to measure (default {','.join(DEFAULT_SERVERS)};"
        " '' for none but --server-cmd ones)",
    )
    parser.add_argument(
        "--server-cmd",
        action="append",
        default=[],
        metavar="[NAME=]TEMPLATE",
        help="also measure the server this command starts; {host} and {port} are filled in "
        "(e.g. 'mine=./server --port {port}'); repeatable",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated workloads (default all: {','.join(WORKLOADS)}; 'fanout' = both)",
    )
    parser.add_argument(
        "--baseline",
        default="asyncio",
        help="the server ratios are computed against (default asyncio)",
    )
    parser.add_argument(
        "--python-ref",
        default="select",
        metavar="NAME",
        help="the minimal Python relay the single-line goals are judged against "
        "(default select: benchmarks/select_relay.py)",
    )
    parser.add_argument(
        "--c-ref",
        default="c",
        metavar="NAME",
        help="the C relay, the practical limit, the fan-out goals are judged against "
        "(default c: examples/c_chatbox/server.c built with cc -O2)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds, for tests)")
    parser.add_argument(
        "--ramp",
        type=int,
        metavar="N",
        help="ramp every server to N clients (default: "
        "1,000 for fork, ncat and --server-cmd servers, 5,000 for thread and asyncio)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run the short workloads N times, in rounds over all servers, and report the "
        "median (steadier ratios on a busy machine; default 1)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write all results as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE", help="write an SVG plot")
    return parser


def choose_servers(args: argparse.Namespace) -> list[ServerSpec]:
    builtins = builtin_specs()
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in builtins]
    if unknown:
        raise UsageError(f"unknown server {unknown[0]!r} (built in: {', '.join(builtins)})")
    specs = [builtins[n] for n in names]
    for index, text in enumerate(args.server_cmd, 1):
        try:
            spec = parse_server_cmd(text, index)
        except ServerError as exc:
            raise UsageError(str(exc)) from None
        if any(s.name == spec.name for s in specs):
            raise UsageError(f"two servers named {spec.name!r}")
        specs.append(spec)
    if not specs:
        raise UsageError("no server to measure")
    return specs


def choose_workloads(text: str) -> list[str]:
    chosen: list[str] = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        expanded = ["fanout10", "fanout100"] if name == "fanout" else [name]
        for item in expanded:
            if item not in WORKLOADS:
                raise UsageError(f"unknown workload {item!r} (choose from {', '.join(WORKLOADS)})")
            if item not in chosen:
                chosen.append(item)
    if not chosen:
        raise UsageError("no workload to run")
    return chosen


def raise_fd_limit(needed: int) -> tuple[int, str | None]:
    """Raise this process's soft RLIMIT_NOFILE towards ``needed`` (servers started from
    here inherit it). Returns the clients the limit allows and a warning if too few."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + FD_SPARE
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    allowed = soft - FD_SPARE
    if allowed >= needed:
        return needed, None
    return max(allowed, 2), (
        f"the descriptor limit (RLIMIT_NOFILE soft {soft}, hard {hard}) allows only "
        f"{max(allowed, 2)} of the {needed} clients the ramp needs: the ramp stops there. "
        "Raise it (ulimit -Hn, /etc/security/limits.conf) and run again."
    )


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
    }


# What a repeated workload is judged by: its median repetition is the one reported.
HEADLINE = {
    "pingpong": "rtt_p50_us",
    "duplex": "deliveries_per_s",
    "fanout10": "deliveries_per_s",
    "fanout100": "deliveries_per_s",
}


def measure(
    specs: list[ServerSpec],
    workloads: list[str],
    sizes: Sizes,
    baseline: str,
    repeat: int = 1,
    references: tuple[str, str] = ("select", "c"),
) -> dict[str, Any]:
    """Run every workload against every server.

    With ``repeat`` > 1 the short workloads run that many times, in rounds that go over
    every server in turn, so that a burst of load from elsewhere on the machine hits
    all servers alike rather than one; the median repetition is reported. The
    connection ramp, long and less sensitive to bursts, runs once.
    """
    results: dict[str, Any] = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "sizes": dataclasses.asdict(sizes),
        "baseline": baseline,
        "workloads": workloads,
        "repeat": repeat,
        "references": {"python": references[0], "c": references[1]},
        "servers": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        _measure(results, specs, workloads, sizes, repeat, Path(workdir))
    results["ratios"] = report.ratios(results)
    results["ratios_against"] = {
        name: report.ratios(results, name)
        for name in dict.fromkeys([baseline, *references])
        if name in results["servers"]
    }
    results["targets"] = report.targets(results)
    results["goals"] = report.goals(results)
    return results


def _measure(
    results: dict[str, Any],
    specs: list[ServerSpec],
    workloads: list[str],
    sizes: Sizes,
    repeat: int,
    workdir: Path,
) -> None:
    runnable = []
    for spec in specs:
        spec, why = prepare(spec, workdir)
        entry: dict[str, Any] = {"command": spec.template, "ramp": sizes.ramp or spec.ramp}
        if spec.nodes:
            entry["nodes"] = spec.nodes  # a cluster on a redis-server of its own
        results["servers"][spec.name] = entry
        why = why or available(spec)
        if why:
            entry["skipped"] = why
            _say(f"{spec.name}: skipped: {why}")
        else:
            entry["workloads"] = {}
            runnable.append(spec)
    tries: dict[tuple[str, str], list[dict[str, Any]]] = {}
    short = [w for w in workloads if w in HEADLINE]
    rounds = [(r, short) for r in range(repeat)] + [
        (0, [w for w in workloads if w not in HEADLINE])
    ]
    for number, names in rounds:
        for spec in runnable:
            for name in names:
                label = (
                    f" (round {number + 1} of {repeat})" if repeat > 1 and name in HEADLINE else ""
                )
                _say(f"{spec.name} {name}{label} ...", end="")
                result = run(name, spec, sizes)
                tries.setdefault((spec.name, name), []).append(result)
                verdict = (
                    "ok"
                    if result.get("valid")
                    else f"INVALID: {result.get('error') or result['tally']['summary']}"
                )
                _say(f" {result['seconds']:.1f} s, {verdict}", start=False)
    for spec in runnable:
        for name in workloads:
            results["servers"][spec.name]["workloads"][name] = _median(name, tries[spec.name, name])


def _median(name: str, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """The repetition to report: an INVALID one if any (damage once is damage), else
    the median by the workload's headline figure, with every repetition's figure."""
    if len(attempts) == 1:
        return attempts[0]
    for attempt in attempts:
        if not attempt.get("valid"):
            return attempt
    key = HEADLINE[name]
    ordered = sorted(attempts, key=lambda r: r.get(key) or 0)
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["repeats"] = [r.get(key) for r in attempts]
    # CPU is pooled over every repetition (total CPU over total lines): a tick's error
    # per process then weighs a third as much, and no repetition is picked twice.
    per = "line" if name == "pingpong" else "delivery"
    count = sum(r.get(f"cpu_per_{per}_count") or 0 for r in attempts)
    if count:
        seconds = sum(r.get("server_cpu_s") or 0.0 for r in attempts)
        chosen["cpu_repeats_us"] = [r.get(f"cpu_per_{per}_us") for r in attempts]
        chosen["server_cpu_s"] = round(seconds, 3)
        chosen[f"cpu_per_{per}_count"] = count
        chosen[f"cpu_per_{per}_us"] = round(1e6 * seconds / count, 4)
        chosen[f"cpu_tick_us_per_{per}"] = round(1e6 / TICK / count, 4)
    return chosen


def _say(text: str, end: str = "\n", start: bool = True) -> None:
    prefix = f"[{time.strftime('%H:%M:%S')}] " if start else ""
    print(prefix + text, end=end, file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        specs = choose_servers(args)
        workloads = choose_workloads(args.workloads)
        if args.ramp is not None and args.ramp < 2:
            raise UsageError("--ramp needs at least 2 clients")
        if args.repeat < 1:
            raise UsageError("--repeat needs at least 1")
    except UsageError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else Sizes()
    if args.ramp is not None:
        sizes = dataclasses.replace(sizes, ramp=args.ramp)
    most = max(sizes.ramp or spec.ramp for spec in specs) if "connections" in workloads else 100
    allowed, warning = raise_fd_limit(max(most, 100))
    if warning:
        print(f"bench: {warning}", file=sys.stderr)
        sizes = dataclasses.replace(sizes, ramp_cap=allowed)
    # SIGTERM ends the run like Ctrl-C does: through the context managers that stop
    # every server and close every socket.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = measure(
            specs, workloads, sizes, args.baseline, args.repeat, (args.python_ref, args.c_ref)
        )
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    results["fd_limit_warning"] = warning
    print(report.render(results))
    try:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
            print(f"\nJSON: {args.json}")
        if args.plot:
            args.plot.write_text(plot.svg(results))
            print(f"plot: {args.plot}")
    except OSError as exc:
        print(f"bench: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
