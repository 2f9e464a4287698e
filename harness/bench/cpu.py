"""The CPU a server has used: its process, every process it started (alive or ended),
each counted exactly once, to the nanosecond where the kernel allows.

Why not /proc/PID/stat alone: it counts in clock ticks (10 ms), truncated per process.
A fan-out window costs a server 10-50 ms in all, spread over a hub, a fork server and
a hundred workers, each of which then shows 0 or 1 tick: the figure was noise (a
worker that used 4 ms in a window showed none of it). So a live process is read from
its CPU clock (``clock_gettime`` on the process's clock id: all its threads, live or
ended, in ns), and only what its ended children used - the kernel adds it to the
parent's ``cutime``/``cstime`` when it reaps them, in ticks - comes from /proc/PID/stat:
one tick either way per parent, not per worker.

Exactly once: a process's own clock stops at its end, and its whole use moves to its
parent's reaped count when the parent reaps it. The tree is read children first, then
the parent; a child read alive and reaped before its parent was read would be in both,
so a child gone by the time the parent has been read is dropped (it is in the parent's
reaped count). What is left is a child reaped between the parent's read and that look:
two system calls wide.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(roots: Iterable[int]) -> float:
    """CPU seconds (user + system) used so far by ``roots`` and all their descendants,
    alive or ended (the ended ones reaped within the tree). Read before and after a
    window, the difference is what the window cost."""
    children = _children()
    return sum(_subtree(pid, children) or 0.0 for pid in roots)


def descendants(roots: Iterable[int]) -> list[int]:
    """``roots`` and every process below them, parents before children."""
    children = _children()
    tree, todo = [], list(roots)[::-1]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(reversed(children.get(pid, ())))
    return tree


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds used by process ``pid`` itself, all its threads (ns exact); None if
    it is gone (reaped)."""
    try:
        return time.clock_gettime(_cpu_clock(pid))
    except OSError:
        pass
    # No CPU clock to be had (another kernel, a pid namespace): the ticks.
    try:
        fields = _stat(pid)
    except (OSError, ValueError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def reaped_cpu_seconds(pid: int) -> float | None:
    """CPU seconds used by the ended children ``pid`` has reaped (and theirs), in
    clock ticks; None if it is gone."""
    try:
        fields = _stat(pid)
    except (OSError, ValueError, IndexError):
        return None
    return (int(fields[13]) + int(fields[14])) / TICK


def _subtree(pid: int, children: dict[int, list[int]]) -> float | None:
    """What ``pid`` and its descendants used; None if ``pid`` is gone."""
    below = [(child, _subtree(child, children)) for child in children.get(pid, ())]
    own = process_cpu_seconds(pid)
    reaped = reaped_cpu_seconds(pid)
    if own is None or reaped is None:
        return None  # gone: its use is in its parent's reaped count
    total = own + reaped
    for child, used in below:
        # Reaped since it was read: the parent's reaped count has it already.
        if used is not None and os.path.exists(f"/proc/{child}"):
            total += used
    return total


def _children() -> dict[int, list[int]]:
    """Each process's children, from every /proc/PID/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _stat(pid: int) -> list[bytes]:
    """The fields of /proc/PID/stat after the command name (field 3, the state, first)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()


def _cpu_clock(pid: int) -> int:
    """The clock id of process ``pid``'s CPU time (Linux's clock_getcpuclockid: the
    pid, inverted, shifted by 3, with CPUCLOCK_SCHED, process-wide)."""
    return ((~pid) << 3) | 2
