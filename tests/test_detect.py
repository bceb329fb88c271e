"""``codecloop detect``: real videos marked at their own size by ``codecloop mark``, sent through the
real ffmpeg CLI's libx264 at CRF 28 at native size, found with a p-value from the null model; the
unmarked copies are not; bounded memory on a long 1080p video; bad input refused with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codecloop.detect import detect_video
from codecloop.mark import mark_video
from codecloop_server import corpus
from tests.conftest import PEAK_RSS, ffmpeg_or_skip

BIKES = "bikes.mp4"  # 640x272, 250 frames of camera footage with cuts (the real corpus)


def _signature(seed: int, t: int = 16) -> np.ndarray:
    """The optimizer's default family: a 7x7 pattern of 16-pixel blocks per frame on a 112x112 tile, tanh-squashed."""
    small = np.tanh(2 * np.random.default_rng(seed).normal(size=(t, 7, 7, 3)))
    return np.repeat(np.repeat(small, 16, 1), 16, 2).astype(np.float32)


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_or_skip(), "-v", "error", "-y", *args], check=True, timeout=300)


def _crf28(src: Path, dst: Path) -> Path:
    """A platform's re-encode at native size: the ffmpeg CLI's libx264, CRF 28, preset medium."""
    _ffmpeg("-i", str(src), "-an", "-c:v", "libx264", "-crf", "28", "-preset", "medium", "-pix_fmt", "yuv420p", str(dst))
    return dst


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Real footage in three shapes: as it is (640x272), a portrait cut (272x480, transposed) and an
    odd size that is no multiple of the 112-pixel tile (350x198), 100 frames each."""
    folder = tmp_path_factory.mktemp("detect")
    bikes = corpus.real_video_dir() / BIKES
    out = {"landscape": folder / "landscape.mp4", "portrait": folder / "portrait.mp4", "odd": folder / "odd.mp4"}
    common = ["-frames:v", "100", "-an", "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p"]
    _ffmpeg("-i", str(bikes), *common, str(out["landscape"]))
    _ffmpeg("-i", str(bikes), "-vf", "transpose=1,crop=272:480:0:80", *common, str(out["portrait"]))
    _ffmpeg("-i", str(bikes), "-vf", "crop=350:198:101:37", *common, str(out["odd"]))
    return out


@pytest.mark.parametrize("shape", ["landscape", "portrait", "odd"])
def test_marked_video_after_crf28_is_detected_and_the_clean_copy_is_not(sources, tmp_path, shape):
    sig = _signature(0)
    src = sources[shape]
    marked = mark_video(src, tmp_path / "marked.mp4", sig, "2/255", threads=1)
    assert marked.frames == 100
    found = detect_video(_crf28(tmp_path / "marked.mp4", tmp_path / "marked28.mp4"), sig)
    clean = detect_video(_crf28(src, tmp_path / "clean28.mp4"), sig)
    assert (found.width, found.height, found.frames) == (marked.width, marked.height, 100)
    assert found.marked and found.p_value < 1e-6 and found.z > 6, found
    assert not clean.marked and clean.p_value > 1e-3 and abs(clean.z) < 3.5, clean
    assert found.score > clean.score


def test_clean_videos_against_many_keys_are_not_called_marked(sources, tmp_path):
    """Unmarked videos (three shapes, each through CRF 28) against 8 random keys each: 24 tests at
    FPR 1e-3, none called marked, and their z spread like a standard normal's (sd in [0.5, 1.6])."""
    z = []
    for shape, src in sources.items():
        clean = _crf28(src, tmp_path / f"{shape}28.mp4")
        for seed in range(100, 108):
            d = detect_video(clean, _signature(seed))
            assert not d.marked, (shape, seed, d)
            z.append(d.z)
    assert 0.5 <= np.std(z) <= 1.6 and abs(np.mean(z)) < 1.0, z


