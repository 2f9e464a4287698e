"""Argument types for the harness's command lines: values checked where they are parsed.

A bad value becomes argparse's usage error (one line, exit 2), never a traceback later.
The harness has its own (it must test any chat server, and so imports nothing of the
chat box it ships with).
"""

from __future__ import annotations

import argparse

from harness.daemon import Readiness


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (seconds, mostly)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0: {value}")
    return value


def port(text: str) -> int:
    """A TCP port to connect to: 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {value}")
    return value


def readiness(text: str) -> Readiness:
    """``--ready``: ``auto``, ``line``, ``port`` or ``delay:SECONDS``."""
    try:
        return Readiness.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--ready ")) from None
