"""Process control: nothing the harness starts outlives it, even when it is kill -9'd."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from faulty_relays import ROOT

from harness.processes import child_env, end_group, group_alive, wait_until


def descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            kids = []
        out.update(kids)
        todo.extend(kids)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_nothing_outlives_a_harness_killed_with_sigkill() -> None:
    harness = subprocess.Popen(
        [sys.executable, "-m", "harness.run", "--scenario", "broadcast", "--clients", "3",
         "--messages", "100000", "--timeout", "60", "--quiet"],
        cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # watchdog + server + 3 clients (+ their children) must be running.
        assert wait_until(lambda: len(descendants(harness.pid)) >= 5, timeout=30)
        started = descendants(harness.pid)
        harness.kill()
        harness.wait()
        assert wait_until(lambda: not any(alive(p) for p in started), timeout=15), [
            p for p in started if alive(p)
        ]
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()


def test_end_group_escalates_to_sigkill_for_a_process_ignoring_sigterm() -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        end_group(proc.pid, lambda: proc.poll() is not None, grace=0.5)
        assert proc.returncode == -signal.SIGKILL
        assert not group_alive(proc.pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_children_get_unbuffered_python_even_if_the_caller_did_not_ask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    probe = [sys.executable, "-c", "import sys; print(int(sys.stdout.write_through))"]
    plain = subprocess.run(probe, capture_output=True, text=True, check=True)
    ours = subprocess.run(probe, env=child_env(), capture_output=True, text=True, check=True)
    assert plain.stdout.strip() == "0"  # the control: a pipe is block-buffered by default
    assert ours.stdout.strip() == "1"


def test_python_children_told_not_to_write_bytecode_share_a_private_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With PYTHONDONTWRITEBYTECODE set, a module a child imports is compiled once into
    the harness's own cache (the next child reads it), never beside its source."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    (tmp_path / "probe_module.py").write_text("VALUE = 42\n")
    probe = [
        sys.executable,
        "-c",
        "import sys, probe_module; print(probe_module.VALUE, sys.flags.dont_write_bytecode)",
    ]
    env = child_env({"PYTHONPATH": str(tmp_path)})
    out = subprocess.run(probe, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["42", "0"]
    cache = Path(env["PYTHONPYCACHEPREFIX"])
    compiled = list(cache.rglob("probe_module.*.pyc"))
    assert compiled, f"nothing compiled into {cache}"
    assert not (tmp_path / "__pycache__").exists()  # nothing beside the source
    # A caller that names its own cache keeps it.
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(tmp_path / "own"))
    assert child_env()["PYTHONPYCACHEPREFIX"] == str(tmp_path / "own")
