"""chatbox: a TCP chat box whose server relays lines between any number of clients.

The layout is the architecture (docs/architecture.md): `protocol` (the wire rules,
sans-IO), `room` (names, routing, order), `hub` (the parent's loop and all output),
`worker` (one client's input), `launcher` (fork or thread), `server` (the command line);
`client`, `terminal` and `completion` make up the terminal client.
"""

from chatbox.hub import Hub, HubConfig
from chatbox.launcher import Launcher, make_launcher
from chatbox.protocol import LineDecoder, Lines, LineTooLong
from chatbox.room import Room
from chatbox.worker import serve_connection

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
