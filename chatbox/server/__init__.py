"""The chat server: a hub process that routes lines, and a worker per client that reads.

The layout is the architecture (docs/architecture.md): `room` (names, routing, order;
no I/O), `hub` (the parent's loop and all output), `channel` (how a worker's lines and
notes reach the hub), `worker` (one client's input), `launcher` (fork or thread),
`forkserver` (the process fork mode's workers are forked from), and `__main__` (the
command line, `python -m chatbox.server`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatbox.server.channel import ChannelReader
    from chatbox.server.hub import Hub, HubConfig
    from chatbox.server.launcher import Launcher, make_launcher
    from chatbox.server.room import Postbox, Room
    from chatbox.server.worker import serve_connection

# Imported when first asked for, not here: every module of the package imports this
# first, and the fork server (a fresh interpreter that runs the workers' modules alone)
# would otherwise load the hub, the history's sqlite3 and all - and every fork of it
# would cost that much more (docs/architecture.md, "The fork server").
_NAMES = {
    "ChannelReader": "chatbox.server.channel",
    "Hub": "chatbox.server.hub",
    "HubConfig": "chatbox.server.hub",
    "Launcher": "chatbox.server.launcher",
    "make_launcher": "chatbox.server.launcher",
    "Postbox": "chatbox.server.room",
    "Room": "chatbox.server.room",
    "serve_connection": "chatbox.server.worker",
}


def __getattr__(name: str) -> object:
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'chatbox.server' has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    """`chatbox-server [PORT] [options]`: the process's exit status."""
    # Imported here, not at the top: `python -m chatbox.server` imports this package
    # first, and a `__main__` already imported by then would be run twice (runpy warns).
    from chatbox.server.__main__ import main as run

    return run(argv)


__all__ = [
    "ChannelReader",
    "Hub",
    "HubConfig",
    "Launcher",
    "Postbox",
    "Room",
    "main",
    "make_launcher",
    "serve_connection",
]
