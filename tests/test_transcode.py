"""The encode step production runs (transcode.py: streamed, side-by-side conversion) is bit for bit
the reference pipeline (reference.py, held to the ffmpeg CLI by tests/test_fidelity.py): frames and
byte counts, for every codec."""

from __future__ import annotations

import numpy as np
import pytest

from codecloop.testing import realistic_clip
from codecloop_server.codecs import CODECS, CodecSettings
from codecloop_server.convert import rgb_to_yuv420p, yuv420p_frames, yuv420p_to_rgb
from codecloop_server.reference import transcode_yuv
from codecloop_server.transcode import transcode_rgb
from tests.test_fidelity import _ffmpeg


def test_rgb_pipeline_matches_ffmpeg_cli_end_to_end(tmp_path):
    """rgb24 in, rgb24 out: the server's fused path equals the CLI doing conversion, encode and decode."""
    clip = realistic_clip(7, 16, 64, 96, cut=True)
    settings = CodecSettings(crf=30, preset="fast")
    (tmp_path / "in.rgb").write_bytes(clip.tobytes())
    _ffmpeg("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "96x64", "-r", "25", "-i", str(tmp_path / "in.rgb"),
            *settings.ffmpeg_args(), "-f", "h264", str(tmp_path / "cli.h264"))  # fmt: skip
    _ffmpeg("-threads", "1", "-i", str(tmp_path / "cli.h264"), "-f", "rawvideo", "-pix_fmt", "rgb24",
            str(tmp_path / "cli.rgb"))  # fmt: skip
    cli = np.fromfile(tmp_path / "cli.rgb", np.uint8).reshape(clip.shape)
    fused, nbytes = transcode_rgb(clip, settings)
    np.testing.assert_array_equal(fused, cli)
    staged, staged_bytes = transcode_yuv(rgb_to_yuv420p(clip), settings)
    np.testing.assert_array_equal(fused, yuv420p_to_rgb(staged))
    assert nbytes == staged_bytes


@pytest.mark.parametrize("shape", [(16, 112, 112), (8, 64, 96), (3, 16, 16), (5, 30, 46)])
def test_one_call_conversion_equals_per_frame(shape):
    """yuv420p_frames (one swscale call on the frames side by side, what transcode_rgb encodes) is
    bit-identical to the per-frame conversion the CLI test checks, on real-looking and on noise clips."""
    t, h, w = shape
    rng = np.random.default_rng(t * h + w)
    clips = [realistic_clip(s, t, h, w, cut=s == 1) for s in range(3)] if h >= 32 else []
    clips += [rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8), np.repeat(rng.integers(0, 256, (t, h, 1, 3), dtype=np.uint8), w, axis=2)]
    for clip in clips:
        batched = np.stack([f.to_ndarray() for f in yuv420p_frames(clip)])
        np.testing.assert_array_equal(batched, rgb_to_yuv420p(clip))


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_transcode_rgb_is_the_reference_pipeline_for_every_codec(codec):
    """Streamed packet by packet (Annex-B through the parser, other codecs one packet per frame),
    the fast path decodes the same frames and counts the same bytes as encoding the whole clip first."""
    clip = realistic_clip(4, 8, 64, 80, cut=True)  # 80 wide: libx265 is not repeatable at 64 (channels.X265_MIN_WIDTH)
    settings = CodecSettings(codec, crf=32)
    fused, nbytes = transcode_rgb(clip, settings)
    staged, staged_bytes = transcode_yuv(rgb_to_yuv420p(clip), settings)
    np.testing.assert_array_equal(fused, yuv420p_to_rgb(staged))
    assert nbytes == staged_bytes > 0
