"""Network namespace plumbing: create, enter and remove the namespaces of one run.

Two backends behind one small interface, chosen by what this machine allows:

- `NamedNamespaces` (root): ``ip netns add``; a process enters with ``ip netns exec NAME``.
  The namespaces are visible in ``ip netns list`` while the run lasts, for debugging.
- `HeldNamespaces` (no root): an unprivileged user namespace owned by the janitor, one
  network namespace per host held by a janitor child; a process enters with
  ``nsenter --target PID --user --net``. Needs ``unshare --user`` to be allowed.

Either way the janitor (`harness.hosts.janitor`) creates every namespace itself, after
recording it, so a run killed at any instant leaves nothing behind.
"""

from __future__ import annotations

import abc
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.hosts.base import HostError

# Waiting for the janitor's replies and for `ip`: generous for a loaded CI box, bounded so
# a wedged command becomes an error instead of a hung run.
COMMAND_TIMEOUT_S = 20.0

_REPO_ROOT = str(Path(__file__).resolve().parents[2])


def _janitor_env() -> dict[str, str]:
    # The janitor is `python -m harness.hosts.janitor`: make sure it imports this tree's
    # copy even when the harness runs from a checkout that is not installed.
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _REPO_ROOT if not path else f"{_REPO_ROOT}{os.pathsep}{path}"
    return env


