"""What `--history-file` costs the server per line, against the in-memory history.

    python benchmarks/history_cost.py [--lines N] [--per-turn N] [--rounds N]

Feeds the same chat blocks (``--per-turn`` one-line blocks per hub turn, as from that
many senders) through the single server's `History` in memory and with a SQLite file
in a temporary folder, in alternating rounds in this process, and reports the CPU time
per line of each (the writer thread's included: process time) and the hub's own time
per line (wall time of the calls the hub makes: `remember` and `end_turn`). Bounded:
--lines lines per round, a few rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from chatbox.server.history import History, SqliteStore


def one_round(lines: int, per_turn: int, folder: Path | None) -> tuple[float, float]:
    """(CPU µs per line, hub µs per line) for one pass."""
    store = SqliteStore(str(folder / "h.db")) if folder is not None else None
    history = History(store=store)
    if store is not None:
        store.start()
    block = b"<alice> " + b"x" * 60 + b"\n"
    cpu0 = time.process_time()
    hub = 0.0
    for _ in range(lines // per_turn):
        start = time.perf_counter()
        for _ in range(per_turn):
            history.remember(block)
        history.end_turn()
        hub += time.perf_counter() - start
    if store is not None:
        store.stop()  # the writer has written everything: its CPU is counted
    cpu = time.process_time() - cpu0
    return cpu / lines * 1e6, hub / lines * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--per-turn", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"memory": [], "file": []}
    for _ in range(args.rounds):
        results["memory"].append(one_round(args.lines, args.per_turn, None))
        with tempfile.TemporaryDirectory() as folder:
            results["file"].append(one_round(args.lines, args.per_turn, Path(folder)))
    print(f"{args.lines} lines, {args.per_turn} per turn, median of {args.rounds} rounds")
    base = statistics.median(cpu for cpu, _ in results["memory"])
    for name, runs in results.items():
        cpu = statistics.median(c for c, _ in runs)
        hub = statistics.median(h for _, h in runs)
        print(f"{name:<7} cpu/line {cpu:6.2f} us ({cpu / base:.2f}x)  hub/line {hub:6.2f} us")


if __name__ == "__main__":
    main()
