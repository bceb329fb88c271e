"""Reference implementations of the encode step: not used in production; tests/test_transcode.py
holds the fast path (transcode.py) to them, and tests/test_fidelity.py holds them to the ffmpeg CLI.

Each stage is materialised, frame by frame: yuv420p frames in (convert.rgb_to_yuv420p), the whole
bitstream, then the whole decode. Simple to read and to compare with the CLI's staged
``rawvideo -> encoder -> file -> decoder -> rawvideo``; the fast path streams the same stages and
gives the same frames and byte count. Benchmarks time the stages separately through these.
"""

from __future__ import annotations

import av
import numpy as np

from codecloop_server.codecs import CodecSettings
from codecloop_server.transcode import encode_packets, video_context


def decode_annexb(bitstream: bytes, decoder: str = "h264") -> list[av.VideoFrame]:
    """Decode an Annex-B byte stream (h264, hevc) with a fresh one-thread decoder, in display order."""
    ctx = video_context(decoder, "r")
    out = []
    # parse(None) flushes the parser: without it the last access unit stays buffered.
    for packet in [*ctx.parse(bitstream), *ctx.parse(None)]:
        out.extend(ctx.decode(packet))
    out.extend(ctx.decode(None))
    return out


def decode_packets(packets: list[bytes], settings: CodecSettings) -> list[av.VideoFrame]:
    """Decode what transcode.encode_packets made with ``settings``: an Annex-B codec's packets joined
    into one byte stream, any other codec's one packet per frame."""
    spec = settings.spec
    if spec.annexb:
        return decode_annexb(b"".join(packets), spec.decoder)
    ctx = video_context(spec.decoder, "r")
    out = []
    for data in packets:
        out.extend(ctx.decode(av.Packet(data)))
    out.extend(ctx.decode(None))
    return out


def _yuv_frames(frames: np.ndarray) -> list[av.VideoFrame]:
    return [av.VideoFrame.from_ndarray(f, format="yuv420p") for f in frames]


def encode_yuv420p(frames: np.ndarray, settings: CodecSettings) -> bytes:
    """Encode yuv420p frames with a fresh encoder; return the bitstream (Annex-B H.264 for libx264).

    Args:
        frames: uint8 (T, H * 3 // 2, W) planar yuv420p (see convert.rgb_to_yuv420p).
        settings: the codec configuration.
    """
    _, h32, w = frames.shape
    return b"".join(encode_packets(_yuv_frames(frames), settings, w, h32 * 2 // 3))


def decode_h264(bitstream: bytes) -> np.ndarray:
    """Decode an Annex-B H.264 bitstream with FFmpeg's h264 decoder to (T, H * 3 // 2, W) uint8."""
    return np.stack([f.to_ndarray() for f in decode_annexb(bitstream)])


def transcode_yuv(frames: np.ndarray, settings: CodecSettings) -> tuple[np.ndarray, int]:
    """Encode then decode one clip: (T, H*3/2, W) yuv420p -> (decoded yuv420p, encoded bytes)."""
    _, h32, w = frames.shape
    packets = encode_packets(_yuv_frames(frames), settings, w, h32 * 2 // 3)
    decoded = np.stack([f.to_ndarray(format="yuv420p") for f in decode_packets(packets, settings)])
    if decoded.shape != frames.shape:
        raise RuntimeError(f"decoder returned {decoded.shape}, expected {frames.shape}")
    return decoded, sum(map(len, packets))