class JanitorLink:
    """The harness's end of the janitor's pipe.

    Resource handling: ``close`` closes the pipe, which makes the janitor remove everything
    it recorded, and waits for it. If the harness dies, the kernel closes the pipe and the
    janitor does the same on its own.

    Error handling: a janitor that cannot start or answers with an error raises `HostError`.
    """

    def __init__(self, prefix: Sequence[str] = ()) -> None:
        argv = [*prefix, sys.executable, "-m", "harness.hosts.janitor"]
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_janitor_env(),
                start_new_session=True,  # out of reach of Ctrl-C and group kills
            )
        except OSError as exc:
            raise HostError(f"cannot start the namespace janitor: {exc}") from None
        self.pid = self.process.pid
        self.result: str | None = None
        first = self._read()
        if first != "ready":
            err = self._finish()
            raise HostError(f"namespace janitor failed to start: {err or first or 'no reply'}")

    def _read(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def request(self, line: str) -> str:
        """Send one request and return the reply; raises `HostError` on an error reply."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except OSError:
            raise HostError(f"namespace janitor is gone ({line})") from None
        reply = self._read()
        if not reply or reply.startswith("error"):
            why = reply.removeprefix("error").strip() or "no reply"
            raise HostError(f"namespace janitor could not do {line!r}: {why}")
        return reply

    def _finish(self) -> str:
        # communicate() closes our end of the pipe: that end-of-file is the janitor's cue.
        try:
            out, err = self.process.communicate(timeout=COMMAND_TIMEOUT_S * 3)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
        self.result = out.strip().splitlines()[-1] if out.strip() else ""
        return err.strip()

    def close(self) -> None:
        """Let the janitor clean up and wait for it. Idempotent."""
        if self.result is not None:
            return
        err = self._finish()
        if self.result != "clean":
            raise HostError(f"namespace cleanup incomplete: {err or self.result or 'no reply'}")


def run_checked(argv: Sequence[str], *, stdin: str | None = None, what: str = "") -> str:
    """Run a short local command (``ip`` and friends) and return its stdout.

    Error handling: a missing program, a non-zero exit or a timeout raises `HostError`
    naming the command and its first line of stderr.
    """
    label = what or " ".join(argv[:6])
    try:
        done = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise HostError(f"{argv[0]} is not installed (needed for {label})") from None
    except subprocess.TimeoutExpired:
        raise HostError(f"{label}: timed out after {COMMAND_TIMEOUT_S:.0f}s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise HostError(f"{label}: {lines[0] if lines else f'exit {done.returncode}'}")
    return done.stdout


class Namespaces(abc.ABC):
    """The network namespaces of one run, by name."""

    mode: str
    janitor: JanitorLink

    @abc.abstractmethod
    def create(self, name: str) -> None:
        """Create a network namespace (recorded with the janitor first)."""

    @abc.abstractmethod
    def prefix(self, name: str) -> list[str]:
        """The argv prefix that runs a program inside namespace ``name``."""

    @abc.abstractmethod
    def reference(self, name: str) -> str:
        """What ``ip link ... netns X`` accepts for namespace ``name``."""

    def label(self, name: str) -> str:
        return name

    def ip_batch(self, name: str, commands: Sequence[str]) -> None:
        """Run ``ip`` commands inside namespace ``name`` in one process (``ip -batch``)."""
        run_checked(
            [*self.prefix(name), "ip", "-batch", "-"],
            stdin="\n".join(commands) + "\n",
            what=f"ip in namespace {self.label(name)}",
        )

    def close(self) -> None:
        self.janitor.close()


class NamedNamespaces(Namespaces):
    """Root: named namespaces from ``ip netns``."""

    mode = "named"

    def __init__(self) -> None:
        self.janitor = JanitorLink()

    def create(self, name: str) -> None:
        self.janitor.request(f"netns {name}")  # the janitor runs `ip netns add`

    def prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", name]

    def reference(self, name: str) -> str:
        return name


class HeldNamespaces(Namespaces):
    """No root: namespaces held by the janitor's children inside a user namespace."""

    mode = "held"

    def __init__(self) -> None:
        self.janitor = JanitorLink(["unshare", "--user", "--map-root-user", "--net", "--"])
        self.pids: dict[str, int] = {}

    def create(self, name: str) -> None:
        reply = self.janitor.request(f"hold {name}")
        self.pids[name] = int(reply.split()[1])

    def prefix(self, name: str) -> list[str]:
        # --preserve-credentials: our own uid is the one mapped to uid 0 inside, so the
        # process is already root there (and may run `ip`); letting nsenter switch ids
        # would call setgroups, which an unprivileged user namespace forbids.
        return [
            "nsenter",
            f"--target={self.pids[name]}",
            "--user",
            "--net",
            "--preserve-credentials",
            "--",
        ]

    def reference(self, name: str) -> str:
        return str(self.pids[name])

    def label(self, name: str) -> str:
        return f"{name} (pid {self.pids.get(name, '?')})"


def _probe_unprivileged() -> str | None:
    """Why an unprivileged user+network namespace cannot be made here, or None if it can."""
    try:
        run_checked(
            ["unshare", "--user", "--map-root-user", "--net", "--", "true"],
            what="unshare --user --net",
        )
    except HostError as exc:
        return str(exc)
    return None


def candidate_modes(mode: str = "auto") -> list[str]:
    """The backends to try, best first: as root ``named`` and then ``held`` (root in a
    container may lack the mount rights ``ip netns`` needs, yet be allowed user
    namespaces); otherwise ``held`` only.

    Error handling: an unknown mode raises `HostError`.
    """
    if mode not in ("auto", "named", "held"):
        raise HostError(f"unknown namespace mode {mode!r} (auto, named or held)")
    if mode != "auto":
        return [mode]
    return ["named", "held"] if os.geteuid() == 0 else ["held"]


def open_namespaces(mode: str) -> Namespaces:
    """Start the backend ``mode`` (``named`` or ``held``).

    Error handling: raises `HostError` with the reason it cannot work here, e.g.
    ``unshare --user --net: unshare: ... Operation not permitted``.
    """
    if mode == "named":
        return NamedNamespaces()
    reason = _probe_unprivileged()
    if reason is not None:
        raise HostError(reason)
    return HeldNamespaces()


def list_named(prefix: str) -> list[str]:
    """Names from ``ip netns list`` that start with ``prefix`` (for leak checks)."""
    try:
        out = run_checked(["ip", "netns", "list"], what="ip netns list")
    except HostError:
        return []
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]
