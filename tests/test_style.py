"""Style and types hold without a reviewer: ruff and mypy as configured in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} missing in CI: the dev extra installs it")
        pytest.skip(f"{name} not installed")
    return path


def test_ruff():
    run = subprocess.run([_tool("ruff"), "check", "client", "server", "wire", "tests", "benchmarks", "scripts", "examples"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_wire_package_strict():
    run = subprocess.run([_tool("mypy"), "wire/codecloop_wire"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
