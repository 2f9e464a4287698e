"""The chat client: a full-duplex terminal (or pipe) client for any chat box.

The layout is the architecture (docs/architecture.md): `session` (the connection and how
it ends), `consoles` (where typed lines come from and received lines go, and which thread
gets the signals), `display` (how received text looks), `gnu_readline` (the ctypes
binding the terminal console drives), `completion` (Tab completion of commands and
names), and `__main__` (the command line, `python -m chatbox.client`).
"""

from __future__ import annotations

from chatbox.client.completion import Completer
from chatbox.client.consoles import Console, Hangup, LineConsole, ReadlineConsole, open_console
from chatbox.client.display import Style, visible
from chatbox.client.session import ConnectError, Session, connect


def main(argv: list[str] | None = None) -> int:
    """`chatbox-client PORT [IP]`: the process's exit status (0 quit, 1 failed, 2 usage)."""
    # Imported here, not at the top: `python -m chatbox.client` imports this package
    # first, and a `__main__` already imported by then would be run twice (runpy warns).
    from chatbox.client.__main__ import main as run

    return run(argv)


__all__ = [
    "Completer",
    "ConnectError",
    "Console",
    "Hangup",
    "LineConsole",
    "ReadlineConsole",
    "Session",
    "Style",
    "connect",
    "main",
    "open_console",
    "visible",
]
