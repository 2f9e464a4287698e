"""How received text looks on the client: made visible, then timestamped and coloured.

Received text is always made visible before it is shown (`visible`): the server already
replaces unsafe characters, but a client must not trust that (defence in depth: other
servers speak this protocol too). The rule is the protocol's, the one the server applies
(`protocol.UNSAFE`); so is the chat-line pattern that colours names.
`Style` turns a received block into display lines for a terminal, or bytes for a pipe.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from typing import BinaryIO, TextIO

from chatbox import protocol


def _show_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return "^" + chr(code + 0x40)  # ESC -> ^[, NUL -> ^@, as `cat -v` shows them
    if code == 0x7F:
        return "^?"
    return f"<U+{code:04X}>"


def visible(text: str) -> str:
    """TEXT with every unsafe character spelled out, so it cannot drive the terminal
    or make the line read otherwise than it is."""
    return protocol.UNSAFE.sub(_show_char, text)


# SGR colours, chosen to read on dark and light backgrounds alike.
_NAME_COLOURS = ("31", "32", "33", "34", "35", "36", "91", "92", "93", "94", "95", "96")
_RESET = "\x1b[0m"
_NOTICE = "\x1b[36m"
_ERROR = "\x1b[1;31m"
_PRIVATE = "\x1b[1;35m"
_DIM = "\x1b[2m"


def colour_wanted(stream: TextIO | BinaryIO, environ: dict[str, str] | os._Environ[str]) -> bool:
    """Colour only on a terminal, never when NO_COLOR is set (no-color.org), never on dumb."""
    if environ.get("NO_COLOR", ""):
        return False
    if environ.get("TERM", "") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Style:
    """Turns one received line into what the user sees: visible, timestamped, coloured."""

    def __init__(self, *, colour: bool, timestamps: bool) -> None:
        self.colour = colour
        self.timestamps = timestamps

    def block(self, data: bytes) -> list[str]:
        """Complete received lines (each ending in LF) as display lines, without LFs."""
        text = data.decode("utf-8", "replace")
        return [self.line(line) for line in text[:-1].split("\n")]

    def plain_block(self, data: bytes) -> bytes:
        """Complete received lines as bytes for a pipe, in one pass when nothing needs doing.

        The common case - printable ASCII, no timestamps, no colour - is the block itself;
        everything else goes line by line.
        """
        if self.timestamps or self.colour or data.translate(None, protocol.PLAIN_BYTES):
            return "".join(line + "\n" for line in self.block(data)).encode("utf-8", "replace")
        return data

    def line(self, text: str) -> str:
        text = visible(text.removesuffix("\r"))
        if self.colour:
            text = self._paint(text)
        if self.timestamps:
            stamp = time.strftime("%H:%M:%S")
            text = f"{_DIM}{stamp}{_RESET} {text}" if self.colour else f"{stamp} {text}"
        return text

    @staticmethod
    def name_colour(name: str) -> str:
        # crc32, not hash(): the same name gets the same colour in every run.
        return _NAME_COLOURS[zlib.crc32(name.lower().encode()) % len(_NAME_COLOURS)]

    def _paint(self, text: str) -> str:
        if text.startswith("* "):
            return f"{_NOTICE}{text}{_RESET}"
        if text.startswith("! "):
            return f"{_ERROR}{text}{_RESET}"
        match = protocol.CHAT_LINE.match(text)
        if match is None:
            return text
        private, name = match.group(1), match.group(2)
        head = f"{_PRIVATE}[private]{_RESET} " if private else ""
        body = text[match.end() :]
        return f"{head}<\x1b[1;{self.name_colour(name)}m{name}{_RESET}> {body}"
