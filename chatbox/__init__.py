"""chatbox: a TCP chat box whose server relays lines between any number of clients.

The layout is the architecture (docs/architecture.md): `protocol` (the wire rules,
sans-IO, shared by both sides), `server` (the hub, the room, the workers and their
channel, the command line) and `client` (the session, the consoles, the display).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatbox.protocol import LineDecoder, Lines, LineTooLong

if TYPE_CHECKING:
    from chatbox.server import Hub, HubConfig, Launcher, Room, make_launcher, serve_connection

# The server's names are imported when first asked for, not here: every client process
# imports this package, and loading the whole server made each client's start-up ~40%
# slower (a harness room of 500 starts 500 clients).
_SERVER_NAMES = frozenset(
    ("Hub", "HubConfig", "Launcher", "Room", "make_launcher", "serve_connection")
)


def __getattr__(name: str) -> object:
    if name in _SERVER_NAMES:
        import chatbox.server

        return getattr(chatbox.server, name)
    raise AttributeError(f"module 'chatbox' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "Hub",
    "HubConfig",
    "Launcher",
    "LineDecoder",
    "LineTooLong",
    "Lines",
    "Room",
    "make_launcher",
    "serve_connection",
]
