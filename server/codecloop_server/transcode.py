"""The encode step production runs: uint8 RGB clip -> yuv420p -> a real encoder -> its decoder ->
RGB (:func:`transcode_rgb`), streamed; ndarray in, ndarray and a byte count out.

No transport or scheduling code lives here. Every function is a pure function of its arguments:
one encoder per clip with the options of its :class:`~codecloop_server.codecs.CodecSettings` (one
thread, a pinned SIMD level: codecs.py), explicit flush, nothing shared between calls except
convert.py's per-thread swscale contexts. reference.py holds the plain per-frame pipeline this one
equals bit for bit (tests/test_transcode.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import Literal

import av
import numpy as np
from av.video.codeccontext import VideoCodecContext
from av.video.reformatter import Interpolation

from codecloop_server.codecs import CodecSettings
from codecloop_server.convert import reformatter, yuv420p_frames


def video_context(name: str, mode: Literal["r", "w"]) -> VideoCodecContext:
    """A fresh one-thread encoder (``"w"``) or decoder (``"r"``) ``name``; every registered codec is a video codec."""
    ctx = av.CodecContext.create(name, mode)
    assert isinstance(ctx, VideoCodecContext), f"{name} is not a video codec"
    ctx.thread_count = 1
    return ctx


def _encoder(settings: CodecSettings, width: int, height: int) -> VideoCodecContext:
    ctx = video_context(settings.codec, "w")
    ctx.width = width
    ctx.height = height
    ctx.pix_fmt = settings.pix_fmt
    ctx.time_base = Fraction(1, settings.fps)
    ctx.framerate = Fraction(settings.fps, 1)
    ctx.gop_size = settings.gop
    if settings.bitrate_kbps is not None:
        ctx.bit_rate = settings.bitrate_kbps * 1000
    ctx.options = settings.spec.options(settings)
    return ctx


def encode_packets(frames: Iterable[av.VideoFrame], settings: CodecSettings, width: int, height: int) -> list[bytes]:
    """Encode ``frames`` (width x height, ``settings.pix_fmt``) with a fresh encoder; its packets in order."""
    ctx = _encoder(settings, width, height)
    packets: list[bytes] = []
    for i, frame in enumerate(frames):
        frame.pts = i
        packets.extend(bytes(p) for p in ctx.encode(frame))
    packets.extend(bytes(p) for p in ctx.encode(None))  # explicit flush: B-frames and lookahead
    return packets


def transcode_rgb(clip: np.ndarray, settings: CodecSettings) -> tuple[np.ndarray, int]:
    """uint8 (T, H, W, 3) RGB -> yuv420p -> encoder -> decoder -> RGB: (decoded (T, H, W, 3), encoded bytes).

    Exactly reference.py's ``yuv420p_to_rgb(transcode_yuv(rgb_to_yuv420p(clip)))`` (tested),
    streamed: RGB -> yuv420p in side-by-side chunks (convert.yuv420p_frames), each packet decoded as
    soon as the encoder gives it, each decoded frame converted straight into the preallocated
    output. So besides the input and the output this holds only the codecs' own frame buffers and
    one chunk, not the clip's yuv420p frames, bitstream or decoded frames (memory.py's per-worker
    charge counts on it).
    """
    t, h, w, _ = clip.shape
    to_rgb = reformatter("yuv->rgb")
    out = np.empty_like(clip)
    count = 0

    def store(frames: Iterable[av.VideoFrame]) -> None:
        nonlocal count
        for f in frames:
            if count >= t:
                raise RuntimeError(f"decoder returned more than {t} frames")
            out[count] = to_rgb.reformat(f, format="rgb24", interpolation=Interpolation.BICUBIC).to_ndarray()
            count += 1

    enc, dec = _encoder(settings, w, h), StreamDecoder(settings)
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


class StreamDecoder:
    """Decodes what an encoder of ``settings`` makes, packet by packet, as reference.decode_packets
    does for the whole list: Annex-B streams (h264, hevc) through the decoder's parser, which keeps
    an access unit until the next one starts, so feeding packets one at a time or joined gives the
    same frames (tested); other codecs one packet per frame."""

    def __init__(self, settings: CodecSettings) -> None:
        self.annexb = settings.spec.annexb
        self.ctx = video_context(settings.spec.decoder, "r")

    def feed(self, data: bytes) -> Iterator[av.VideoFrame]:
        """The frames that ``data`` (one encoder packet) completes, in order."""
        for packet in self.ctx.parse(data) if self.annexb else [av.Packet(data)]:
            yield from self.ctx.decode(packet)

    def flush(self) -> Iterator[av.VideoFrame]:
        """The frames still held by the parser and the decoder, at the end of the stream."""
        if self.annexb:  # parse(None) flushes the parser: without it the last access unit stays buffered
            for packet in self.ctx.parse(None):
                yield from self.ctx.decode(packet)
        yield from self.ctx.decode(None)
