"""Three real optimizer client processes (pycma, nevergrad, torch) share one server and get exactly
the results each gets alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import _start_server

COMMON = ["--epsilon", "4/255", "--preset", "ultrafast", "--train-clips", "4", "--holdout-clips", "8", "--seed", "3", "--no-progress"]
RUNS = {
    "cma": ["--optimizer", "cma", "--param", "lowres:7x7", "--popsize", "4", "--budget", "12"],
    "nevergrad": ["--optimizer", "nevergrad:TwoPointsDE", "--param", "lowres:7x7", "--popsize", "4", "--budget", "12"],
    "torch": ["--optimizer", "torch-ste", "--steps", "4", "--validate-every", "2", "--frames", "1", "--block", "8", "--lr", "0.3"],
}


def start_runs(target: str, folder, names=tuple(RUNS)) -> dict[str, subprocess.Popen]:
    return {
        name: subprocess.Popen(
            [sys.executable, "-m", "codecloop.cli", "optimize", "--target", target, *COMMON, *args, "--out", str(folder / name)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for name, args in RUNS.items()
        if name in names
    }


def finish(procs: dict[str, subprocess.Popen], folder) -> dict[str, list[dict]]:
    logs = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}:\n{out}"
        logs[name] = [json.loads(line) for line in (folder / name / "log.jsonl").read_text().splitlines()]
        logs[name].append(json.loads((folder / name / "summary.json").read_text())["holdout"])
    return logs


@pytest.fixture(scope="module")
def uncached_server():
    """A server without the result cache: a repeated evaluation really runs the codec again."""
    proc, target = _start_server(["--result-cache-entries", "0"])
    yield target
    proc.terminate()
    proc.wait(timeout=30)


def test_three_optimizer_processes_share_one_server(uncached_server, tmp_path):
    pytest.importorskip("torch")
    solo = {}
    for name in RUNS:  # each alone, one after the other
        solo |= finish(start_runs(uncached_server, tmp_path / "solo", (name,)), tmp_path / "solo")
    shared = finish(start_runs(uncached_server, tmp_path / "shared"), tmp_path / "shared")  # all three at once
    assert len(shared["cma"]) == len(shared["nevergrad"]) == 12 + 1 and len(shared["torch"]) == 5 + 1
    assert all("train_separation" in e for e in shared["torch"][:-1])  # the gradient back-end's own objective, per step
    for name in RUNS:
        assert shared[name] == solo[name], f"{name}: a shared run differs from its solo run"
