"""Bytecode for the harness's Python children when none may be written beside the sources.

With ``PYTHONDONTWRITEBYTECODE`` set (some CI systems and sandboxed shells set it), every
Python child compiles each of this project's modules from source every time it starts:
about a quarter of a client's start-up CPU (30 ms instead of 40 ms to its welcome, here),
and a room of 500 starts 500 clients. The children get a private cache instead
(``PYTHONPYCACHEPREFIX``: a directory of this harness process's own, removed when it
ends), so the first to import a module writes its bytecode there and the rest read it.
Nothing is written beside the sources, as the setting asked.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading

_lock = threading.Lock()
_cache: list[str] = []  # the cache directory, once made


def use_private_cache(env: dict[str, str]) -> None:
    """Point a child's environment at the private cache, if it says not to write
    bytecode and names no cache of its own; otherwise leave it as it is."""
    if not env.get("PYTHONDONTWRITEBYTECODE") or env.get("PYTHONPYCACHEPREFIX"):
        return
    del env["PYTHONDONTWRITEBYTECODE"]
    env["PYTHONPYCACHEPREFIX"] = cache_dir()


def cache_dir() -> str:
    """The private cache directory, made on first use (mode 0700)."""
    with _lock:
        if not _cache:
            _cache.append(tempfile.mkdtemp(prefix="chatbox-harness-pyc-"))
            atexit.register(remove_cache)
        return _cache[0]


def remove_cache() -> None:
    """Remove the cache (once every child has ended). Safe to call twice."""
    with _lock:
        while _cache:
            shutil.rmtree(_cache.pop(), ignore_errors=True)
