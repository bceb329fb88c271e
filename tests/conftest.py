"""Shared fixtures: a real ``codecloop serve`` process on a free loopback port."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import codecloop

SERVER_LINES: dict[str, list[str]] = {}  # target -> what that server printed


def _start_server(extra: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "codecloop.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "2", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a test can kill -9 the server with its workers
    )
    deadline = time.monotonic() + 300  # first run generates the embedded corpus (about 15 s)
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on ([\d.]+):(\d+)", line)
        if m:
            target = f"{m.group(1)}:{m.group(2)}"
            SERVER_LINES[target] = lines
            # keep draining its log: a full pipe would block the server on its next log line
            threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
            return proc, target
    proc.kill()
    raise RuntimeError("server did not start:\n" + "".join(lines))


@pytest.fixture(scope="session")
def server_target(tmp_path_factory) -> str:
    """Target of a server with the built-in corpora plus a folder dataset ``tiny`` (two .npy sources)."""
    folder = tmp_path_factory.mktemp("tiny")
    clips = np.random.default_rng(7).integers(0, 256, (4, 8, 32, 48, 3), dtype=np.uint8)
    np.save(folder / "a.npy", clips[:3])  # two sources: the holdout is by source (b.npy)
    np.save(folder / "b.npy", clips[3:])
    keyless = folder / "keyless.pt"
    save_keyless_detector(keyless)
    proc, target = _start_server(
        ["--dataset", f"tiny={folder}", "--metrics-port", "0", "--detector", "example=example", "--detector", f"keyless={keyless}",
         "--detector-device", "cpu", "--max-batch-size", "8", "--max-queue-delay-us", "20000"]
    )  # fmt: skip
    yield target
    died = proc.poll()
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    if died is not None:  # it should have served the whole session: show why it did not
        pytest.fail(f"the session server exited early with code {died}; its last lines:\n" + "".join(SERVER_LINES[target][-60:]))


@pytest.fixture()
def metrics_url(server_target: str) -> str:
    """The session server's Prometheus endpoint."""
    return next(m.group(1) for line in SERVER_LINES[server_target] if (m := re.search(r"metrics on (\S+)", line)))


@pytest.fixture()
def client(server_target: str):
    with codecloop.Client(server_target, timeout=300) as c:
        yield c


def save_keyless_detector(path) -> None:
    """A detector that takes clips only: the mean absolute vertical gradient of each clip."""
    import torch

    class Keyless(torch.nn.Module):
        def forward(self, clips: torch.Tensor) -> torch.Tensor:
            return (clips[:, :, 1:] - clips[:, :, :-1]).abs().mean(dim=(1, 2, 3, 4))

    torch.jit.save(torch.jit.script(Keyless()), str(path))


def block_signature(seed: int, block: int = 8, shape: tuple[int, int, int] = (1, 112, 112)) -> np.ndarray:
    """A random +-1 signature of constant block x block squares, float32 (T, H, W, 3)."""
    from codecloop.cli import random_signature

    sig = random_signature(f"block{block}" if block > 1 else "pixel", shape, seed)
    return np.repeat(sig, shape[0], axis=0) if shape[0] > 1 else sig


def ffmpeg_or_skip() -> str:
    """Path of the ffmpeg CLI; in CI (CI=true) its absence is a failure, not a skip."""
    path = shutil.which("ffmpeg")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("ffmpeg CLI missing in CI: .ci/run must apt-get install ffmpeg")
        pytest.skip("ffmpeg CLI not installed")
    return path


def error_lines(stderr: str) -> list[str]:
    """A CLI command's stderr without the lines naming its server (codecloop.serverpick) and dataset split."""
    naming = ("codecloop: server ", "codecloop: private server ", "codecloop: starting a local server ", "codecloop: dataset ")
    return [line for line in stderr.strip().splitlines() if not line.startswith(naming)]
