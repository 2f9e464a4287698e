"""Argument types for the command lines: numbers checked where they are parsed.

A bad value becomes argparse's usage error (one line, exit 2), never a traceback later.
Shared by the server's, the client's and the harness's command lines.
"""

from __future__ import annotations

import argparse


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}: {value}")
    return value


def _finite(text: str, zero_allowed: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value >= 0 if zero_allowed else value > 0) or value == float("inf"):
        bound = "of at least 0" if zero_allowed else "above 0"
        raise argparse.ArgumentTypeError(f"must be a finite number {bound}: {value}")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    """A whole number of at least 0 (0 mostly meaning: no limit)."""
    return _whole(text, 0)


def positive_float(text: str) -> float:
    """A number above 0 (seconds, mostly)."""
    return _finite(text, zero_allowed=False)


def non_negative_float(text: str) -> float:
    """A number of at least 0 (seconds, mostly; 0 meaning: never)."""
    return _finite(text, zero_allowed=True)


def listening_port(text: str) -> int:
    """A TCP port to listen on: 0 asks the system for a free one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {value}")
    return value


def port(text: str) -> int:
    """A TCP port to connect to: 1 to 65535."""
    value = listening_port(text)
    if value == 0:
        raise argparse.ArgumentTypeError("port 0 cannot be connected to")
    return value
