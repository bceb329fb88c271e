"""The codec registry and the validated settings of one encode: which encoders exist, what each
accepts, and how settings become encoder options. Nothing here encodes (transcode.py does).

Codecs (:data:`CODECS`, a registry that refuses name collisions): libx264 (decoded by FFmpeg's
h264), libx265 (hevc), libvpx-vp9 (vp9) and libsvtav1 (libdav1d), all from PyAV's own FFmpeg build.
Every encoder runs with one thread (``threads=1``; x265 ``pools=none:frame-threads=1``; SVT-AV1
``lp=1``: frame threading changes the bitstream with the core count), libx264 and libx265 at the
SIMD level ``CodecSettings.x264_asm`` (x264's own detection picks its AVX-512 code on AVX-512 CPUs,
which is not repeatable: x264_asm.py). Codec logs: x265 at ``log-level=error``; SVT-AV1 reads
``SVT_LOG`` (the engine sets 1, errors only, before its workers start).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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
    opts = {"preset": _preset(c), **_rate(c, {"crf": "crf", "qp": "qp"})}
    if c.x264_asm and (params := x264_asm.x264_params(c.x264_asm)):
        opts["x264-params"] = params
    return opts


def _x265_options(c: CodecSettings) -> dict[str, str]:
    params = ["log-level=error", "pools=none", "frame-threads=1"]
    if c.x264_asm and c.x264_asm != x264_asm.NATIVE:
        params.append(f"asm={c.x264_asm.lower()}")
    return {"preset": _preset(c), **_rate(c, {"crf": "crf", "qp": "qp"}), "x265-params": ":".join(params)}


def _vp9_options(c: CodecSettings) -> dict[str, str]:
    # constant quality is crf with b=0; row-mt off: one thread, one bitstream
    rate = {"crf": f"{c.crf:g}", "b": "0"} if c.crf is not None else {}
    return {"deadline": "good", "cpu-used": _preset(c), "row-mt": "0", **rate}


def _svtav1_options(c: CodecSettings) -> dict[str, str]:
    params = ["lp=1"] + (["rc=0"] if c.qp is not None else [])
    return {"preset": _preset(c), **_rate(c, {"crf": "crf", "qp": "qp"}), "svtav1-params": ":".join(params)}


def _preset(c: CodecSettings) -> str:
    """The preset: never None once CodecSettings has filled its default (``__post_init__``)."""
    assert c.preset is not None
    return c.preset


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
