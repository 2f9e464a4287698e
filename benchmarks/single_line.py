"""The single line, measured finely: ping-pong round trip and server CPU per relayed line.

    python benchmarks/single_line.py [--rounds 5000] [--repeat 5] [--source old=DIR]
        SERVER [SERVER ...]

SERVER is ``select`` (the minimal relay, benchmarks/select_relay.py), ``hop`` (the same
relay with a forked reader per client: the fork-mode design and nothing else), ``c``
(the C example relay, built with ``cc -O2``), ``fork`` or ``thread`` (this checkout's
server), or ``NAME-fork`` / ``NAME-thread`` for the server in the tree given as
``--source NAME=DIR`` (a copy of another commit: ``git archive REV | tar -x -C DIR``).
The servers run one after the other in rounds, ``--repeat`` times; the medians and their
ratios against the first SERVER are printed.

The workload is `harness.bench`'s ping-pong, with its checks (a damaged run is INVALID).
What differs is the CPU figure: the bench reads /proc/PID/stat, counted in clock ticks
(10 ms: a 2,000-round ping-pong of the select relay is 7 ticks), while this reads each
task's /proc/PID/task/TID/schedstat, the scheduler's own run time in nanoseconds, of
the server and all its workers and threads, live at both ends of the timed window.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.bench.servers import RunningServer, ServerError, ServerSpec, builtin_specs, prepare
from harness.bench.workloads import Sizes, run_on

_HERE = Path(__file__).resolve().parent


def run_time(pids: list[int]) -> float:
    """Seconds the scheduler ran these processes' tasks (all threads), so far."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


class FineServer(RunningServer):
    """A running server whose CPU is read from schedstat, not in clock ticks."""

    def cpu_seconds(self) -> float:
        return run_time(self.pids())


def chat_server(name: str, tree: str | None, mode: str) -> ServerSpec:
    python = shlex.quote(sys.executable)
    # Run from the tree itself: `python -m` puts the working directory first on the
    # path, ahead of PYTHONPATH, so run from another checkout's root it would import
    # that checkout instead, and a comparison of two trees would measure one twice.
    folder = shlex.quote(tree or str(_HERE.parent))
    env = f"env -C {folder} PYTHONPATH={folder} "
    return ServerSpec(
        name,
        f"{env}{python} -m chatbox.server {{port}} --host {{host}} --max-clients 6000 "
        f"--flood-lines 0 --flood-bytes 0 --mode {mode}",
        1000,
        True,
    )


def spec_for(name: str, sources: dict[str, str], build: Path) -> ServerSpec:
    python = shlex.quote(sys.executable)
    if name == "hop":
        relay = shlex.quote(str(_HERE / "select_relay.py"))
        return ServerSpec(name, f"{python} {relay} {{port}} --host {{host}} --hop", 1000, True)
    if name in ("select", "c"):
        spec, why = prepare(builtin_specs()[name], build)
        if why:
            raise SystemExit(f"single_line: {name}: {why}")
        return spec
    if name in ("fork", "thread"):
        return chat_server(name, str(_HERE.parent), name)
    source, _, mode = name.rpartition("-")
    if source in sources and mode in ("fork", "thread"):
        return chat_server(name, sources[source], mode)
    raise SystemExit(f"single_line: unknown server {name!r} (see --help)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("servers", nargs="+", metavar="SERVER")
    parser.add_argument("--rounds", type=int, default=5000, help="round trips measured")
    parser.add_argument("--repeat", type=int, default=5, help="rounds over all servers")
    parser.add_argument(
        "--source", action="append", default=[], metavar="NAME=DIR", help="another tree"
    )
    args = parser.parse_args()
    sources = {}
    for item in args.source:
        name, _, folder = item.partition("=")
        if not name or not Path(folder, "chatbox", "server").is_dir():
            parser.error(f"--source {item!r}: want NAME=DIR, DIR a chatbox source tree")
        sources[name] = folder
    with tempfile.TemporaryDirectory(prefix="chatbox-single-line-") as build:
        specs = [spec_for(name, sources, Path(build)) for name in args.servers]
        figures: dict[str, list[tuple[float, float]]] = {spec.name: [] for spec in specs}
        sizes = Sizes(rounds=args.rounds)
        for round_ in range(1, args.repeat + 1):
            for spec in specs:
                try:
                    with FineServer(spec) as server:
                        result = run_on("pingpong", server, sizes)
                except ServerError as exc:
                    print(f"{spec.name}: {exc}", file=sys.stderr)
                    return 1
                load = os.getloadavg()[0]
                valid = bool(result.get("valid"))
                p50 = float(result.get("rtt_p50_us") or 0.0)
                cpu = float(result.get("cpu_per_line_us") or 0.0)
                print(
                    f"round {round_} {spec.name:14} p50 {p50:7.1f} us  CPU/line {cpu:6.2f} us"
                    f"  load {load:5.1f}  {'ok' if valid else 'INVALID: ' + str(result['error'])}",
                    flush=True,
                )
                if valid:
                    figures[spec.name].append((p50, cpu))
    base = figures[specs[0].name]
    if not base:
        print(f"{specs[0].name}: no valid round", file=sys.stderr)
        return 1
    base_p50 = statistics.median(p for p, _ in base)
    base_cpu = statistics.median(c for _, c in base)
    print(f"medians of the valid rounds, ratios against {specs[0].name}:")
    for name, values in figures.items():
        if not values:
            print(f"  {name:14} INVALID in every round")
            continue
        p50 = statistics.median(p for p, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(
            f"  {name:14} p50 {p50:7.1f} us ({p50 / base_p50:.2f}x)  "
            f"CPU/line {cpu:6.2f} us ({cpu / base_cpu:.2f}x)  [{len(values)} rounds]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
