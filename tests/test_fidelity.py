"""The reference libx264 path (reference.py) and the colour conversions (convert.py) are bit-identical
to the ffmpeg CLI's, when both run x264 at the same SIMD level (``-x264-params asm=<level>``, which
CodecSettings.ffmpeg_args adds). tests/test_transcode.py holds the production fast path to them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from codecloop.testing import realistic_clip
from codecloop_server.codecs import CodecSettings
from codecloop_server.convert import rgb_to_yuv420p, yuv420p_to_rgb
from codecloop_server.reference import decode_annexb, decode_h264, encode_yuv420p, transcode_yuv
from tests.conftest import ffmpeg_or_skip


def natural_clip(t: int = 8, h: int = 64, w: int = 96) -> np.ndarray:
    """A short pan over a real photograph, uint8 (T, H, W, 3)."""
    from skimage import data

    img = data.astronaut()
    return np.stack([img[100 + 3 * k : 100 + 3 * k + h, 150 + 2 * k : 150 + 2 * k + w] for k in range(t)])


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_or_skip(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _read_yuv(path: Path, t: int, h: int, w: int) -> np.ndarray:
    return np.fromfile(path, np.uint8).reshape(t, h * 3 // 2, w)


def test_rgb_to_yuv420p_matches_ffmpeg_cli(tmp_path):
    rng = np.random.default_rng(0)
    clip = np.concatenate([natural_clip(), realistic_clip(4, 8, 64, 96, cut=True), rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)])
    (tmp_path / "in.rgb").write_bytes(clip.tobytes())
    _ffmpeg("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "96x64", "-i", str(tmp_path / "in.rgb"),
            "-f", "rawvideo", "-pix_fmt", "yuv420p", str(tmp_path / "out.yuv"))  # fmt: skip
    expected = _read_yuv(tmp_path / "out.yuv", len(clip), 64, 96)
    np.testing.assert_array_equal(rgb_to_yuv420p(clip), expected)


def test_yuv420p_to_rgb_matches_ffmpeg_cli(tmp_path):
    yuv = rgb_to_yuv420p(natural_clip())
    (tmp_path / "in.yuv").write_bytes(yuv.tobytes())
    _ffmpeg("-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", "96x64", "-i", str(tmp_path / "in.yuv"),
            "-f", "rawvideo", "-pix_fmt", "rgb24", str(tmp_path / "out.rgb"))  # fmt: skip
    expected = np.fromfile(tmp_path / "out.rgb", np.uint8).reshape(len(yuv), 64, 96, 3)
    np.testing.assert_array_equal(yuv420p_to_rgb(yuv), expected)


@pytest.mark.parametrize(
    "settings",
    [
        CodecSettings(crf=28, preset="medium"),
        CodecSettings(crf=23, preset="slow"),
        CodecSettings(crf=35, preset="veryfast"),
        CodecSettings(crf=0, preset="ultrafast"),
        CodecSettings(crf=40, preset="veryfast", gop=4, fps=30),
    ],
    ids=lambda s: f"crf{s.crf_text}-{s.preset}-g{s.gop}-r{s.fps}",
)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_codec_matches_ffmpeg_cli(tmp_path, settings, seed):
    """Same yuv420p input, same options and SIMD level: decoded frames are bit-identical to the CLI's
    encode + decode, on real-looking content (camera motion, a moving object, noise, a scene cut for
    odd seeds) where x264 runs motion search, B-frames and psy decisions."""
    t, h, w = 16, 112, 112
    yuv = rgb_to_yuv420p(realistic_clip(seed, t, h, w, cut=seed % 2 == 1))
    (tmp_path / "in.yuv").write_bytes(yuv.tobytes())
    _ffmpeg("-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{w}x{h}", "-r", str(settings.fps),
            "-i", str(tmp_path / "in.yuv"), *settings.ffmpeg_args(), "-f", "h264", str(tmp_path / "cli.h264"))  # fmt: skip
    _ffmpeg("-threads", "1", "-i", str(tmp_path / "cli.h264"), "-f", "rawvideo", "-pix_fmt", "yuv420p",
            str(tmp_path / "cli.yuv"))  # fmt: skip
    cli = _read_yuv(tmp_path / "cli.yuv", t, h, w)
    ours, nbytes = transcode_yuv(yuv, settings)
    np.testing.assert_array_equal(ours, cli)
    # The CLI's own decoder agrees with ours on the CLI's bitstream too.
    np.testing.assert_array_equal(decode_h264((tmp_path / "cli.h264").read_bytes()), cli)
    # Slices are identical; only x264's version SEI may differ in length between the two builds.
    assert abs(nbytes - (tmp_path / "cli.h264").stat().st_size) < 64
    if settings.crf == 0:
        np.testing.assert_array_equal(ours, yuv)  # CRF 0 is lossless, not "unset"
    if settings.preset in ("medium", "slow") and settings.gop > 4:
        assert "B" in _frame_types(encode_yuv420p(yuv, settings)), "the content should make x264 use B-frames"


def _frame_types(bitstream: bytes) -> str:
    """Picture types of the decoded frames, e.g. ``IBBBPB...``."""
    return "".join({1: "I", 2: "P", 3: "B"}.get(int(f.pict_type), "?") for f in decode_annexb(bitstream))


def test_encoder_is_deterministic():
    yuv = rgb_to_yuv420p(natural_clip())
    settings = CodecSettings()
    assert encode_yuv420p(yuv, settings) == encode_yuv420p(yuv, settings)


def test_settings_validation_names_field():
    from codecloop_wire.errors import CodecLoopValueError

    with pytest.raises(CodecLoopValueError, match=r"codec.crf: 52.*\[0, 51\]"):
        CodecSettings(crf=52)
    with pytest.raises(CodecLoopValueError, match="codec.preset"):
        CodecSettings(preset="turbo")


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32])
def test_clip_stats_and_squared_error_are_exact(dtype):
    """scorers.clip_stats (int32 fast path for small integer types) and tasks.squared_error equal
    the plain int64 arithmetic, at the extremes of each type."""
    from codecloop_server.scorers import clip_stats
    from codecloop_server.tasks import squared_error

    info = np.iinfo(dtype)
    low, high = max(info.min, -(2**20)), min(info.max, 2**20)
    rng = np.random.default_rng(3)
    for clip in (rng.integers(low, high, (16, 24, 20, 3), endpoint=True).astype(dtype), np.full((9, 4, 6, 3), low, dtype), np.full((9, 4, 6, 3), high, dtype)):
        wide = clip.astype(np.int64)
        stats = clip_stats(clip)
        assert stats.time_sum.dtype == np.int64 and np.array_equal(stats.time_sum, wide.sum(axis=0))
        assert (stats.total, stats.squares, stats.count) == (int(wide.sum()), int((wide * wide).sum()), clip.size)
    a, b = rng.integers(0, 256, (2, 16, 24, 20, 3), dtype=np.uint8)
    assert squared_error(a, b) == int(((a.astype(np.int64) - b) ** 2).sum())
    assert squared_error(np.full_like(a, 255), np.zeros_like(a)) == 255**2 * a.size
