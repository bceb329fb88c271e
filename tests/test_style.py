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


STRICT_SERVER = ("engine", "evaluation", "jobs", "caches", "scoring", "render", "detector", "service", "lifecycle", "parse", "metrics",
                 "codecs", "convert", "transcode", "reference", "versions")  # fmt: skip
STRICT_CLIENT = ("runconfig", "backends", "gradient", "run", "runreport", "optimize", "runcheck", "rundir", "cli", "cli_optimize", "cliflags", "plots",
                 "epsilon", "leadchannel", "cli_epsilon")  # fmt: skip
STRICT = ["wire/codecloop_wire", *(f"server/codecloop_server/{m}.py" for m in STRICT_SERVER), *(f"client/codecloop/{m}.py" for m in STRICT_CLIENT)]


def test_mypy_strict_on_wire_and_engine():
    """pyproject.toml makes these modules strict (wire, engine, the client's run layer and CLI); the other modules are read for their types."""
    run = subprocess.run([_tool("mypy"), *STRICT], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
