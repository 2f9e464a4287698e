"""Argument types for the command lines: numbers checked where they are parsed.

A bad value becomes argparse's usage error (one line, exit 2), never a traceback later.
Shared by the server's, the client's and the harness's command lines.
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number of at least 0 (0 mostly meaning: no limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0: {value}")
    return value


def positive_float(text: str) -> float:
    """A number above 0 (seconds, mostly)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0: {value}")
    return value


def non_negative_float(text: str) -> float:
    """A number of at least 0 (seconds, mostly; 0 meaning: never)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0: {value}")
    return value


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
