"""``codecloop channel INPUT OUTPUT --channel NAME``: one channel of a server preset run on a whole
video file at its own size, streaming, so that mark -> channel -> detect can be tried by hand.

The steps are the preset's (channels.py), applied as on the carriers but at the file's size, the
file standing for itself: ``Resize(max_short_side=N)`` takes an H x W video whose short side is over N
to the even sizes nearest s H x s W with s = N / min(H, W) (so "messaging", at most 540 lines, takes
1920x1080 to 960x540 and leaves 640x360 as it is), ``Resize(scale=s)`` scales by s; ``FrameRate(fps)`` keeps, at each output time j / fps, the latest input
frame (input frame i is at i / INPUT's average frame rate); every encode step runs the server's
encoder settings (``CodecSettings``: options, one thread, GOP) at the current frame rate and decodes
again before the next step. OUTPUT holds the last encode's bitstream as produced (not re-encoded),
in OUTPUT's container; audio streams are copied packet for packet. Nothing is mapped back: OUTPUT
has the size and frame rate the channel delivers. Memory: a few frames per step plus the encoders'
own buffers; never the video. On a lossless file of one carrier clip at 25 fps it is the server's
channel bit for bit: its output mapped back as ``Channel.apply`` maps back equals what the evaluation
scores (tests/test_file_channel.py).

Run as ``python -m codecloop_server.file_channel`` (the SDK's ``codecloop channel`` executes it: the
SDK never imports the server). Bad input: exit 2 and one line naming the problem.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from codecloop_server import channels
from codecloop_server.codecs import CodecSettings
from codecloop_server.convert import rgb_to_yuv420p, yuv420p_to_rgb
from codecloop_wire.errors import CodecLoopError, CodecLoopValueError


def find_channel(name: str) -> channels.Channel:
    """A channel by its name (``social-crf28``) or by a preset that has one channel (``messaging``)."""
    names = {c.name: c for p in channels.PRESETS.values() for c in p.channels}
    if name in names:
        return names[name]
    preset = channels.PRESETS.get(name)
    if preset is not None and len(preset.channels) == 1:
        return preset.channels[0]
    single = {p.name for p in channels.PRESETS.values() if len(p.channels) == 1}
    raise CodecLoopValueError(f"channel: {name!r} is not a channel; allowed: {sorted(set(names) | single)}")


def _encoder(settings: CodecSettings, width: int, height: int, rate: Fraction, ctx=None):
    """The server's encoder settings (codecs.py) at ``rate`` frames per second and the file's size."""
    ctx = ctx if ctx is not None else av.CodecContext.create(settings.codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, settings.pix_fmt
    ctx.time_base, ctx.framerate = 1 / rate, rate
    ctx.gop_size = settings.gop
    ctx.thread_count = 1
    if settings.bitrate_kbps is not None:
        ctx.bit_rate = settings.bitrate_kbps * 1000
    ctx.options = settings.spec.options(dataclasses.replace(settings, fps=max(1, min(240, round(rate)))))
    return ctx


def _yuv_frame(rgb: np.ndarray, pts: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(rgb[None])[0], format="yuv420p")
    frame.pts = pts
    return frame


def plan(steps: tuple, height: int, width: int, rate: Fraction) -> tuple[int, int, Fraction]:
    """(height, width, rate) of the frames that reach the last encode step; CodecLoopValueError naming a step that cannot run."""
    last = max(i for i, s in enumerate(steps) if isinstance(s, CodecSettings))
    if last != len(steps) - 1:
        raise CodecLoopValueError(f"channel.steps[{last + 1}]: a step after the last encode; a file channel writes the last encode's bitstream")
    for i, step in enumerate(steps):
        if isinstance(step, channels.Resize):
            height, width = step.size(height, width)
        elif isinstance(step, channels.Crop):
            if step.x + step.width > width or step.y + step.height > height:
                raise CodecLoopValueError(f"channel.steps[{i}].crop: {step.width}x{step.height}+{step.x}+{step.y} does not fit {width}x{height}")
            height, width = step.height, step.width
        elif isinstance(step, channels.FrameRate):
            rate = Fraction(step.fps)
        else:
            channels.check_encode_size(step, height, width, f"channel.steps[{i}].encode")
    return height, width, rate


def _steps(frames: Iterator[np.ndarray], steps: tuple, rate: Fraction, enc) -> Iterator[av.Packet]:
    """RGB frames at ``rate`` through ``steps`` (the last one an encode, run by the opened encoder ``enc``); yields its packets."""
    for step in steps[:-1]:
        frames, rate = _step(frames, step, rate)
    for j, rgb in enumerate(frames):
        yield from enc.encode(_yuv_frame(rgb, j))
    yield from enc.encode(None)


def _step(frames: Iterator[np.ndarray], step, rate: Fraction) -> tuple[Iterator[np.ndarray], Fraction]:
    """One step, streamed: (frames out, their rate)."""
    if isinstance(step, channels.Resize):
        return (_resized(f, step) for f in frames), rate
    if isinstance(step, channels.Crop):
        return (np.ascontiguousarray(f[step.y : step.y + step.height, step.x : step.x + step.width]) for f in frames), rate
    if isinstance(step, channels.FrameRate):
        return _resample(frames, rate, Fraction(step.fps)), Fraction(step.fps)
    return _transcode(frames, step, rate), rate


def _resized(frame: np.ndarray, step: channels.Resize) -> np.ndarray:
    """One (H, W, 3) frame through a resize step; a frame the step leaves at its size is not resampled
    (a ``max_short_side`` above the frame's short side)."""
    h, w = step.size(*frame.shape[:2])
    return frame if (h, w) == frame.shape[:2] else channels.resize(frame[None], h, w, step.filter)[0]


def _resample(frames: Iterator[np.ndarray], rate: Fraction, fps: Fraction) -> Iterator[np.ndarray]:
    """Output frame j (time j / fps) is the latest input frame at or before it (channels._latest_frames)."""
    j = 0
    for i, f in enumerate(frames):
        while j * rate < (i + 1) * fps:  # j / fps < (i + 1) / rate: frame i is the latest at time j / fps
            yield f
            j += 1


def _transcode(frames: Iterator[np.ndarray], settings: CodecSettings, rate: Fraction) -> Iterator[np.ndarray]:
    """Encode and decode again (an encode step that is not the last), frame by frame."""
    dec = av.CodecContext.create(settings.spec.decoder, "r")
    dec.thread_count = 1
    first = next(frames, None)
    if first is None:
        return
    enc = _encoder(settings, first.shape[1], first.shape[0], rate)
    for packet in _steps(itertools.chain([first], frames), (settings,), rate, enc):
        for frame in dec.decode(packet):
            yield yuv420p_to_rgb(frame.reformat(format="yuv420p").to_ndarray()[None])[0]
    for frame in dec.decode(None):
        yield yuv420p_to_rgb(frame.reformat(format="yuv420p").to_ndarray()[None])[0]


def apply_to_file(input: str | Path, output: str | Path, name: str) -> str:
    """Run channel ``name`` on INPUT, write OUTPUT; returns one line saying what was done."""
    channel = find_channel(name)
    src, dst = Path(input), Path(output)
    if not src.is_file():
        raise CodecLoopValueError(f"input: {str(src)!r} is not a file")
    try:
        inp = av.open(str(src))
    except av.FFmpegError as err:
        raise CodecLoopValueError(f"input: {str(src)!r} cannot be read as a video ({err})") from None
    tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.tmp{dst.suffix}")
    try:
        with inp, av.open(str(tmp), "w") as out:
            if not inp.streams.video:
                raise CodecLoopValueError(f"input: {str(src)!r} has no video stream")
            vin = inp.streams.video[0]
            vin.thread_type = "AUTO"
            rate = vin.average_rate or vin.guessed_rate or Fraction(25)
            ih, iw = vin.codec_context.height, vin.codec_context.width
            h, w, r = plan(channel.steps, ih, iw, rate)
            vout = out.add_stream(channel.final_codec.codec, rate=r)
            vout.time_base = 1 / r
            enc = _encoder(channel.final_codec, w, h, r, vout.codec_context)
            audio = {s.index: out.add_stream_from_template(s) for s in inp.streams.audio}

            def video() -> Iterator[np.ndarray]:
                for packet in inp.demux(vin, *inp.streams.audio):
                    if packet.stream.index in audio:
                        if packet.dts is not None:
                            packet.stream = audio[packet.stream.index]
                            out.mux(packet)
                        continue
                    for frame in packet.decode():
                        yield frame.reformat(format="rgb24", interpolation=av.video.reformatter.Interpolation.BICUBIC).to_ndarray()

            frames = 0
            for packet in _steps(video(), channel.steps, rate, enc):
                packet.stream = vout
                out.mux(packet)
                frames += packet.size > 0
            if not frames:
                raise CodecLoopValueError(f"input: {str(src)!r} decodes to no video frame")
        os.replace(tmp, dst)
    except av.FFmpegError as err:
        raise CodecLoopValueError(f"channel {name} {str(src)!r} -> {str(dst)!r}: {type(err).__name__}: {err}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return f"{dst}: channel {channel.name} took {iw}x{ih} at {float(rate):g} fps to {w}x{h} at {float(r):g} fps, {frames} frames ({_describe(channel)})"


def _describe(channel: channels.Channel) -> str:
    parts = []
    for s in channel.steps:
        if isinstance(s, channels.Resize):
            if s.max_short_side is not None:
                parts.append(f"resize to at most {s.max_short_side} lines {s.filter}")
            else:
                parts.append(f"resize x{s.scale:g} {s.filter}" if s.scale is not None else f"resize to {s.width}x{s.height}")
        elif isinstance(s, channels.Crop):
            parts.append(f"crop {s.width}x{s.height}+{s.x}+{s.y}")
        elif isinstance(s, channels.FrameRate):
            parts.append(f"{s.fps} fps")
        else:
            rc = f"CRF {s.crf:g}" if s.crf is not None else f"QP {s.qp}" if s.qp is not None else f"{s.bitrate_kbps} kbit/s"
            parts.append(f"{s.codec} {rc} preset {s.preset}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="codecloop channel",
        description="Run one channel of a server preset on a video file at its own size, streaming; OUTPUT has the size and frame rate "
        "the channel delivers (docs/deployment.md).",
    )  # fmt: skip
    p.add_argument("input", help="video file (its first video stream; audio is copied)")
    p.add_argument("output", help="the channel's output video (.mp4 .mkv ...: the last encode's bitstream)")
    p.add_argument("--channel", required=True, help="a preset channel: social-crf23, social-crf28, messaging, reupload, vp9-full, ...")
    args = p.parse_args(argv)
    try:
        print(apply_to_file(args.input, args.output, args.channel))
    except CodecLoopError as err:
        print(f"codecloop channel: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
