"""Real libx264 encode and FFmpeg h264 decode through PyAV: ndarray in, ndarray/bytes out.

No transport or scheduling code lives here. Every function is a pure function of its arguments:
one encoder per clip with ``threads=1`` (x264 frame threading changes the bitstream with the core
count) at the SIMD level ``CodecSettings.x264_asm`` (x264's own detection picks its AVX-512 code on
AVX-512 CPUs, which is not repeatable: x264_asm.py), explicit flush, nothing shared between calls
except a per-thread swscale context cache.

Colour conversion is FFmpeg's swscale with ``SWS_BICUBIC`` (what the ``ffmpeg`` CLI uses by
default for rgb24 <-> yuv420p), BT.601 limited range, so a clip converted here is bit-identical to
the CLI's conversion of the same rgb24 input (tested in tests/test_fidelity.py).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from codecloop_server import x264_asm
from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopValueError

CODECS = ("libx264",)
PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)
PIX_FMTS = ("yuv420p",)
CRF_RANGE = (0.0, 51.0)
GOP_RANGE = (1, 1000)
FPS_RANGE = (1, 240)


@dataclass(frozen=True)
class CodecSettings:
    """One real-codec configuration. Frozen: it is a cache key and is never mutated per call.

    Attributes:
        codec: encoder name; only ``libx264``.
        crf: constant rate factor in [0, 51]; 0 is lossless (never treated as "unset").
        preset: an x264 preset name (``PRESETS``).
        pix_fmt: encoder pixel format; only ``yuv420p``.
        gop: maximum keyframe interval in frames (x264 ``keyint``); 250 is x264's own default.
        fps: frame rate in frames per second (integer); x264's rate control reads it.
        x264_asm: the SIMD level x264 runs at (x264_asm.py): part of the settings because the
            bitstream depends on it. Defaults to the server's configured level.
    """

    codec: str = defaults.CODEC
    crf: float = defaults.CRF
    preset: str = defaults.PRESET
    pix_fmt: str = defaults.PIX_FMT
    gop: int = defaults.GOP
    fps: int = defaults.FPS
    x264_asm: str = field(default_factory=x264_asm.default)

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise CodecLoopValueError(f"codec.codec: unknown codec {self.codec!r}; allowed: {CODECS}")
        if not (CRF_RANGE[0] <= self.crf <= CRF_RANGE[1]) or not np.isfinite(self.crf):
            raise CodecLoopValueError(f"codec.crf: {self.crf} is outside the allowed range [0, 51]")
        if self.preset not in PRESETS:
            raise CodecLoopValueError(f"codec.preset: unknown preset {self.preset!r}; allowed: {PRESETS}")
        if self.pix_fmt not in PIX_FMTS:
            raise CodecLoopValueError(f"codec.pix_fmt: {self.pix_fmt!r} unsupported; allowed: {PIX_FMTS}")
        if not (GOP_RANGE[0] <= self.gop <= GOP_RANGE[1]):
            raise CodecLoopValueError(f"codec.gop: {self.gop} is outside the allowed range [1, 1000]")
        if not (FPS_RANGE[0] <= self.fps <= FPS_RANGE[1]):
            raise CodecLoopValueError(f"codec.fps: {self.fps} is outside the allowed range [1, 240]")
        if self.x264_asm != x264_asm.NATIVE and not (self.x264_asm in x264_asm.LEVELS and x264_asm.supported(self.x264_asm)):
            # x264 crashes on instructions the CPU lacks: never hand it such a level
            raise CodecLoopValueError(f"codec.x264_asm: {self.x264_asm!r} is not a level this CPU runs; allowed: {x264_asm.default()!r}")

    @property
    def crf_text(self) -> str:
        """CRF as x264 receives it (``28``, ``23.5``)."""
        return f"{self.crf:g}"

    def ffmpeg_args(self) -> list[str]:
        """The equivalent ``ffmpeg`` CLI encoder arguments (used by the fidelity test and docs)."""
        return [
            "-c:v", self.codec, "-crf", self.crf_text, "-preset", self.preset,
            "-g", str(self.gop), "-threads", "1", "-pix_fmt", self.pix_fmt,
        ] + (["-x264-params", params] if (params := x264_asm.x264_params(self.x264_asm)) else [])  # fmt: skip


_local = threading.local()


def _reformatter(direction: str) -> VideoReformatter:
    # One reformatter per thread and direction keeps swscale's cached context alive (0.2 ms instead
    # of 0.6 ms per frame); alternating directions on one would rebuild it every time.
    cache = _local.__dict__.setdefault("reformatters", {})
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
    r = _reformatter("rgb->yuv")
    out = [
        r.reformat(
            av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24"),
            format="yuv420p",
            interpolation=Interpolation.BICUBIC,
        ).to_ndarray()
        for f in frames
    ]
    return np.stack(out)


def yuv420p_to_rgb(frames: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_yuv420p` (swscale bicubic, BT.601 limited): (T, H*3/2, W) -> (T, H, W, 3)."""
    r = _reformatter("yuv->rgb")
    out = [
        r.reformat(
            av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="yuv420p"),
            format="rgb24",
            interpolation=Interpolation.BICUBIC,
        ).to_ndarray()
        for f in frames
    ]
    return np.stack(out)


