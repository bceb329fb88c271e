"""``codecloop mark``: add a signature to a whole video file, at its own resolution, frame by frame.

The pattern is the deployment rule's (``codecloop_wire.deploy``: tiled from pixel (0, 0) at the
signature's own pixel scale, cycled in time), added by the server's poisoning rule; epsilon and the
signature are checked by the same functions the server's request parsing calls.

What the output keeps: INPUT's width and height, every decoded frame with its own timestamp (so the
frame rate, variable or not, and the length are INPUT's), the colour tags (matrix, primaries,
transfer) of the video stream, and every audio stream, remuxed packet for packet (not re-encoded).
Subtitle and data streams are not carried (reported in :class:`MarkResult`).

Output codec (``codec`` argument, default from OUTPUT's extension):

- ``libx264`` (default for .mp4 .mov .m4v .mkv): CRF 18, preset medium, yuv420p, BT.601/709 matrix
  as INPUT's; visually lossless, but the 4:2:0 chroma and CRF 18 round a 2/255 mark a little.
- ``ffv1`` (default for .avi and .nut, or any of .mkv .avi .nut on request): lossless RGB (bgr0):
  the file decodes to exactly the marked rgb24 frames; large files.

Colour conversion is swscale bicubic (the server's), in INPUT's colour matrix both ways. Memory:
one decoded frame, its float32 pattern and marked copy (about 30 bytes per pixel), plus the codecs'
own buffers (x264's lookahead); never the video (tests/test_mark.py bounds the peak RSS on 1080p).
Encoder threads: by default min(4, CPU cores), so that x264's per-thread frames stay a fixed amount
on big machines too (the bitstream then depends on the thread count); ``threads=1`` gives the same
bytes on every machine.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from codecloop_wire import deploy
from codecloop_wire.errors import CodecLoopValueError

CODECS = ("libx264", "ffv1")
DEFAULT_CRF = 18.0
DEFAULT_PRESET = "medium"
_DEFAULT_CODEC = {".mp4": "libx264", ".mov": "libx264", ".m4v": "libx264", ".mkv": "libx264", ".avi": "ffv1", ".nut": "ffv1"}
_CODEC_SUFFIXES = {"libx264": (".mp4", ".mov", ".m4v", ".mkv"), "ffv1": (".mkv", ".avi", ".nut")}


@dataclass
class MarkResult:
    """What :func:`mark_video` wrote.

    Attributes:
        output: the file written.
        frames: video frames marked and written (all of INPUT's decoded frames).
        width, height: frame size in pixels (INPUT's).
        fps: INPUT's average frame rate (frames per second; 0 when the container does not say).
        codec: the output video encoder and its settings, in words.
        audio_streams: audio streams copied packet for packet.
        dropped_streams: other streams not carried ("subtitle #2", ...).
        signature_shape: (T, h, w, 3) of the signature.
        epsilon: the L-inf budget used, [0, 1] units.
    """

    output: str
    frames: int
    width: int
    height: int
    fps: float
    codec: str
    audio_streams: int
    signature_shape: tuple[int, ...]
    epsilon: float
    dropped_streams: list[str] = field(default_factory=list)


def load_signature(path: str | Path) -> np.ndarray:
    """A signature ``.npy`` of (T, h, w, 3) in [-1, 1] -> float32, checked as the server checks it."""
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise CodecLoopValueError(f"signature: {str(path)!r} is not a .npy file")
        sig = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        if isinstance(err, CodecLoopValueError):
            raise
        raise CodecLoopValueError(f"signature: cannot read {str(path)!r} as a .npy array ({err})") from None
    return deploy.check_signature(sig)


def parse_epsilon(text: str | float) -> float:
    """'2/255', '0.0078' or a float -> the budget, checked by the server's rule (0 < epsilon <= 1)."""
    if isinstance(text, str):
        try:
            value = float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise CodecLoopValueError(f"epsilon: {text!r} is not a number or a fraction like 2/255") from None
    else:
        value = float(text)
    return deploy.check_epsilon(value)


def _output_codec(output: Path, codec: str | None) -> str:
    suffix = output.suffix.lower()
    if codec is None:
        if suffix not in _DEFAULT_CODEC:
            raise CodecLoopValueError(f"output: {str(output)!r} has extension {suffix!r}; allowed: {sorted(_DEFAULT_CODEC)}")
        return _DEFAULT_CODEC[suffix]
    if codec not in CODECS:
        raise CodecLoopValueError(f"codec: {codec!r} is not one of {list(CODECS)}")
    if suffix not in _CODEC_SUFFIXES[codec]:
        raise CodecLoopValueError(f"output: {codec} goes into {' '.join(_CODEC_SUFFIXES[codec])} files, not {suffix!r}")
    return codec


def open_video(path: Path):  # -> av.container.InputContainer
    """The file opened by PyAV, checked to hold a video stream; mark and detect read their inputs with it.

    Raises:
        CodecLoopValueError: naming the file: not a file, not readable as a video, no video stream.
    """
    import av

    if not path.is_file():
        raise CodecLoopValueError(f"input: {str(path)!r} is not a file")
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise CodecLoopValueError(f"input: {str(path)!r} cannot be read as a video ({err})") from None
    if not container.streams.video:
        container.close()
        raise CodecLoopValueError(f"input: {str(path)!r} has no video stream")
    return container


def mark_video(
    input: str | Path,
    output: str | Path,
    signature: np.ndarray | str | Path,
    epsilon: float | str,
    codec: str | None = None,
    crf: float = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    threads: int | None = None,
) -> MarkResult:
    """Write OUTPUT: INPUT with ``signature`` added by the deployment rule, at INPUT's size, frame rate and length.

    Args:
        input: a video file PyAV (FFmpeg) reads; its first video stream is marked.
        output: the file to write (replaced atomically when done; a failed run leaves nothing).
        signature: (T, h, w, 3) array in [-1, 1], or the path of a ``.npy`` of one.
        epsilon: L-inf budget in [0, 1] units, a number or a fraction string like ``"2/255"``.
        codec: ``libx264`` or ``ffv1``; None: from OUTPUT's extension (module docstring).
        crf, preset: libx264's rate control and speed (ignored for ffv1).
        threads: encoder threads (None: min(4, CPU cores); 0: the encoder chooses; 1: the same bytes on every machine).

    Raises:
        CodecLoopValueError: naming the argument or file: a bad signature or epsilon, an input with
            no video stream or not readable, an odd frame size for yuv420p, FFmpeg's refusal to
            decode, encode or mux (its message: e.g. an audio codec the output container cannot hold).
    """
    import av

    sig = load_signature(signature) if isinstance(signature, (str, Path)) else deploy.check_signature(signature)
    eps = parse_epsilon(epsilon)
    src, dst = Path(input), Path(output)
    name = _output_codec(dst, codec)
    if not 0 <= crf <= 51:
        raise CodecLoopValueError(f"crf: {crf} is outside the allowed range [0, 51]")
    threads = min(4, os.cpu_count() or 1) if threads is None else threads
    if threads < 0:
        raise CodecLoopValueError(f"threads: {threads} must be >= 0")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise CodecLoopValueError(f"output: {str(dst)!r} is the input file; write to another path")
    tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.tmp{dst.suffix}")
    try:
        with open_video(src) as inp:
            result = _mark(inp, src, tmp, sig, eps, name, crf, preset, threads)
        os.replace(tmp, dst)
    except av.FFmpegError as err:  # a corrupt stream part-way, an encoder or muxer refusal (FFmpeg's words)
        raise CodecLoopValueError(f"mark {str(src)!r} -> {str(dst)!r}: {type(err).__name__}: {err}") from None
    finally:
        tmp.unlink(missing_ok=True)
    result.output = str(dst)
    return result


def _mark(inp, src: Path, tmp: Path, sig: np.ndarray, eps: float, name: str, crf: float, preset: str, threads: int) -> MarkResult:
    import av
    from av.video.reformatter import Interpolation

    vin = inp.streams.video[0]
    vin.thread_type = "AUTO"  # decoder threads: a few frames in flight, never the video
    width, height = vin.codec_context.width, vin.codec_context.height
    if name == "libx264" and (width % 2 or height % 2):
        raise CodecLoopValueError(f"input: {str(src)!r} is {width}x{height}; yuv420p needs even sides: use codec ffv1 (.mkv)")
    audio = list(inp.streams.audio)
    dropped = [f"{s.type} #{s.index}" for s in inp.streams if s is not vin and s not in audio]
    rate = vin.average_rate or vin.guessed_rate or Fraction(25)
    time_base = vin.time_base or Fraction(1, 90000)
    cc = vin.codec_context
    tags = {"colorspace": cc.colorspace, "color_primaries": cc.color_primaries, "color_trc": cc.color_trc}
    with av.open(str(tmp), "w") as out:
        vout = out.add_stream(name, rate=rate)
        enc = vout.codec_context
        enc.width, enc.height = width, height
        enc.time_base = time_base
        vout.time_base = time_base
        enc.thread_count = threads
        if name == "libx264":
            enc.pix_fmt = "yuv420p"
            enc.options = {"crf": f"{crf:g}", "preset": preset}
            for key, value in tags.items():
                setattr(enc, key, value)
            enc.color_range = 1  # MPEG (limited): what the rgb24 -> yuv420p conversion below writes
            described = f"libx264 CRF {crf:g} preset {preset} yuv420p"
        else:
            enc.pix_fmt = "bgr0"
            described = "ffv1 lossless RGB (bgr0)"
        aout = {s.index: out.add_stream_from_template(s) for s in audio}
        to_rgb, to_out = av.video.reformatter.VideoReformatter(), av.video.reformatter.VideoReformatter()
        frames, last_pts = 0, None
        for packet in inp.demux(vin, *audio):
            if packet.stream.index in aout:
                if packet.dts is not None:  # the demuxer's empty flush packet carries nothing
                    packet.stream = aout[packet.stream.index]
                    out.mux(packet)
                continue
            for frame in packet.decode():
                pts = frame.pts if frame.pts is not None else round(frames / rate / time_base)
                if last_pts is not None and pts <= last_pts:
                    pts = last_pts + 1  # a repeated timestamp (broken file): keep the frame, keep order
                last_pts = pts
                out.mux(enc.encode(_marked(frame, frames, sig, eps, name, to_rgb, to_out, Interpolation.BICUBIC, pts)))
                frames += 1
        out.mux(enc.encode(None))  # flush: B-frames and lookahead
    if frames == 0:
        raise CodecLoopValueError(f"input: {str(src)!r} decodes to no video frame")
    return MarkResult(
        output="", frames=frames, width=width, height=height, fps=float(vin.average_rate or 0), codec=described,
        audio_streams=len(audio), signature_shape=tuple(sig.shape), epsilon=eps, dropped_streams=dropped,
    )  # fmt: skip


def _marked(frame, index: int, sig: np.ndarray, eps: float, name: str, to_rgb, to_out, interpolation, pts: int):
    """One decoded frame -> the marked frame in the encoder's pixel format, INPUT's colour matrix both ways."""
    import av

    colorspace = frame.colorspace if frame.colorspace in (1, 5, 6, 9) else None  # BT.709, 470BG, 170M, BT.2020: swscale knows them
    full = 2 if frame.color_range == 2 else None  # JPEG (full) range tagged on a yuv420p frame
    rgb = to_rgb.reformat(frame, format="rgb24", interpolation=interpolation, src_colorspace=colorspace, src_color_range=full).to_ndarray()
    marked = deploy.mark_frames(rgb[None], sig, index, eps)[0]
    new = av.VideoFrame.from_ndarray(marked, format="rgb24")
    if name == "libx264":
        new = to_out.reformat(new, format="yuv420p", interpolation=interpolation, dst_colorspace=colorspace, dst_color_range=1)
    else:
        new = to_out.reformat(new, format="bgr0")
    new.pts = pts
    return new


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``codecloop mark`` arguments."""
    parser.add_argument("input", help="video file to mark (its first video stream; audio is copied)")
    parser.add_argument("output", help="marked video: .mp4 .mov .m4v .mkv (libx264 CRF 18) or .avi .nut (ffv1 lossless RGB)")
    parser.add_argument("--signature", required=True, help=".npy of (T, H, W, 3) in [-1, 1], tiled from pixel (0, 0) and cycled in time (required, no default)")
    parser.add_argument("--epsilon", required=True, help="L-inf budget, a number or a fraction like 2/255: the one the signature was made for (required, no default)")
    parser.add_argument("--codec", choices=CODECS, default=None, help="output encoder (default: from OUTPUT's extension)")
    parser.add_argument("--crf", type=float, default=DEFAULT_CRF, help="libx264 quality")
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="libx264 preset")
    parser.add_argument("--threads", type=int, default=None, help="encoder threads (default: min(4, CPU cores); 1: the same bytes on every machine)")


def run(args: argparse.Namespace) -> int:
    """``codecloop mark``: mark, then print one line saying what was written."""
    r = mark_video(args.input, args.output, args.signature, args.epsilon, args.codec, args.crf, args.preset, args.threads)
    carried = f"{r.audio_streams} audio stream(s) copied" + (f", not carried: {', '.join(r.dropped_streams)}" if r.dropped_streams else "")
    print(f"{r.output}: {r.frames} frames {r.width}x{r.height} at {r.fps:g} fps marked with a {'x'.join(map(str, r.signature_shape))} "
          f"signature at epsilon {r.epsilon:.6g}; {r.codec}; {carried}")  # fmt: skip
    return 0
