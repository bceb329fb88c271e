"""Datasets you can see: a folder's files that give no clip (unreadable, no video stream at all or
audio only, shorter than one clip) are skipped with their reason, or refused with
--strict-datasets; `codecloop info --dataset FOLDER` lists each file -> split with clip counts."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from codecloop_server.folder_dataset import folder_dataset
from codecloop_wire.errors import CodecLoopValueError
from tests.conftest import error_lines, ffmpeg_or_skip


def _zero_stream_mp4() -> bytes:
    """A valid MP4 (ftyp + moov with a movie header) that holds no stream at all."""
    ftyp = struct.pack(">I4s4sI4s4s", 24, b"ftyp", b"isom", 0x200, b"isom", b"mp41")
    body = (struct.pack(">B3xIIII", 0, 0, 0, 1000, 0) + struct.pack(">IH10x", 0x10000, 0x100)
            + struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000) + bytes(24) + struct.pack(">I", 1))  # fmt: skip
    mvhd = struct.pack(">I4s", 8 + len(body), b"mvhd") + body
    return ftyp + struct.pack(">I4s", 8 + len(mvhd), b"moov") + mvhd


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """4 good sources (2 clip arrays fixing the clip shape at 8x32x48, 2 real videos) and 4 files
    that give no clip: 5 frames, audio only, zero streams, random bytes."""
    ffmpeg = ffmpeg_or_skip()
    d = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    np.save(d / "a.npy", rng.integers(0, 256, (3, 8, 32, 48, 3), dtype=np.uint8))
    np.save(d / "g.npy", rng.integers(0, 256, (2, 8, 32, 48, 3), dtype=np.uint8))
    for name, src, frames in (("b.mp4", "testsrc", 40), ("c.mp4", "testsrc2", 30), ("d_short.mp4", "testsrc", 5)):
        subprocess.run([ffmpeg, "-loglevel", "error", "-f", "lavfi", "-i", f"{src}=size=64x48:rate=25", "-frames:v", str(frames),
                        "-pix_fmt", "yuv420p", str(d / name)], check=True)  # fmt: skip
    subprocess.run([ffmpeg, "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", "-c:a", "aac", str(d / "e_audio.mp4")],
                   check=True)  # fmt: skip
    (d / "f_garbage.mp4").write_bytes(np.random.default_rng(1).bytes(5000))
    (d / "h_zero.mp4").write_bytes(_zero_stream_mp4())
    return d


SKIPPED = [
    ("d_short.mp4", "too short: fewer than 8 frames (one clip)"),
    ("e_audio.mp4", "no video stream (1 other stream)"),
    ("f_garbage.mp4", "unreadable ([Errno 1094995529] Invalid data found when processing input)"),
    ("h_zero.mp4", "no video stream (0 other streams)"),
]


def test_files_without_clips_are_skipped_with_the_reason_or_refused_when_strict(folder):
    ds = folder_dataset("mixed", folder)
    assert ds.sources == ("a.npy", "b.mp4", "c.mp4", "g.npy") and list(ds.skipped) == SKIPPED
    assert ds.source_split_clips() == [("a.npy", {"train": 3}), ("b.mp4", {"validation": 5}), ("c.mp4", {"train": 3}), ("g.npy", {"holdout": 2})]
    assert ds.folder == str(folder.resolve())
    with pytest.raises(CodecLoopValueError, match=rf"dataset mixed: file {folder}/d_short.mp4: too short: fewer than 8 frames"):
        folder_dataset("mixed", folder, strict=True)
    (only_bad := folder.parent / "only_bad").mkdir(exist_ok=True)
    (only_bad / "h_zero.mp4").write_bytes(_zero_stream_mp4())
    with pytest.raises(CodecLoopValueError, match="no clip of 16 frames found in .*; skipped h_zero.mp4: no video stream"):
        folder_dataset("bad", only_bad)


def test_cli_info_lists_each_file_its_split_and_the_skipped_ones(folder):
    run = subprocess.run([sys.executable, "-m", "codecloop.cli", "info", "--dataset", str(folder)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"dataset {folder.name}: folder {folder.resolve()}; clips of 8 frames x 32x48; digest ")
    assert lines[1].startswith("split: by source: source k (in order) is holdout when k % 4 == 3")
    assert [" ".join(line.split()) for line in lines[2:]] == [
        "a.npy -> train 3 clips", "b.mp4 -> validation 5 clips", "c.mp4 -> train 3 clips", "g.npy -> holdout 2 clips",
        *(f"{name} -> skipped: {why}" for name, why in SKIPPED), "total: train 6, validation 5, holdout 2 clips",
    ]  # fmt: skip
    strict = subprocess.run([sys.executable, "-m", "codecloop.cli", "info", "--dataset", str(folder), "--strict-datasets"],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert strict.returncode == 2 and len(error_lines(strict.stderr)) == 1, strict.stderr
    assert f"file {folder}/d_short.mp4: too short: fewer than 8 frames (one clip)" in strict.stderr


def test_server_info_is_typed(client, server_target):
    from codecloop import Channel, ServerInfo
    from codecloop.serverinfo import SourceClips

    info = client.info()
    assert isinstance(info, ServerInfo) and info.workers == 2 and info.limits.max_message_bytes == 64 << 20
    tiny = info.dataset("tiny")
    assert tiny.clip_shape == (8, 32, 48) and tiny.folder.endswith(tiny.description.rsplit("/", 1)[-1]) and tiny.skipped == ()
    assert tiny.sources == (SourceClips("a.npy", {"train": 3}), SourceClips("b.npy", {"holdout": 1}))
    assert info.dataset("embedded").folder == "" and {s.name for s in info.scorers} >= {"blind", "informed"}
    assert all(isinstance(c, Channel) for p in info.channel_presets for c in p.channels)
    with pytest.raises(CodecLoopValueError, match="dataset: the server has no dataset 'nope'; it has embedded, real, tiny"):
        info.dataset("nope")
    shown = subprocess.run([sys.executable, "-m", "codecloop.cli", "info", "--target", server_target], capture_output=True, text=True, timeout=120)
    datasets = {d["name"]: d for d in json.loads(shown.stdout)["datasets"]}
    assert datasets["tiny"]["clipShape"] == [8, 32, 48]  # numbers, not proto JSON's int64 strings
