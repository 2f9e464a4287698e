"""The janitor: a small anchor process that removes a run's namespaces when the harness ends.

Rules this module owns:

- The janitor itself creates every namespace, on request, recording it first. Creation
  and cleanup are thus serialised in one process: a harness killed in the middle of a
  request cannot leave a namespace that appears after the janitor has cleaned up.
- The janitor cleans up when its stdin reaches end-of-file. That happens when the harness
  closes the pipe (a normal ``close``) and equally when the harness dies, even by SIGKILL,
  because the kernel closes the harness's descriptors. So cleanup never depends on the
  harness running any code, and there is one cleanup path, not two.
- The janitor runs in its own session: a Ctrl-C on the harness's terminal or a signal to
  the harness's process group does not reach it before it has done its job.
- Processes still running inside a namespace at cleanup are SIGKILLed first: a process
  keeps a deleted namespace alive, so removing the name alone would leak the network.
  They can only be ours (nothing else runs inside a namespace this run made).

Two ways to hold a namespace:

- ``named`` (root): the janitor runs ``ip netns add NAME``, and ``ip netns delete`` at the end.
- ``held`` (no root): the janitor runs inside an unprivileged user namespace (started by
  ``unshare --user --map-root-user``) and holds each network namespace with a child
  ``unshare --net cat`` reading a pipe from the janitor. When the janitor ends, each
  ``cat`` reads end-of-file and exits, and the kernel frees the namespace.

Line protocol on stdin/stdout (one request, one reply):
``netns NAME`` -> ``ok`` (created); ``hold NAME`` -> ``held PID``; ``error ...`` if not.
At start the janitor prints ``ready``; after cleanup it prints ``clean`` (or
``unclean: REASON``, on stderr too).
This module imports only the standard library, so it runs under any interpreter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

# How long one `ip`/holder cleanup step may take before the janitor moves on; generous
# because a loaded CI box can be slow, bounded so a wedged `ip` cannot hang teardown.
STEP_TIMEOUT_S = 15.0


class _Stop(Exception):
    """SIGTERM/SIGHUP arrived: clean up now instead of waiting for end-of-file."""


@dataclass
class _Record:
    kind: str  # "netns" (named) or "held"
    name: str
    holder: subprocess.Popen[bytes] | None = None


@dataclass
class _Janitor:
    records: list[_Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def handle(self, line: str) -> str:
        verb, _, name = line.strip().partition(" ")
        if not name or any(c.isspace() or c == "/" for c in name):
            return f"error bad name {name!r}"
        if verb == "netns":
            self.records.append(_Record("netns", name))
            done = subprocess.run(
                ["ip", "netns", "add", name],
                capture_output=True,
                text=True,
                timeout=STEP_TIMEOUT_S,
                check=False,
            )
            if done.returncode != 0:
                # Not made by us (ip removes a half-made one): not ours to delete later.
                self.records.pop()
                lines = done.stderr.strip().splitlines()
                return f"error ip netns add {name}: {lines[0] if lines else done.returncode}"
            return "ok"
        if verb == "hold":
            try:
                # The pid is only a handle on the new namespace once unshare has made it:
                # the holder says so ("in") from inside, then becomes `cat` (same pid).
                holder = subprocess.Popen(
                    ["unshare", "--net", "--", "sh", "-c", "echo in && exec cat"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            except OSError as exc:
                return f"error cannot start unshare: {exc}"
            self.records.append(_Record("held", name, holder))
            assert holder.stdout is not None and holder.stderr is not None
            if holder.stdout.readline().strip() != b"in":
                why = holder.stderr.read().decode(errors="replace").strip()
                return f"error unshare --net failed: {why or 'no reason given'}"
            return f"held {holder.pid}"
        return f"error unknown request {verb!r}"

    def clean(self) -> None:
        for record in reversed(self.records):
            try:
                self._remove(record)
            except Exception as exc:  # keep going: one failure must not leak the rest
                self.problems.append(f"{record.name}: {exc}")
        self.records.clear()

    def _remove(self, record: _Record) -> None:
        if record.kind == "netns":
            path = Path("/run/netns") / record.name
            if not path.exists():
                return  # never created (creation failed) or already removed
            _empty(path)
            done = subprocess.run(
                ["ip", "netns", "delete", record.name],
                capture_output=True,
                text=True,
                timeout=STEP_TIMEOUT_S,
                check=False,
            )
            if done.returncode != 0 and path.exists():
                self.problems.append(f"ip netns delete {record.name}: {done.stderr.strip()}")
            return
        holder = record.holder
        assert holder is not None
        if holder.poll() is None:
            _empty(Path(f"/proc/{holder.pid}/ns/net"), spare=holder.pid)
        if holder.stdin is not None:
            holder.stdin.close()  # cat reads end-of-file and exits on its own
        try:
            holder.wait(timeout=STEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


# A process entering a namespace (`ip netns exec`, nsenter) while it is emptied is missed
# by one pass over /proc; passes repeat until one finds nobody, a few at most.
EMPTY_PASSES = 5


def _empty(ns_path: Path, *, spare: int | None = None) -> None:
    """Kill what runs in the namespace at ``ns_path`` until a pass finds nobody there."""
    for _ in range(EMPTY_PASSES):
        if not kill_namespace_processes(ns_path, spare=spare):
            return


def kill_namespace_processes(ns_path: Path, *, spare: int | None = None) -> list[int]:
    """SIGKILL every process whose network namespace is the one at ``ns_path``.

    Returns the pids it signalled. ``spare`` (a namespace's holder) is left alone.

    Error handling: processes that vanish meanwhile, or whose namespace cannot be read,
    are skipped; an unreadable ``ns_path`` means there is nothing to do.
    """
    try:
        target = os.stat(ns_path)
    except OSError:
        return []
    me = os.getpid()
    killed = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in (me, spare):
            continue
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def serve(stdin: IO[str], stdout: IO[str]) -> int:
    """Answer requests until end-of-file (or SIGTERM), then remove everything recorded."""
    janitor = _Janitor()
    try:
        print("ready", file=stdout, flush=True)
        for line in stdin:
            if line.strip():
                print(janitor.handle(line), file=stdout, flush=True)
    except (_Stop, OSError):
        pass
    finally:
        # Signals during cleanup would only cut it short: from here on, finish the job.
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        janitor.clean()
    if janitor.problems:
        reason = "; ".join(janitor.problems)
        print(f"janitor: could not remove {reason}", file=sys.stderr, flush=True)
        with contextlib.suppress(OSError):
            print(f"unclean: {reason}", file=stdout, flush=True)
        return 1
    with contextlib.suppress(OSError):
        print("clean", file=stdout, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # Ctrl-C belongs to the harness; the janitor learns of the harness's end from its pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    # A reply the harness never reads (it died) must not kill us with SIGPIPE mid-cleanup.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    return serve(sys.stdin, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
