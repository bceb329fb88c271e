"""No traceback for a user mistake: each one the CLI can be given ends with exit code 2 and one line
naming the flag or file (codecloop.userinput, the CLI's argparse types); --clips 0 means every clip
of the split in evaluate and in the SDK."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from codecloop import DatasetCarriers
from tests.conftest import block_signature, error_lines


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codecloop.cli", *args], capture_output=True, text=True, timeout=300)


def refused(run: subprocess.CompletedProcess, message: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert message in run.stderr, run.stderr
    assert len(error_lines(run.stderr)) == 1 and "Traceback" not in run.stderr, run.stderr


@pytest.fixture()
def bad_files(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object))
    (tmp_path / "text.npy").write_text("this is not an array\n")
    np.save(tmp_path / "population.npy", block_signature(0)[None])
    np.save(tmp_path / "flat.npy", np.zeros((112, 112), np.float32))
    return tmp_path


def test_mistakes_refused_before_any_server_starts(bad_files):
    """Files and folders are checked before a private server would be started (these have no --target)."""
    d = bad_files
    refused(cli("evaluate", "--random", "block8", "--dataset", "/missing/folder"), "--dataset: /missing/folder: no such folder")
    refused(cli("evaluate", "--random", "block8", "--dataset", str(d / "flat.npy")), f"--dataset: {d / 'flat.npy'} is a file")
    refused(cli("evaluate", "--signature", str(d / "missing.npy")), f"--signature: {d / 'missing.npy'}: no such file")
    refused(cli("evaluate", "--signature", str(d / "objects.npy")), f"--signature: {d / 'objects.npy'} holds Python objects, not numbers")
    refused(cli("evaluate", "--signature", str(d / "text.npy")), f"--signature: {d / 'text.npy'} is not a .npy array file")
    refused(cli("evaluate", "--signature", str(d / "flat.npy")), f"--signature: {d / 'flat.npy'} has shape (112, 112); expected (T, H, W, 3)")
    refused(cli("diagnose", "--signature", str(d / "population.npy")), "has shape (1, 1, 112, 112, 3); expected (T, H, W, 3)")
    refused(cli("evaluate", "--random", "block8", "--epsilon", "300"), "argument --epsilon: 300 is outside the allowed range (0, 1]")
    refused(cli("evaluate", "--random", "block8", "--epsilon", "3"), "argument --epsilon: 3 is outside the allowed range (0, 1]; write 3/255 for 3 levels of 255")
    refused(cli("optimize", "--out", str(d / "run"), "--target-fpr", "1"), "argument --target-fpr: 1 is outside the allowed range [0, 1)")
    refused(cli("optimize", "--out", str(d / "text.npy")), f"--out: {d / 'text.npy'} is a file, not a run folder")
    refused(cli("optimize", "--out", str(d / "run"), "--optimizer", "sgd"), "optimizer: 'sgd'; use one of cma, cma:diagonal, nevergrad:<name>, torch-ste")
    assert "300/255" not in cli("evaluate", "--random", "block8", "--epsilon", "300").stderr  # no hint that would be out of range too


def test_mistakes_refused_against_a_server(server_target):
    refused(cli("evaluate", "--target", server_target, "--random", "block8", "--dataset", "nope"),
            "--dataset: the server has no dataset 'nope'; it has embedded, ")  # fmt: skip
    refused(cli("evaluate", "--target", server_target, "--random", "block8", "--split", "holdout", "--clips", "100"),
            "--clips: 100 is outside [0, 72] for split 'holdout' of dataset 'embedded' (72 clips); 0 = all 72")  # fmt: skip
    refused(cli("evaluate", "--target", server_target, "--random", "block8", "--split", "test"),
            "--split: dataset 'embedded' has no split 'test'; it has holdout, train, validation")  # fmt: skip
    refused(cli("optimize", "--target", server_target, "--dataset", "nope", "--out", "unused"), "--dataset: the server has no dataset 'nope'")


def test_zero_clips_means_the_whole_split(server_target, client):
    run = cli("evaluate", "--target", server_target, "--random", "block8", "--dataset", "tiny", "--split", "train", "--clips", "0")
    assert run.returncode == 0, run.stderr
    assert "clips=3" in run.stdout  # tiny's train split: a.npy's 3 clips
    sig = block_signature(1, shape=(1, 32, 48))[None]
    result = client.evaluate(sig, carriers=DatasetCarriers("tiny", "train", 0))
    assert result.num_clips == 3 and result.clip_ids == (0, 1, 2)
    whole = client.evaluate(sig, carriers=DatasetCarriers("tiny", "train", 3, seed=5))
    assert whole.candidates[0].fitness == result.candidates[0].fitness
