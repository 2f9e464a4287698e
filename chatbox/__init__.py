"""chatbox: a TCP chat box whose server relays lines between any number of clients.

The layout is the architecture (docs/architecture.md): `protocol` (the wire rules,
sans-IO, shared by both sides), `server` (the hub, the room, the workers and their
channel, the command line) and `client` (the session, the consoles, the display).
"""

from chatbox.protocol import LineDecoder, Lines, LineTooLong
from chatbox.server import Hub, HubConfig, Launcher, Room, make_launcher, serve_connection

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
