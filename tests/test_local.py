"""A private local server: ``codecloop.Client()`` and the CLI without --target start one and stop it
on exit, on Ctrl-C and when the client is killed, leaving no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import codecloop
from tests.conftest import block_signature


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two .npy sources of 4 clips of 8x32x48 (the holdout is by source)."""
    folder = tmp_path_factory.mktemp("localfolder")
    clips = np.random.default_rng(3).integers(0, 256, (8, 8, 32, 48, 3), dtype=np.uint8)
    np.save(folder / "a.npy", clips[:4])
    np.save(folder / "b.npy", clips[4:])
    return folder


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            out[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
    return out


def _tree(pid: int) -> set[int]:
    """``pid`` and all its descendants."""
    procs, found, todo = _processes(), {pid}, [pid]
    while todo:
        parent = todo.pop()
        kids = {p for p, (pp, _) in procs.items() if pp == parent} - found
        found |= kids
        todo += kids
    return found


def _servers_of(folder: Path) -> set[int]:
    """Running `codecloop serve` processes serving ``folder``."""
    return {p for p, (_, cmd) in _processes().items() if "codecloop_server" in cmd and str(folder) in cmd}


def _gone(pids: set[int], timeout: float = 60.0) -> set[int]:
    """The pids still alive (not zombies) after waiting up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = set()
        for pid in pids:
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.add(pid)
            except OSError:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def test_client_without_target_runs_a_private_server(folder):
    client = codecloop.Client(datasets={"mine": str(folder)}, timeout=300)
    try:
        assert client.target.startswith("127.0.0.1:")
        assert {d.name for d in client.info().datasets} >= {"mine", "embedded", "real"}
        carriers = codecloop.DatasetCarriers("mine", "train", 3)
        sig = block_signature(0, 8, (1, 32, 48))
        f = client.fitness([sig, -sig], epsilon=4 / 255, carriers=carriers, codecs=codecloop.Codec(preset="ultrafast"))
        assert f.shape == (2,) and np.isfinite(f).all()
        tree = _tree(client.local._proc.pid)
        assert len(tree) >= 3  # the server and its codec workers
    finally:
        client.close()
    assert _gone(tree, timeout=5) == set()  # close() waited for the graceful stop
    with pytest.raises(codecloop.CodecLoopValueError, match="datasets"):
        codecloop.Client("127.0.0.1:1", datasets={"mine": str(folder)})


def test_cli_without_target_serves_a_folder(folder):
    run = subprocess.run(
        [sys.executable, "-m", "codecloop.cli", "evaluate", "--dataset", str(folder), "--random", "block8", "--clips", "3",
         "--preset", "ultrafast", "--epsilon", "4/255"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "starting a local server" in run.stderr
    assert "clips=3" in run.stdout and "libx264 crf=28 ultrafast" in run.stdout
    assert _gone(_servers_of(folder)) == set()
    # a folder cannot be sent to a running server
    bad = subprocess.run(
        [sys.executable, "-m", "codecloop.cli", "evaluate", "--target", "127.0.0.1:1", "--dataset", str(folder), "--random", "block8"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "is a folder" in bad.stderr


def _wait_for_server(folder: Path, timeout: float = 300.0) -> set[int]:
    """The process tree of the one server serving ``folder``, once it has its codec workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        servers = _servers_of(folder)
        if servers:
            tree = _tree(next(iter(servers)))
            if len(tree) >= 3:
                return tree
        time.sleep(0.2)
    raise AssertionError("no local server appeared")


def test_ctrl_c_stops_the_private_server(folder, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "codecloop.cli", "optimize", "--dataset", str(folder), "--param", "lowres:4x4:rgb:t=all",
         "--preset", "ultrafast", "--train-clips", "4", "--popsize", "4", "--max-minutes", "5", "--no-progress", "--out", str(tmp_path / "run")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # a suite started in the background (`cmd &`) ignores SIGINT, and so would this child: give
        # it a terminal's default disposition, or the Ctrl-C below would be ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    tree = _wait_for_server(folder)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.monotonic() + 300
    while not (log.exists() and log.stat().st_size) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the run is under way: its first evaluations are logged
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends the command
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "codecloop: interrupted" in out
    assert _gone(tree) == set(), out


def test_killed_client_leaves_no_server(folder, tmp_path):
    script = textwrap.dedent(
        f"""
        import time, codecloop
        c = codecloop.Client(datasets={{"mine": {str(folder)!r}}})
        print(c.local._proc.pid, flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    server = int(proc.stdout.readline())
    tree = _tree(server)
    assert len(tree) >= 3
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _gone(tree) == set()  # the server saw its parent die and stopped with its workers
