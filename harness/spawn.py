"""Start a process in a new session on a terminal, without holding the GIL while it starts.

`os.posix_spawn` holds the GIL until the child has exec'd: the parent is suspended
(vfork) while the child runs up to its ``execve``, and on a busy machine that child may
wait many milliseconds for a CPU. Starting a room of 100 parties from 64 threads, the
starters took turns at the GIL (17-19 ms each at a load average of 55, the pty readers
and every other harness thread stopped meanwhile). Calling the C library's
``posix_spawn`` through ctypes releases the GIL for the call, so the starts overlap: 100
such processes were spawned in 0.7-1.0 s instead of 3.0-3.2 s, same machine, same load.

The ctypes way is taken on Linux with the GNU C library (whose flag values it names);
anywhere else, or if a symbol is missing, `os.posix_spawn` does the same, GIL held.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping, Sequence

# glibc's <spawn.h>: the flags `os.posix_spawn(setsid=..., setsigmask=..., setsigdef=...)`
# sets as well.
POSIX_SPAWN_SETSIGDEF = 0x04
POSIX_SPAWN_SETSIGMASK = 0x08
POSIX_SPAWN_SETSID = 0x80
# Opaque C structures, given more room than glibc's (80, 336 and 128 bytes on x86-64).
FILE_ACTIONS_SIZE = 512
ATTR_SIZE = 1024
SIGSET_SIZE = 256


def _load() -> ctypes.CDLL | None:
    """The C library with every function the spawn needs typed, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        libc = ctypes.CDLL(None, use_errno=True)  # CDLL: the GIL is released in calls
        buf, intp, charp = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
        vector = ctypes.POINTER(ctypes.c_char_p)
        signatures: dict[str, list[type]] = {
            "posix_spawn_file_actions_init": [buf],
            "posix_spawn_file_actions_destroy": [buf],
            "posix_spawn_file_actions_addopen": [buf, intp, charp, intp, ctypes.c_uint],
            "posix_spawn_file_actions_adddup2": [buf, intp, intp],
            "posix_spawnattr_init": [buf],
            "posix_spawnattr_destroy": [buf],
            "posix_spawnattr_setflags": [buf, ctypes.c_short],
            "posix_spawnattr_setsigmask": [buf, buf],
            "posix_spawnattr_setsigdefault": [buf, buf],
            "sigemptyset": [buf],
            "sigaddset": [buf, intp],
            "posix_spawn": [ctypes.POINTER(ctypes.c_int), charp, buf, buf, vector, vector],
        }
        for name, argtypes in signatures.items():
            function = getattr(libc, name)
            function.argtypes = argtypes
            function.restype = ctypes.c_int
    except (OSError, ValueError, AttributeError):  # ValueError: no such confstr name
        return None
    return libc


_LIBC = _load()


def spawn_on_terminal(
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    terminal: str,
    default_signals: Sequence[int],
) -> int:
    """Start ``path`` with ``argv`` and ``env`` in a new session whose standard input,
    output and error are ``terminal`` (opened by name after ``setsid``, so it becomes the
    session's controlling terminal); no signal blocked, ``default_signals`` at their
    default action. Returns the pid.

    Error handling: `OSError` with the C library's reason (not found, not executable).
    """
    if _LIBC is None:
        return os.posix_spawn(
            path,
            list(argv),
            dict(env),
            setsid=True,
            setsigmask=(),
            setsigdef=tuple(default_signals),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, terminal, os.O_RDWR, 0),
                (os.POSIX_SPAWN_DUP2, 0, 1),
                (os.POSIX_SPAWN_DUP2, 0, 2),
            ],
        )
    libc = _LIBC
    actions = ctypes.create_string_buffer(FILE_ACTIONS_SIZE)
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    blocked = ctypes.create_string_buffer(SIGSET_SIZE)
    defaults = ctypes.create_string_buffer(SIGSET_SIZE)
    _check(libc.posix_spawn_file_actions_init(actions))
    try:
        _check(libc.posix_spawnattr_init(attr))
        try:
            _check(
                libc.posix_spawn_file_actions_addopen(
                    actions, 0, os.fsencode(terminal), os.O_RDWR, 0
                )
            )
            _check(libc.posix_spawn_file_actions_adddup2(actions, 0, 1))
            _check(libc.posix_spawn_file_actions_adddup2(actions, 0, 2))
            flags = POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
            _check(libc.posix_spawnattr_setflags(attr, flags))
            libc.sigemptyset(blocked)
            _check(libc.posix_spawnattr_setsigmask(attr, blocked))
            libc.sigemptyset(defaults)
            for signum in default_signals:
                libc.sigaddset(defaults, int(signum))
            _check(libc.posix_spawnattr_setsigdefault(attr, defaults))
            c_argv = _vector([os.fsencode(a) for a in argv])
            c_env = _vector([os.fsencode(f"{k}={v}") for k, v in env.items()])
            pid = ctypes.c_int()
            _check(
                libc.posix_spawn(ctypes.byref(pid), os.fsencode(path), actions, attr, c_argv, c_env)
            )
            return pid.value
        finally:
            libc.posix_spawnattr_destroy(attr)
    finally:
        libc.posix_spawn_file_actions_destroy(actions)


def _vector(items: list[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    """A NULL-terminated array of C strings (argv, envp)."""
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


def _check(error: int) -> None:
    """posix_spawn and its helpers return an error number, not -1 and errno."""
    if error:
        raise OSError(error, os.strerror(error))
