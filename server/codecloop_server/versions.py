"""The versions of the codec stack this process runs (GetServerInfo, result labels): PyAV, FFmpeg's
libraries, and each encoder as the bitstream it writes states it."""

from __future__ import annotations

import functools

import av
import numpy as np

from codecloop_server import x264_asm
from codecloop_server.codecs import CodecSettings
from codecloop_server.transcode import encode_packets


def _gray_bitstream(settings: CodecSettings) -> bytes:
    """One mid-gray 16x16 frame encoded with ``settings``: enough for the encoder's version SEI."""
    frame = av.VideoFrame.from_ndarray(np.full((24, 16), 128, np.uint8), format="yuv420p")
    return b"".join(encode_packets([frame], settings, 16, 16))


@functools.cache
def x264_build() -> str:
    """x264's version as its SEI string states it, e.g. ``core 165 r3222 b35605a``."""
    bitstream = _gray_bitstream(CodecSettings(preset="ultrafast"))
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
        bitstream = _gray_bitstream(CodecSettings("libx265", preset="ultrafast"))
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
