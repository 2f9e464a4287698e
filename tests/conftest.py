"""Test-session hooks: what a test `needs` (tests/needs.py) is checked before it runs."""

from __future__ import annotations

import pytest
from needs import missing


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        if mark.args and mark.args[0]:
            missing(str(mark.args[0]))