def test_a_static_signature_and_a_video_shorter_than_its_period(sources, tmp_path):
    """T = 1 (the same pattern on every frame) and a 16-frame signature on a 10-frame video."""
    static = _signature(3, t=1)
    mark_video(sources["odd"], tmp_path / "m.mp4", static, "2/255", threads=1)
    assert detect_video(_crf28(tmp_path / "m.mp4", tmp_path / "m28.mp4"), static).marked
    short = detect_video(sources["odd"], _signature(4), max_frames=10)
    assert short.frames == 10 and not short.marked


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS from /proc (Linux)")
def test_detect_cli_json_and_bounded_memory_on_a_long_1080p_video(tmp_path):
    """20 s of 1920x1080 at 5 fps (100 frames, 622 MB as RGB): the detecting process peaks under
    400 MiB (Linux VmHWM), and --json prints one object per video with the documented keys."""
    src = tmp_path / "long.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=5:duration=20", "-c:v", "libx264", "-preset", "ultrafast",
            "-pix_fmt", "yuv420p", str(src))  # fmt: skip
    np.save(tmp_path / "sig.npy", _signature(0))
    cmd = [sys.executable, "-c", PEAK_RSS, "detect", str(src), "--signature", str(tmp_path / "sig.npy"), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    lines = out.stdout.strip().splitlines()
    rc, before_kib, peak_kib = map(int, lines[-1].split())
    row = json.loads(lines[0])
    assert rc == 0 and {"path", "score", "p_value", "marked", "z", "frames"} <= set(row)
    assert row["frames"] == 100 and (row["width"], row["height"]) == (1920, 1080) and row["marked"] is False
    assert peak_kib / 1024 < 400, f"peak RSS {peak_kib / 1024:.0f} MiB (imports {before_kib / 1024:.0f} MiB)"


def test_bad_input_is_refused_with_exit_2_and_one_line_naming_it(sources, tmp_path):
    ffmpeg = ffmpeg_or_skip()
    audio_only = tmp_path / "sound.m4a"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(audio_only)], check=True, timeout=60)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40)
    tiny = tmp_path / "tiny.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64:rate=5:duration=1", "-pix_fmt", "yuv420p", str(tiny))
    np.save(tmp_path / "sig.npy", _signature(0))
    np.save(tmp_path / "flat.npy", np.zeros((112, 112, 3), np.float32))
    np.save(tmp_path / "static.npy", _signature(0, t=1))
    sig = str(tmp_path / "sig.npy")
    cases = [
        ((str(audio_only), "--signature", sig), "has no video stream"),
        ((str(corrupt), "--signature", sig), str(corrupt)),
        ((str(tiny), "--signature", sig), "smaller than the 112x112 signature tile"),
        ((str(tmp_path / "missing.mp4"), "--signature", sig), "missing.mp4"),
        ((str(sources["odd"]), "--signature", str(tmp_path / "flat.npy")), "signature"),
        ((str(sources["odd"]), "--signature", sig, "--fpr", "0.9"), "fpr"),
        ((str(sources["odd"]), "--signature", sig, "--size", "big"), "--size"),
        ((str(sources["odd"]), "--signature", sig, "--time-offsets", "8"), "--time-offsets: 8 is outside the allowed range [0, 7]"),
        ((str(sources["odd"]), "--signature", str(tmp_path / "static.npy"), "--time-offsets", "1"), "a static one has no frame offsets"),
        ((str(sources["odd"]), "--signature", sig, "--time-offsets", "1", "--detector", "example", "--local"), "only the blind scorer"),
    ]
    for args, needle in cases:
        run = subprocess.run([sys.executable, "-m", "codecloop.cli", "detect", *args], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1 and needle in run.stderr and "Traceback" not in run.stderr, (args, run.stderr)
    # one bad video among good ones: the good one is still tested, and the exit code says something failed
    run = subprocess.run([sys.executable, "-m", "codecloop.cli", "detect", str(sources["odd"]), str(corrupt), "--signature", sig, "--json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2 and json.loads(run.stdout.strip().splitlines()[0])["path"] == str(sources["odd"])


def test_a_changed_frame_rate_is_undone_by_timestamps(sources, tmp_path):
    """A platform that converts 25 fps to 15 fps (the ffmpeg CLI's fps filter, CRF 23) drops frames,
    so counting frames loses the signature's time cycle; --fps 25 places each frame by its timestamp."""
    sig = _signature(5)
    mark_video(sources["landscape"], tmp_path / "m.mp4", sig, "3/255", threads=1)
    _ffmpeg("-i", str(tmp_path / "m.mp4"), "-vf", "fps=15", "-c:v", "libx264", "-crf", "23", "-pix_fmt", "yuv420p", str(tmp_path / "m15.mp4"))
    by_time = detect_video(tmp_path / "m15.mp4", sig, fps=25)
    by_count = detect_video(tmp_path / "m15.mp4", sig)
    assert by_time.marked and by_time.z > by_count.z + 2, (by_time, by_count)


def test_a_retimed_video_is_found_at_its_frame_offset(sources, tmp_path):
    """The ffmpeg CLI's output option -r 15 keeps a few leading frames and then shows each frame two
    frames (80 ms) after its timestamp: by timestamp alone the mark is lost; --time-offsets 2 finds it
    at +2 (frame i carries signature frame i - 2), corrected for the 5 offsets tried. The unmarked
    copy, re-timed the same way, stays unmarked."""
    sig = _signature(6)
    mark_video(sources["landscape"], tmp_path / "m.mp4", sig, "2/255", threads=1)
    retimed = {}
    for kind, src in (("marked", tmp_path / "m.mp4"), ("clean", sources["landscape"])):
        retimed[kind] = tmp_path / f"{kind}-r15.mp4"
        _ffmpeg("-i", str(src), "-r", "15", "-an", "-c:v", "libx264", "-crf", "28", "-pix_fmt", "yuv420p", str(retimed[kind]))
    plain = detect_video(retimed["marked"], sig, fps=25)
    found = detect_video(retimed["marked"], sig, fps=25, time_offsets=2)
    clean = detect_video(retimed["clean"], sig, fps=25, time_offsets=2)
    assert not plain.marked and (plain.offset, plain.offsets) == (0, 1), plain
    assert found.marked and found.offset == 2 and found.offsets == 5 and found.z > plain.z + 5, found
    assert found.score > plain.score
    assert not clean.marked and clean.offsets == 5, clean


def test_the_offset_search_is_the_plain_null_at_zero_and_calibrated_under_the_null():
    """offset_null(search 0) is shift_null exactly; with 5 offsets tried, unmarked features against
    random keys give corrected p-values no smaller than uniform ones (Šidák over the offsets)."""
    from codecloop_wire.null import offset_null, shift_null

    rng = np.random.default_rng(7)
    features = rng.integers(-40, 41, size=(16, 112, 112, 3))
    key = _signature(8) - _signature(8).mean()
    zero, plain = offset_null(features, key, 0), shift_null(features, key)
    assert (zero.z, zero.p, zero.offset, zero.offsets) == (plain.z, plain.p, 0, 1)
    p = np.array([offset_null(features, (k := _signature(100 + s)) - k.mean(), 2).p for s in range(120)])
    # uniform p: 6 of 120 below 0.05 expected; anti-conservative would show many more
    assert (p < 0.05).sum() <= 12 and 40 <= (p < 0.5).sum() <= 80 and p.min() > 1e-4, np.sort(p)[:10]
    with pytest.raises(ValueError, match="static key"):
        offset_null(features[:1], key[:1], 1)
    with pytest.raises(ValueError, match="outside"):
        offset_null(features, key, 8)
