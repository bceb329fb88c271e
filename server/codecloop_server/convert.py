"""Colour conversion with FFmpeg's swscale: RGB <-> planar yuv420p, ndarray in, ndarray out.

``SWS_BICUBIC`` (what the ``ffmpeg`` CLI uses by default for rgb24 <-> yuv420p), BT.601 limited
range, so a clip converted here is bit-identical to the CLI's conversion of the same rgb24 input
(tests/test_fidelity.py). :func:`rgb_to_yuv420p` / :func:`yuv420p_to_rgb` convert frame by frame;
:func:`yuv420p_frames`, what an encode step feeds its encoder (transcode.py), converts the same
frames bit-identically in few swscale calls. Nothing is shared between calls except a per-thread
swscale context cache (:func:`reformatter`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

_local = threading.local()


def reformatter(direction: str) -> VideoReformatter:
    """This thread's swscale reformatter for ``direction`` (any label: one per use, e.g. ``"rgb->yuv"``)."""
    # One reformatter per thread and direction keeps swscale's cached context alive (0.2 ms instead
    # of 0.6 ms per frame); alternating directions on one would rebuild it every time.
    cache: dict[str, VideoReformatter] = _local.__dict__.setdefault("reformatters", {})
    if direction not in cache:
        cache[direction] = VideoReformatter()
    return cache[direction]


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """Convert RGB frames to planar yuv420p with swscale bicubic (the ffmpeg CLI's default).

    Args:
        frames: uint8 (T, H, W, 3), H and W even.

    Returns:
        uint8 (T, H * 3 // 2, W): each frame is the Y plane followed by the U and V planes
        (each H/2 x W/2, stored row-major in W-wide rows), PyAV's ``to_ndarray`` layout.
    """
    r = reformatter("rgb->yuv")
    out = [
        r.reformat(
            av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24"),
            format="yuv420p",
            interpolation=Interpolation.BICUBIC,
        ).to_ndarray()
        for f in frames
    ]
    return np.stack(out)


# FFmpeg refuses an image with (w + 128) * (h + 128) >= INT_MAX / 8 (av_image_check_size), and a
# swscale call costs its input, output and buffers: a conversion of frames side by side takes at
# most this many pixels per call, and at least one frame (a legal frame, at most 8192 x 8192, is far
# below the library limit).
_CHUNK_PIXELS = 1 << 22
_IMAGE_LIMIT = (2**31 - 1) // 8


def frames_per_call(t: int, h: int, w: int) -> int:
    """Frames of (h, w) that one side-by-side swscale call converts: at least 1, at most ``t``, at
    most ``_CHUNK_PIXELS`` pixels, and always under FFmpeg's image size limit."""
    by_library = ((_IMAGE_LIMIT - 1) // (h + 128) - 128) // w
    return max(1, min(t, _CHUNK_PIXELS // (h * w), by_library))


def yuv420p_frames(clip: np.ndarray) -> Iterator[av.VideoFrame]:
    """uint8 (T, H, W, 3) RGB -> T yuv420p frames (yielded in order), bit-identical to
    :func:`rgb_to_yuv420p`'s per-frame conversion (tested) but in few swscale calls, each on up to
    :func:`frames_per_call` frames placed side by side.

    Why that is exact: for RGB input swscale reads chroma at half width by averaging pixel pairs
    (W is even, so no pair straddles two frames) and then scales it 1:1, so no horizontal filter
    reaches into the neighbouring frame; the vertical filter works within each column, i.e. within
    one frame. (Stacked vertically it would not be exact.) Few calls instead of T save swscale's
    per-call set-up (benchmarks/engine_bench.py, stage breakdown); chunks keep every call under
    FFmpeg's image size limit and its memory to a few MiB, however many frames a channel makes.
    """
    t, h, w, _ = clip.shape
    step = frames_per_call(t, h, w)
    for first in range(0, t, step):
        yield from _side_by_side(clip[first : first + step])


def _side_by_side(clip: np.ndarray) -> list[av.VideoFrame]:
    """One swscale call on the frames of ``clip`` placed side by side (see :func:`yuv420p_frames`)."""
    t, h, w, _ = clip.shape
    wide = np.ascontiguousarray(clip.transpose(1, 0, 2, 3)).reshape(h, t * w, 3)
    big = reformatter("rgb->yuv wide").reformat(
        av.VideoFrame.from_ndarray(wide, format="rgb24"), format="yuv420p", interpolation=Interpolation.BICUBIC
    )
    layout = ((0, h, w), (1, h // 2, w // 2), (2, h // 2, w // 2))  # plane, rows, columns of one frame
    planes = [np.frombuffer(memoryview(big.planes[i]), np.uint8).reshape(rows, -1)[:, : cols * t] for i, rows, cols in layout]
    return [
        av.VideoFrame.from_ndarray(
            np.concatenate([p[:, k * (p.shape[1] // t) : (k + 1) * (p.shape[1] // t)].reshape(-1) for p in planes]).reshape(h * 3 // 2, w),
            format="yuv420p",
        )
        for k in range(t)
    ]


def yuv420p_to_rgb(frames: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_yuv420p` (swscale bicubic, BT.601 limited): (T, H*3/2, W) -> (T, H, W, 3)."""
    r = reformatter("yuv->rgb")
    out = [
        r.reformat(
            av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="yuv420p"),
            format="rgb24",
            interpolation=Interpolation.BICUBIC,
        ).to_ndarray()
        for f in frames
    ]
    return np.stack(out)
