"""benchmarks/single_line.py: ``--source NAME=DIR`` measures the server of that tree.

Run from a checkout's root, as its docstring shows, a server started with ``python -m``
finds the working directory's package first, ahead of PYTHONPATH: a comparison of two
trees then measured one tree twice. Nothing here asserts a speed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "single_line.py"


def test_single_line_runs_the_server_of_the_tree_given_as_source(tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(REPO / "chatbox", other / "chatbox", ignore=shutil.ignore_patterns("*.pyc"))
    # The other tree leaves a mark when its package is imported (only its server does).
    with open(other / "chatbox" / "__init__.py", "a") as init:
        init.write('\n(__import__("pathlib").Path(__file__).parents[1] / "imported").touch()\n')
    run = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--rounds", "20", "--repeat", "1"),
            *("--source", f"other={other}", "other-thread"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "other-thread" in run.stdout and " ok" in run.stdout, run.stdout
    assert (other / "imported").exists(), (
        "the server measured was this checkout's, not the other tree's"
    )
