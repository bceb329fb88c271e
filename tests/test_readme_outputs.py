"""The README's example outputs are what the commands print today (scripts/readme_outputs.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_example_outputs_are_current(server_target):
    # the session server serves the built-in datasets with the defaults: the same answer as a private one
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_outputs.py"), "--check", "--target", server_target],
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr
