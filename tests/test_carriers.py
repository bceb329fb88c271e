"""Carrier policies (video_source.CarrierPolicy, ``codecloop serve --carriers``): ``native`` clips are
exact crops at the source's own pixel scale, ``native:L`` scales down to L lines first, ``resize``
stays what it was; the policy reaches GetServerInfo through the server CLI and the SDK."""

from __future__ import annotations

import numpy as np
import pytest

from codecloop_server import video_source
from codecloop_server.folder_dataset import folder_dataset
from codecloop_server.video_source import CarrierPolicy
from codecloop_wire.errors import CodecLoopValueError


def _coordinate_frames(num: int, h: int, w: int) -> np.ndarray:
    """uint8 (num, h, w, 3): R = row % 256, G = column % 256, B = frame index (a crop says where it came from)."""
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    frames = np.empty((num, h, w, 3), np.uint8)
    frames[..., 0], frames[..., 1] = ys % 256, xs % 256
    frames[..., 2] = np.arange(num)[:, None, None]
    return frames


def test_parse_and_names():
    assert CarrierPolicy.parse("resize") == video_source.RESIZE
    assert CarrierPolicy.parse("native") == CarrierPolicy("native")
    assert CarrierPolicy.parse("native:720") == CarrierPolicy("native", 720)
    assert str(CarrierPolicy.parse("native:720")) == "native:720"
    for bad in ("crop", "native:", "native:0", "native:x", "resize:720", ""):
        with pytest.raises(CodecLoopValueError, match=r"carriers: .* allowed: resize, native, native:L"):
            CarrierPolicy.parse(bad)


def test_native_clips_are_exact_crops_spread_over_the_frame():
    frames = _coordinate_frames(64, 200, 240)
    clips = video_source.array_clips(frames, 8, 48, 64, 8, CarrierPolicy("native"))
    starts = video_source.clip_starts(64, 8, 8)
    assert clips.shape == (8, 8, 48, 64, 3)
    origins = set()
    for k, clip in enumerate(clips):
        y0, x0 = int(clip[0, 0, 0, 0]), int(clip[0, 0, 0, 1])
        # one video pixel per carrier pixel, the same window on every frame of the clip
        np.testing.assert_array_equal(clip, frames[starts[k] : starts[k] + 8, y0 : y0 + 48, x0 : x0 + 64])
        origins.add((y0, x0))
    assert len(origins) == 8  # every clip has its own window
    assert (int(clips[0, 0, 0, 0, 0]), int(clips[0, 0, 0, 0, 1])) == ((200 - 48 + 1) // 2, (240 - 64 + 1) // 2)  # the first at the centre


def test_native_lines_scales_tall_frames_down_first_and_never_up():
    frames = _coordinate_frames(16, 240, 200)
    clips = video_source.array_clips(frames, 8, 32, 32, 2, CarrierPolicy("native", 120))
    # half scale: neighbouring carrier pixels are two source columns apart (inside the crop, away from wraps)
    steps = np.diff(clips[0, 0, 16, :, 1].astype(int))
    assert np.median(steps) == 2
    short = video_source.array_clips(frames, 8, 32, 32, 2, CarrierPolicy("native", 480))
    assert np.median(np.diff(short[0, 0, 16, :, 1].astype(int))) == 1  # 240 < 480 lines: untouched


def test_a_source_smaller_than_the_carrier_gives_no_clip_and_resize_is_unchanged(tmp_path):
    small = _coordinate_frames(32, 40, 60)
    assert video_source.array_clips(small, 8, 48, 48, 4, CarrierPolicy("native")).shape[0] == 0
    resized = [[video_source.fit_frame(f, 48, 48) for f in small[s : s + 8]] for s in video_source.clip_starts(32, 8, 4)]
    np.testing.assert_array_equal(video_source.array_clips(small, 8, 48, 48, 4), np.stack(resized))
    np.save(tmp_path / "a.npy", _coordinate_frames(32, 96, 128))
    np.save(tmp_path / "b.npy", _coordinate_frames(32, 100, 100))
    np.save(tmp_path / "tiny.npy", small)
    ds = folder_dataset("f", tmp_path, (8, 48, 48), 4, CarrierPolicy("native"))
    assert ds.sources == ("a.npy", "b.npy") and ds.carrier_policy.startswith("native: a 48x48 crop at the video's own pixel scale")
    assert folder_dataset("f", tmp_path, (8, 48, 48), 4).carrier_policy.startswith("resize: ")


def test_server_flag_and_sdk_publish_the_policy(tmp_path):
    """``Client(None, datasets=..., carriers=...)`` starts ``serve --carriers``; GetServerInfo says the policy of each dataset."""
    import codecloop

    np.save(tmp_path / "a.npy", _coordinate_frames(32, 480, 640))
    np.save(tmp_path / "b.npy", _coordinate_frames(32, 480, 640))
    with codecloop.Client(None, datasets={"coords": str(tmp_path)}, carriers="native:240") as client:
        info = {d.name: d for d in client.info().datasets}
    assert info["coords"].carrier_policy.startswith("native: frames taller than 240 lines scaled down to 240 lines, then a 112x112 crop")
    assert dict(info["coords"].split_clips) == {"train": 2, "validation": 0, "holdout": 2}
    assert info["real"].carrier_policy.startswith("native: frames taller than 240 lines")
    assert info["embedded"].carrier_policy.startswith("camera pans")
    with pytest.raises(CodecLoopValueError, match="carriers"):
        codecloop.Client("127.0.0.1:1", carriers="native")