def _encoder(settings: CodecSettings, width: int, height: int) -> av.CodecContext:
    ctx = av.CodecContext.create(settings.codec, "w")
    ctx.width = width
    ctx.height = height
    ctx.pix_fmt = settings.pix_fmt
    ctx.time_base = Fraction(1, settings.fps)
    ctx.framerate = Fraction(settings.fps, 1)
    ctx.gop_size = settings.gop
    ctx.thread_count = 1
    ctx.options = {"crf": settings.crf_text, "preset": settings.preset}
    if params := x264_asm.x264_params(settings.x264_asm):
        ctx.options = {**ctx.options, "x264-params": params}
    return ctx


def _encode_frames(frames: Iterable[av.VideoFrame], settings: CodecSettings, width: int, height: int) -> bytes:
    ctx = _encoder(settings, width, height)
    chunks: list[bytes] = []
    for i, frame in enumerate(frames):
        frame.pts = i
        chunks.extend(bytes(p) for p in ctx.encode(frame))
    chunks.extend(bytes(p) for p in ctx.encode(None))  # explicit flush: B-frames and lookahead
    return b"".join(chunks)


def _decode_frames(bitstream: bytes) -> list[av.VideoFrame]:
    ctx = av.CodecContext.create("h264", "r")
    ctx.thread_count = 1
    out = []
    # parse(None) flushes the parser: without it the last access unit stays buffered.
    for packet in [*ctx.parse(bitstream), *ctx.parse(None)]:
        out.extend(ctx.decode(packet))
    out.extend(ctx.decode(None))
    return out


def encode_yuv420p(frames: np.ndarray, settings: CodecSettings) -> bytes:
    """Encode yuv420p frames with a fresh libx264 encoder; return the Annex-B H.264 bitstream.

    Args:
        frames: uint8 (T, H * 3 // 2, W) planar yuv420p (see :func:`rgb_to_yuv420p`).
        settings: the codec configuration.
    """
    _, h32, w = frames.shape
    return _encode_frames((av.VideoFrame.from_ndarray(f, format="yuv420p") for f in frames), settings, w, h32 * 2 // 3)


def decode_h264(bitstream: bytes) -> np.ndarray:
    """Decode an Annex-B H.264 bitstream with FFmpeg's h264 decoder to (T, H * 3 // 2, W) uint8."""
    return np.stack([f.to_ndarray() for f in _decode_frames(bitstream)])


def transcode_yuv(frames: np.ndarray, settings: CodecSettings) -> tuple[np.ndarray, int]:
    """Encode then decode one clip: (T, H*3/2, W) yuv420p -> (decoded yuv420p, encoded bytes)."""
    bitstream = encode_yuv420p(frames, settings)
    decoded = decode_h264(bitstream)
    if decoded.shape != frames.shape:
        raise RuntimeError(f"decoder returned {decoded.shape}, expected {frames.shape}")
    return decoded, len(bitstream)


def transcode_rgb(clip: np.ndarray, settings: CodecSettings) -> tuple[np.ndarray, int]:
    """uint8 (T, H, W, 3) RGB -> yuv420p -> libx264 -> h264 -> RGB: (decoded (T, H, W, 3), encoded bytes).

    Exactly ``yuv420p_to_rgb(decode_h264(encode_yuv420p(rgb_to_yuv420p(clip))))`` (tested), but
    the swscale output frames go straight into the encoder and out of the decoder, skipping four
    numpy <-> frame copies per frame.
    """
    t, h, w, _ = clip.shape
    to_yuv, to_rgb = _reformatter("rgb->yuv"), _reformatter("yuv->rgb")
    yuv = (
        to_yuv.reformat(av.VideoFrame.from_ndarray(f, format="rgb24"), format="yuv420p", interpolation=Interpolation.BICUBIC)
        for f in clip
    )
    bitstream = _encode_frames(yuv, settings, w, h)
    decoded = [
        to_rgb.reformat(f, format="rgb24", interpolation=Interpolation.BICUBIC).to_ndarray() for f in _decode_frames(bitstream)
    ]
    if len(decoded) != t:
        raise RuntimeError(f"decoder returned {len(decoded)} frames, expected {t}")
    return np.stack(decoded), len(bitstream)


@functools.cache
def x264_build() -> str:
    """x264's version as its SEI string states it, e.g. ``core 165 r3222 b35605a``."""
    bitstream = encode_yuv420p(np.full((1, 24, 16), 128, np.uint8), CodecSettings(preset="ultrafast"))
    marker = bitstream.find(b"x264 - core ")
    if marker < 0:
        return "unknown"
    return bitstream[marker + 7 : bitstream.find(b" - ", marker + 7)].decode()


def versions() -> dict[str, str]:
    """PyAV, FFmpeg library and x264 versions, and the x264 SIMD level this process encodes at."""
    lib = av.library_versions
    return {
        "pyav": av.__version__,
        "ffmpeg": getattr(av, "ffmpeg_version_info", ""),
        "libavcodec": ".".join(map(str, lib.get("libavcodec", ()))),
        "libswscale": ".".join(map(str, lib.get("libswscale", ()))),
        "x264": x264_build(),
        "x264_asm": x264_asm.default(),
    }
