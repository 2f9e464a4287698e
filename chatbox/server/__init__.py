"""The chat server: a hub process that routes lines, and a worker per client that reads.

The layout is the architecture (docs/architecture.md): `room` (names, routing, order;
no I/O), `hub` (the parent's loop and all output), `channel` (how a worker's lines and
notes reach the hub), `worker` (one client's input), `launcher` (fork or thread),
`forkserver` (the process fork mode's workers are forked from), and `__main__` (the
command line, `python -m chatbox.server`).
"""

from __future__ import annotations

from chatbox.server.channel import ChannelReader
from chatbox.server.hub import Hub, HubConfig
from chatbox.server.launcher import Launcher, make_launcher
from chatbox.server.room import Postbox, Room
from chatbox.server.worker import serve_connection


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
