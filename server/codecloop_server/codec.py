"""Real encoders and decoders through PyAV: ndarray in, ndarray/bytes out.

Codecs (:data:`CODECS`, a registry that refuses name collisions): libx264 (decoded by FFmpeg's
h264), libx265 (hevc), libvpx-vp9 (vp9) and libsvtav1 (libdav1d), all from PyAV's own FFmpeg build.

No transport or scheduling code lives here. Every function is a pure function of its arguments:
one encoder per clip with one thread (``threads=1``; x265 ``pools=none:frame-threads=1``; SVT-AV1
``lp=1``: frame threading changes the bitstream with the core count), libx264 and libx265 at the
SIMD level ``CodecSettings.x264_asm`` (x264's own detection picks its AVX-512 code on AVX-512 CPUs,
which is not repeatable: x264_asm.py), explicit flush, nothing shared between calls except a
per-thread swscale context cache. Codec logs: x265 at ``log-level=error``; SVT-AV1 reads
``SVT_LOG`` (the engine sets 1, errors only, before its workers start).

Colour conversion is FFmpeg's swscale with ``SWS_BICUBIC`` (what the ``ffmpeg`` CLI uses by
default for rgb24 <-> yuv420p), BT.601 limited range, so a clip converted here is bit-identical to
the CLI's conversion of the same rgb24 input (tested in tests/test_fidelity.py).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from codecloop_server import x264_asm
from codecloop_server.registry import Registry, shown
from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopValueError

PRESETS = (  # libx264's and libx265's
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
GOP_RANGE = (1, 1000)
FPS_RANGE = (1, 240)
BITRATE_RANGE = (1, 100_000)  # kbit/s
MIN_SIZE = 16  # smallest width and height of an encode (libx265 refuses 8x8)


@dataclass(frozen=True)
class CodecSpec:
    """What one encoder accepts, and how its settings become encoder options."""

    codec: str
    decoder: str
    crf_range: tuple[float, float]
    qp_range: tuple[int, int] | None  # None: no constant-quantizer mode
    presets: tuple[str, ...]
    default_preset: str
    simd_pinned: bool  # runs at CodecSettings.x264_asm
    annexb: bool  # a byte stream the decoder's parser splits (h264, hevc); else one packet per frame
    options: Callable[[CodecSettings], dict[str, str]]


def _x264_options(c: CodecSettings) -> dict[str, str]:
    opts = {"preset": c.preset, **_rate(c, {"crf": "crf", "qp": "qp"})}
    if c.x264_asm and (params := x264_asm.x264_params(c.x264_asm)):
        opts["x264-params"] = params
    return opts


def _x265_options(c: CodecSettings) -> dict[str, str]:
    params = ["log-level=error", "pools=none", "frame-threads=1"]
    if c.x264_asm and c.x264_asm != x264_asm.NATIVE:
        params.append(f"asm={c.x264_asm.lower()}")
    return {"preset": c.preset, **_rate(c, {"crf": "crf", "qp": "qp"}), "x265-params": ":".join(params)}


def _vp9_options(c: CodecSettings) -> dict[str, str]:
    # constant quality is crf with b=0; row-mt off: one thread, one bitstream
    rate = {"crf": f"{c.crf:g}", "b": "0"} if c.crf is not None else {}
    return {"deadline": "good", "cpu-used": c.preset, "row-mt": "0", **rate}


def _svtav1_options(c: CodecSettings) -> dict[str, str]:
    params = ["lp=1"] + (["rc=0"] if c.qp is not None else [])
    return {"preset": c.preset, **_rate(c, {"crf": "crf", "qp": "qp"}), "svtav1-params": ":".join(params)}


def _rate(c: CodecSettings, names: dict[str, str]) -> dict[str, str]:
    """crf / qp as the encoder option of that name (a bitrate goes to the context's bit_rate)."""
    if c.crf is not None:
        return {names["crf"]: f"{c.crf:g}"}
    if c.qp is not None:
        return {names["qp"]: str(c.qp)}
    return {}


CODECS: Registry[CodecSpec] = Registry("codec")


def register(spec: CodecSpec) -> CodecSpec:
    """Add a codec; a name that is already taken is refused."""
    return CODECS.add(spec.codec, spec)


register(CodecSpec("libx264", "h264", (0.0, 51.0), (0, 69), PRESETS, defaults.PRESET, True, True, _x264_options))
register(CodecSpec("libx265", "hevc", (0.0, 51.0), (0, 51), PRESETS, defaults.PRESET, True, True, _x265_options))
register(CodecSpec("libvpx-vp9", "vp9", (0.0, 63.0), None, tuple(map(str, range(9))), "4", False, False, _vp9_options))
register(CodecSpec("libsvtav1", "libdav1d", (1.0, 63.0), (1, 63), tuple(map(str, range(14))), "8", False, False, _svtav1_options))


@dataclass(frozen=True)
class CodecSettings:
    """One real-codec configuration. Frozen: it is a cache key and is never mutated per call.

    Attributes:
        codec: encoder name, a key of :data:`CODECS`.
        crf / qp / bitrate_kbps: the rate control, at most one given; none: ``crf`` =
            ``defaults.CRF``. crf 0 is lossless for libx264 only (libx265 at crf 0 is not lossless:
            49.1 dB measured; x265 needs ``lossless=1``, not offered); 0 is never treated as "unset".
        preset: a preset of the codec (``CodecSpec.presets``); None: its default.
        pix_fmt: encoder pixel format; only ``yuv420p``.
        gop: maximum keyframe interval in frames (x264 ``keyint``); 250 is x264's own default.
        fps: frame rate in frames per second (integer); rate control reads it.
        x264_asm: the SIMD level libx264 and libx265 run at (x264_asm.py): part of the settings
            because the bitstream depends on it. Defaults to the server's configured level; None
            for the codecs that do not take it.
    """

    codec: str = defaults.CODEC
    crf: float | None = None
    preset: str | None = None
    pix_fmt: str = defaults.PIX_FMT
    gop: int = defaults.GOP
    fps: int = defaults.FPS
    x264_asm: str | None = None
    qp: int | None = None
    bitrate_kbps: int | None = None

    def __post_init__(self) -> None:
        spec = CODECS.lookup(self.codec, "codec.codec")
        given = [n for n in ("crf", "qp", "bitrate_kbps") if getattr(self, n) is not None]
        if len(given) > 1:
            raise CodecLoopValueError(f"codec.{given[1]}: give at most one of crf, qp, bitrate_kbps (also got {given[0]})")
        if not given:
            object.__setattr__(self, "crf", float(defaults.CRF))
        if self.crf is not None:
            low, high = spec.crf_range
            if not (np.isfinite(self.crf) and low <= self.crf <= high):
                raise CodecLoopValueError(f"codec.crf: {self.crf} is outside the allowed range [{low:g}, {high:g}] for {self.codec}")
        if self.qp is not None:
            if spec.qp_range is None:
                raise CodecLoopValueError(f"codec.qp: {self.codec} offers no constant quantizer; use crf or bitrate_kbps")
            if not (spec.qp_range[0] <= self.qp <= spec.qp_range[1]):
                raise CodecLoopValueError(f"codec.qp: {self.qp} is outside the allowed range {list(spec.qp_range)} for {self.codec}")
        if self.bitrate_kbps is not None and not (BITRATE_RANGE[0] <= self.bitrate_kbps <= BITRATE_RANGE[1]):
            raise CodecLoopValueError(f"codec.bitrate_kbps: {self.bitrate_kbps} is outside the allowed range {list(BITRATE_RANGE)}")
        if self.preset is None:
            object.__setattr__(self, "preset", spec.default_preset)
        if self.preset not in spec.presets:
            raise CodecLoopValueError(f"codec.preset: unknown preset {shown(self.preset)} for {self.codec}; allowed: {spec.presets}")
        if self.pix_fmt not in PIX_FMTS:
            raise CodecLoopValueError(f"codec.pix_fmt: {shown(self.pix_fmt)} unsupported; allowed: {PIX_FMTS}")
        if not (GOP_RANGE[0] <= self.gop <= GOP_RANGE[1]):
            raise CodecLoopValueError(f"codec.gop: {self.gop} is outside the allowed range [1, 1000]")
        if not (FPS_RANGE[0] <= self.fps <= FPS_RANGE[1]):
            raise CodecLoopValueError(f"codec.fps: {self.fps} is outside the allowed range [1, 240]")
        if not spec.simd_pinned:
            if self.x264_asm is not None:
                raise CodecLoopValueError(f"codec.x264_asm: {self.codec} does not take a SIMD level; leave it unset")
            return
        if self.x264_asm is None:
            object.__setattr__(self, "x264_asm", x264_asm.default())
        if self.x264_asm != x264_asm.NATIVE and not (self.x264_asm in x264_asm.LEVELS and x264_asm.supported(self.x264_asm)):
            # x264 crashes on instructions the CPU lacks: never hand it such a level
            raise CodecLoopValueError(f"codec.x264_asm: {shown(self.x264_asm)} is not a level this CPU runs; allowed: {x264_asm.default()!r}")

    @property
    def spec(self) -> CodecSpec:
        return CODECS[self.codec]

    @property
    def crf_text(self) -> str:
        """CRF as the encoder receives it (``28``, ``23.5``)."""
        return f"{self.crf:g}"

    def ffmpeg_args(self) -> list[str]:
        """The equivalent ``ffmpeg`` CLI encoder arguments (used by the fidelity tests and docs)."""
        args = ["-c:v", self.codec, "-g", str(self.gop), "-threads", "1", "-pix_fmt", self.pix_fmt]
        if self.bitrate_kbps is not None:
            args += ["-b:v", f"{self.bitrate_kbps}k"]
        for key, value in self.spec.options(self).items():
            args += [f"-{'b:v' if key == 'b' else key}", value]
        return args


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
    big = _reformatter("rgb->yuv wide").reformat(
        av.VideoFrame.from_ndarray(wide, format="rgb24"), format="yuv420p", interpolation=Interpolation.BICUBIC
    )
    planes = [np.frombuffer(big.planes[i], np.uint8).reshape(rows, -1)[:, : cols * t] for i, rows, cols in ((0, h, w), (1, h // 2, w // 2), (2, h // 2, w // 2))]
    return [
        av.VideoFrame.from_ndarray(
            np.concatenate([p[:, k * (p.shape[1] // t) : (k + 1) * (p.shape[1] // t)].reshape(-1) for p in planes]).reshape(h * 3 // 2, w),
            format="yuv420p",
        )
        for k in range(t)
    ]


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
    if settings.bitrate_kbps is not None:
        ctx.bit_rate = settings.bitrate_kbps * 1000
    ctx.options = settings.spec.options(settings)
    return ctx


def _encode_packets(frames: Iterable[av.VideoFrame], settings: CodecSettings, width: int, height: int) -> list[bytes]:
    ctx = _encoder(settings, width, height)
    packets: list[bytes] = []
    for i, frame in enumerate(frames):
        frame.pts = i
        packets.extend(bytes(p) for p in ctx.encode(frame))
    packets.extend(bytes(p) for p in ctx.encode(None))  # explicit flush: B-frames and lookahead
    return packets


def _encode_frames(frames: Iterable[av.VideoFrame], settings: CodecSettings, width: int, height: int) -> bytes:
    return b"".join(_encode_packets(frames, settings, width, height))


def _decode_frames(bitstream: bytes, decoder: str = "h264") -> list[av.VideoFrame]:
    """Decode an Annex-B byte stream (h264, hevc)."""
    ctx = av.CodecContext.create(decoder, "r")
    ctx.thread_count = 1
    out = []
    # parse(None) flushes the parser: without it the last access unit stays buffered.
    for packet in [*ctx.parse(bitstream), *ctx.parse(None)]:
        out.extend(ctx.decode(packet))
    out.extend(ctx.decode(None))
    return out


def _decode_packets(packets: list[bytes], settings: CodecSettings) -> list[av.VideoFrame]:
    """Decode what :func:`_encode_packets` made with ``settings``."""
    spec = settings.spec
    if spec.annexb:
        return _decode_frames(b"".join(packets), spec.decoder)
    ctx = av.CodecContext.create(spec.decoder, "r")
    ctx.thread_count = 1
    out = []
    for data in packets:
        out.extend(ctx.decode(av.Packet(data)))
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
    _, h32, w = frames.shape
    packets = _encode_packets((av.VideoFrame.from_ndarray(f, format="yuv420p") for f in frames), settings, w, h32 * 2 // 3)
    decoded = np.stack([f.to_ndarray(format="yuv420p") for f in _decode_packets(packets, settings)])
    if decoded.shape != frames.shape:
        raise RuntimeError(f"decoder returned {decoded.shape}, expected {frames.shape}")
    return decoded, sum(map(len, packets))


def transcode_rgb(clip: np.ndarray, settings: CodecSettings) -> tuple[np.ndarray, int]:
    """uint8 (T, H, W, 3) RGB -> yuv420p -> encoder -> decoder -> RGB: (decoded (T, H, W, 3), encoded bytes).

    Exactly ``yuv420p_to_rgb(transcode_yuv(rgb_to_yuv420p(clip)))`` (tested), streamed: RGB ->
    yuv420p in side-by-side chunks (:func:`yuv420p_frames`), each packet decoded as soon as the
    encoder gives it, each decoded frame converted straight into the preallocated output. So besides
    the input and the output this holds only the codecs' own frame buffers and one chunk, not the
    clip's yuv420p frames, bitstream or decoded frames (memory.py's per-worker charge counts on it).
    """
    t, h, w, _ = clip.shape
    to_rgb = _reformatter("yuv->rgb")
    out = np.empty_like(clip)
    count = 0

    def store(frames: Iterable[av.VideoFrame]) -> None:
        nonlocal count
        for f in frames:
            if count >= t:
                raise RuntimeError(f"decoder returned more than {t} frames")
            out[count] = to_rgb.reformat(f, format="rgb24", interpolation=Interpolation.BICUBIC).to_ndarray()
            count += 1

    enc, dec = _encoder(settings, w, h), _StreamDecoder(settings)
    nbytes = 0
    for i, frame in enumerate(yuv420p_frames(clip)):
        frame.pts = i
        for packet in enc.encode(frame):
            data = bytes(packet)
            nbytes += len(data)
            store(dec.feed(data))
    for packet in enc.encode(None):  # explicit flush: B-frames and lookahead
        data = bytes(packet)
        nbytes += len(data)
        store(dec.feed(data))
    store(dec.flush())
    if count != t:
        raise RuntimeError(f"decoder returned {count} frames, expected {t}")
    return out, nbytes


class _StreamDecoder:
    """Decodes what an encoder of ``settings`` makes, packet by packet, as :func:`_decode_packets`
    does for the whole list: Annex-B streams (h264, hevc) through the decoder's parser, which keeps
    an access unit until the next one starts, so feeding packets one at a time or joined gives the
    same frames (tested); other codecs one packet per frame."""

    def __init__(self, settings: CodecSettings) -> None:
        self.annexb = settings.spec.annexb
        self.ctx = av.CodecContext.create(settings.spec.decoder, "r")
        self.ctx.thread_count = 1

    def feed(self, data: bytes) -> Iterator[av.VideoFrame]:
        for packet in self.ctx.parse(data) if self.annexb else [av.Packet(data)]:
            yield from self.ctx.decode(packet)

    def flush(self) -> Iterator[av.VideoFrame]:
        if self.annexb:  # parse(None) flushes the parser: without it the last access unit stays buffered
            for packet in self.ctx.parse(None):
                yield from self.ctx.decode(packet)
        yield from self.ctx.decode(None)


@functools.cache
def x264_build() -> str:
    """x264's version as its SEI string states it, e.g. ``core 165 r3222 b35605a``."""
    bitstream = encode_yuv420p(np.full((1, 24, 16), 128, np.uint8), CodecSettings(preset="ultrafast"))
    marker = bitstream.find(b"x264 - core ")
    if marker < 0:
        return "unknown"
    return bitstream[marker + 7 : bitstream.find(b" - ", marker + 7)].decode()


@functools.cache
def encoder_version(codec: str) -> str:
    """The encoder library's version as far as this build tells it: x264's and x265's from the
    string they write into every bitstream, for the others the FFmpeg build they come with."""
    if codec == "libx264":
        return x264_build()
    if codec == "libx265":
        bitstream = encode_yuv420p(np.full((1, 24, 16), 128, np.uint8), CodecSettings("libx265", preset="ultrafast"))
        marker = bitstream.find(b"x265 (build ")
        if marker >= 0:
            return bitstream[marker : bitstream.find(b":[", marker)].decode(errors="replace")  # "x265 (build 216) - 4.2+1-e444744"
    return f"in FFmpeg {getattr(av, 'ffmpeg_version_info', '?')} (PyAV {av.__version__})"


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
