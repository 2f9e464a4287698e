"""What a test needs from this machine (a tool, root): without it the test is skipped with
the reason - and fails instead under CI (``CI=true``, which tox passes through), where a
missing tool is a broken test bed, not a reason to pass silently.

``needs(reason)`` is a mark (``reason`` None: nothing is missing); ``missing(reason)`` is
for a test that finds out while it runs. tests/conftest.py applies the marks.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

CI = os.environ.get("CI") == "true"


def missing(reason: str) -> NoReturn:
    """Skip this test for ``reason``; under CI, fail it."""
    if CI:
        pytest.fail(f"CI=true and this machine lacks what the test needs: {reason}", pytrace=False)
    pytest.skip(reason)


def needs(reason: str | None) -> pytest.MarkDecorator:
    """A mark: the test needs what ``reason`` says is missing (None: nothing is)."""
    return pytest.mark.needs(reason)
