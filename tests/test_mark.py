"""``codecloop mark``: a real video file marked at its own size, frame rate and length (PyAV,
libx264 / ffv1), checked with the ffmpeg CLI as the reference decoder; the deployment rule's fold
finds the mark; bounded memory on a long 1080p video; bad input refused with exit 2 and one line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codecloop.mark import mark_video
from codecloop.testing import realistic_clip
from codecloop_wire import deploy
from tests.conftest import PEAK_RSS, ffmpeg_or_skip


def _content(seed: int, t: int, h: int, w: int) -> np.ndarray:
    """Realistic uint8 (t, h, w, 3) frames of any size: codecloop.testing's camera clip at half size (its
    photographs are small), upsampled bilinearly, with fresh sensor noise."""
    from scipy import ndimage

    small = realistic_clip(seed=seed, t=t, h=-(-h // 2), w=-(-w // 2)).astype(np.float32)
    big = ndimage.zoom(small, (1, h / small.shape[1], w / small.shape[2], 1), order=1)[:, :h, :w]
    big += np.random.default_rng(seed).normal(0, 2.0, big.shape).astype(np.float32)
    return np.clip(np.rint(big), 0, 255).astype(np.uint8)


def _make_video(path: Path, frames: np.ndarray, fps: int = 24, audio: bool = True) -> None:
    """H.264 (CRF 12) of uint8 (F, H, W, 3) frames with the ffmpeg CLI, with a sine audio track."""
    n, h, w, _ = frames.shape
    cmd = [ffmpeg_or_skip(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={n / fps}", "-c:a", "aac"]
    cmd += ["-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p", "-shortest", str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True, timeout=120)


def _decode(path: Path, h: int, w: int) -> np.ndarray:
    """Every frame as rgb24 by the ffmpeg CLI (bicubic, the file's colour matrix): uint8 (F, h, w, 3)."""
    raw = subprocess.run([ffmpeg_or_skip(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True, timeout=120).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def _probe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,width,height,r_frame_rate,nb_read_frames,duration",
         "-count_frames", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return {s["codec_type"]: s for s in json.loads(out.stdout)["streams"]}


def _cosine(residual: np.ndarray, sig: np.ndarray) -> float:
    """Correlation of a residual video with the signature deployed by the rule, via the fold (normalised)."""
    fold = deploy.Fold(*sig.shape)
    fold.add(residual.astype(np.float64), 0)
    n, h, w, _ = residual.shape
    pattern_norm = math.sqrt(float(np.sum(deploy.pattern(sig, 0, n, h, w).astype(np.float64) ** 2)))
    return fold.correlate(sig.astype(np.float64)) / (np.linalg.norm(residual) * pattern_norm)


def _signature(t: int, seed: int) -> np.ndarray:
    """A smooth +-1 signature of 8 x 8 blocks on a 112 x 112 tile (what an optimized one looks like to a codec)."""
    rng = np.random.default_rng(seed)
    return np.repeat(np.repeat(rng.choice([-1.0, 1.0], (t, 14, 14, 3)), 8, axis=1), 8, axis=2).astype(np.float32)


@pytest.mark.parametrize(("w", "h", "t"), [(358, 202, 16), (202, 358, 16), (480, 270, 1)], ids=["landscape", "portrait", "static"])
def test_mark_round_trip_keeps_size_rate_length_audio_and_the_mark(tmp_path, w, h, t):
    """Sizes that are not multiples of the 112-px tile, a portrait video, a cycling and a static signature."""
    frames = _content(seed=w + h, t=24, h=h, w=w)
    src, dst = tmp_path / "in.mp4", tmp_path / "marked.mp4"
    _make_video(src, frames)
    sig = _signature(t, seed=w)
    result = mark_video(src, dst, sig, "2/255")
    assert (result.frames, result.width, result.height, result.audio_streams) == (24, w, h, 1)
    before, after = _probe(src), _probe(dst)
    assert after["video"]["codec_name"] == "h264" and after["audio"]["codec_name"] == "aac"
    for key in ("width", "height", "r_frame_rate", "nb_read_frames"):
        assert after["video"][key] == before["video"][key]
    assert float(after["video"]["duration"]) == pytest.approx(float(before["video"]["duration"]), abs=1e-3)
    assert int(after["audio"]["nb_read_frames"]) == int(before["audio"]["nb_read_frames"])
    residual = _decode(dst, h, w).astype(np.float64) - _decode(src, h, w)
    # the residual is the mark plus CRF 18 coding noise: clearly the signature, and not another one
    assert _cosine(residual, sig) > 0.3
    assert abs(_cosine(residual, _signature(t, seed=w + 1))) < 0.05


def test_lossless_output_is_the_rule_applied_to_the_decoded_frames_and_psnr_meets_epsilon(tmp_path):
    """ffv1 (lossless RGB): the ffmpeg CLI decodes exactly the deployment rule's marked frames; every
    pixel moves by at most 255 * epsilon levels, so PSNR >= 20 log10(1 / epsilon)."""
    w, h = 250, 138
    src, dst = tmp_path / "in.mp4", tmp_path / "marked.mkv"
    _make_video(src, _content(seed=5, t=20, h=h, w=w), fps=30, audio=False)
    sig = np.random.default_rng(0).uniform(-1, 1, (16, 48, 64, 3)).astype(np.float32)
    eps = 3 / 255
    result = mark_video(src, dst, sig, eps, codec="ffv1")
    assert result.codec.startswith("ffv1") and result.frames == 20
    clean, marked = _decode(src, h, w), _decode(dst, h, w)
    np.testing.assert_array_equal(marked, deploy.mark_frames(clean, sig, 0, eps))
    diff = marked.astype(np.float64) - clean
    assert np.abs(diff).max() <= 3
    psnr = 10 * math.log10(255**2 / np.mean(diff**2))
    assert psnr >= 20 * math.log10(1 / eps)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS from /proc (Linux)")
def test_a_long_1080p_video_is_marked_in_bounded_memory(tmp_path):
    """60 s of 1920x1080 at 5 fps: 300 frames, 1.87 GB as RGB; the marking process peaks under 400 MiB
    (Linux VmHWM; imports included). Preset ultrafast keeps the test short: the default
    medium adds x264's 40-frame lookahead, a fixed amount (docs/deployment.md)."""
    ffmpeg = ffmpeg_or_skip()
    src, dst = tmp_path / "long.mp4", tmp_path / "marked.mp4"
    subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=5:duration=60", "-f", "lavfi",
         "-i", "sine=sample_rate=48000:duration=60", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(src)],
        check=True, timeout=120,
    )  # fmt: skip
    np.save(tmp_path / "sig.npy", _signature(16, 0))
    cmd = [sys.executable, "-c", PEAK_RSS, "mark", str(src), str(dst), "--signature", str(tmp_path / "sig.npy"), "--epsilon", "2/255", "--preset", "ultrafast"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    rc, before_kib, peak_kib = map(int, out.stdout.split()[-3:])
    assert rc == 0 and "300 frames 1920x1080" in out.stdout
    assert peak_kib / 1024 < 400, f"peak RSS {peak_kib / 1024:.0f} MiB (imports {before_kib / 1024:.0f} MiB)"
    assert _probe(dst)["video"]["nb_read_frames"] == "300"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codecloop.cli", *args], capture_output=True, text=True, timeout=120)


def test_bad_input_is_refused_with_exit_2_and_one_line_naming_the_problem(tmp_path):
    ffmpeg = ffmpeg_or_skip()
    good = tmp_path / "good.mp4"
    _make_video(good, _content(seed=1, t=4, h=64, w=64), audio=False)
    audio_only = tmp_path / "sound.m4a"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(audio_only)], check=True, timeout=60)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40)
    np.save(tmp_path / "sig.npy", _signature(16, 0))
    np.save(tmp_path / "flat.npy", np.zeros((112, 112, 3), np.float32))
    np.save(tmp_path / "big.npy", np.full((1, 8, 8, 3), 2.0, np.float32))
    sig, out = str(tmp_path / "sig.npy"), str(tmp_path / "out.mp4")
    cases = [
        ((str(audio_only), out, "--signature", sig, "--epsilon", "2/255"), "has no video stream"),
        ((str(corrupt), out, "--signature", sig, "--epsilon", "2/255"), "cannot be read as a video"),
        ((str(tmp_path / "missing.mp4"), out, "--signature", sig, "--epsilon", "2/255"), "is not a file"),
        ((str(good), out, "--signature", str(tmp_path / "flat.npy"), "--epsilon", "2/255"), r"signature.shape: [112, 112, 3] must be (T, H, W, 3)"),
        ((str(good), out, "--signature", str(tmp_path / "big.npy"), "--epsilon", "2/255"), "outside the allowed range [-1, 1]"),
        ((str(good), out, "--signature", str(good), "--epsilon", "2/255"), "is not a .npy file"),
        ((str(good), out, "--signature", sig, "--epsilon", "0"), "epsilon: 0.0 is outside the allowed range (0, 1]"),
        ((str(good), out, "--signature", sig, "--epsilon", "300/255"), "outside the allowed range (0, 1]"),
        ((str(good), out, "--signature", sig, "--epsilon", "two"), "epsilon: 'two' is not a number"),
        ((str(good), str(tmp_path / "out.webm"), "--signature", sig, "--epsilon", "2/255"), "has extension '.webm'"),
    ]
    for args, message in cases:
        run = _cli("mark", *args)
        assert run.returncode == 2, (args, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, run.stderr)
    assert not (tmp_path / "out.mp4").exists()  # nothing half-written is left behind
    assert not list(tmp_path.glob(".out*"))


def test_variable_frame_rate_timestamps_are_kept(tmp_path):
    """24 fps for 20 frames, then 12 fps: every output frame has its input frame's timestamp."""
    src, dst = tmp_path / "vfr.mp4", tmp_path / "marked.mp4"
    subprocess.run(
        [ffmpeg_or_skip(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x96:rate=24:duration=2",
         "-vf", "setpts='if(lt(N,20),N,20+(N-20)*2)/24/TB'", "-fps_mode", "vfr", "-c:v", "libx264", str(src)],
        check=True, timeout=60,
    )  # fmt: skip

    def times(path: Path) -> list[str]:
        out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "frame=pts_time", "-of", "csv=p=0", str(path)],
                             capture_output=True, text=True, check=True, timeout=60).stdout  # fmt: skip
        return [line.strip(",") for line in out.split()]

    mark_video(src, dst, _signature(16, 0), 2 / 255)
    before = times(src)
    assert len(before) == 48 and float(before[21]) - float(before[20]) == pytest.approx(1 / 12, abs=1e-3)
    assert times(dst) == before
