"""What the room benchmarks share: starting this project's server, percentiles, and the
side processes a phase runs beside the honest clients (a CPU-only hog, an attacker),
each started in its own session, awaited by its "going" line and ended by its pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.daemon import Daemon, Readiness

# A process that only spins, until SIGTERM or its deadline (argv[1], monotonic): beside
# an attacker's phase it tells the attacker's own CPU apart from what it does to the room.
HOG = """
import signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
until = float(sys.argv[1])
print("going", flush=True)
while not stop and time.monotonic() < until:
    pass
"""


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def start_server(mode: str, extra: tuple[str, ...]) -> Daemon:
    argv = [sys.executable, "-m", "chatbox.server", "0", "--host", "127.0.0.1"]
    daemon = Daemon(f"server-{mode}", [*argv, "--mode", mode, *extra])
    daemon.start()
    daemon.wait_ready(Readiness("line"), 0, lambda _: False, time.monotonic() + 30)
    return daemon


def start_side(script: str, args: list[str], nice: int = 0) -> subprocess.Popen[str]:
    """Start ``python -c script args...`` (at ``nice``) and wait for its "going" line."""
    process = subprocess.Popen(
        [*(["nice", "-n", str(nice)] if nice else []), sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    process.stdout.readline()
    return process


def end_side(process: subprocess.Popen[str]) -> str:
    """SIGTERM it by its pid, reap it, and return what it printed after "going"."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out
