"""``codecloop detect`` / :func:`detect_video`: is this video marked with this signature?

A video of any size and length is decoded frame by frame (PyAV), each frame's blind-scorer residual
(k² x − boxsum_k(x), the server's ``blind`` features, k = 3 by default) is folded onto the
signature's (T, h, w) tile by the deployment rule (codecloop_wire.deploy.Fold: tiled from pixel
(0, 0), cycled in time from the first decoded frame), and the folded residual is scored:

* ``score``: the normalized correlation of the whole video's residual with the signature's template
  tiled and cycled by the rule (the blind scorer's ncc, over every pixel of every frame);
* ``z``, ``p_value``: the null model (codecloop_wire.null.shift_null) on the folded residual: the
  same correlation with the key moved to every frame offset and every 16-pixel grid shift of the
  tile, which on the tiled video is the key moved by those offsets; p = P(N(0, 1) >= z). One
  statistic per video, so no combination of clips is needed.
* ``marked``: p < ``fpr`` (default 10⁻³).
* ``time_offsets=K`` (default 0): the statistic at each frame offset -K .. K, the best kept, its p
  corrected for the 2K + 1 tried (codecloop_wire.null.offset_null). For videos a platform re-timed:
  the ffmpeg CLI's ``-r 15`` puts the mark 2 frames late, its ``fps`` filter splits it over two
  offsets (docs/deployment.md, "Re-timed videos").

Memory: one decoded frame, its residual, and the (T, h, w, 3) accumulators, whatever the length.
A video re-scaled by a platform no longer lines up with the tile: ``size=(W, H)`` resizes each
decoded frame back to the size it was marked at (bicubic) before the residual. A video whose frame
rate a platform changed no longer counts frames as the marked one did: ``fps`` (the marked video's
rate) takes each decoded frame's signature frame from its timestamp, ⌊time · fps⌋ mod T.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from codecloop_wire import deploy
from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.null import offset_null, shift_null

if TYPE_CHECKING:
    from codecloop.client import Client

DEFAULT_FPR = 1e-3
DEFAULT_KERNEL = 3


@dataclass(frozen=True)
class Detection:
    """One video's detection.

    Attributes:
        path: the video file.
        score: normalized correlation of the video's residual with the tiled, cycled template (at
            ``offset``).
        z: the score in units of its null (module docstring); p_value = P(N(0, 1) >= z).
        p_value: the probability that a video not carrying the signature scores this high.
        marked: p_value < fpr.
        fpr: the decision's false-positive rate.
        frames: decoded frames used; width, height: the frame size folded (after ``size``).
        detector: the served detector that scored it (None: the blind scorer, here).
        clips: with a detector, the clips scored (their z combined by Stouffer's method; None without).
        offset: with ``time_offsets``, the frame offset where the mark was found (decoded frame i
            carried signature frame i - offset); 0 otherwise.
        offsets: the frame offsets tried (1 without ``time_offsets``); z and p are corrected for them.
    """

    path: str
    score: float
    z: float
    p_value: float
    marked: bool
    fpr: float
    frames: int
    width: int
    height: int
    detector: str | None = None
    clips: int | None = None
    offset: int = 0
    offsets: int = 1


def check_options(fpr: float, size: tuple[int, int] | None, max_frames: int | None, fps: float | None) -> None:
    """The options both detection paths take, checked (CodecLoopValueError naming the one that is wrong)."""
    if not 1e-12 <= fpr <= 0.5:
        raise CodecLoopValueError(f"fpr: {fpr} is outside the allowed range [1e-12, 0.5]")
    if size is not None and (min(size) < 1 or max(size) > 16384):
        raise CodecLoopValueError(f"size: {size[0]}x{size[1]} is outside the allowed range 1..16384 per side")
    if max_frames is not None and max_frames < 1:
        raise CodecLoopValueError(f"max_frames: {max_frames} must be >= 1")
    if fps is not None and not (0 < fps <= 1000 and math.isfinite(fps)):
        raise CodecLoopValueError(f"fps: {fps} is outside the allowed range (0, 1000]")


def check_time_offsets(time_offsets: int, frames: int, detector: str | None, name: str = "time_offsets") -> None:
    """``time_offsets`` for a signature of ``frames`` frames, checked (CodecLoopValueError naming ``name``):
    0 .. (frames - 1) // 2 (distinct offsets; none for a static signature), and only for the blind scorer."""
    most = (frames - 1) // 2
    if not 0 <= time_offsets <= most:
        raise CodecLoopValueError(f"{name}: {time_offsets} is outside the allowed range [0, {most}] for a signature of {frames} frames "
                                  "(a static one has no frame offsets)")  # fmt: skip
    if time_offsets and detector is not None:
        raise CodecLoopValueError(f"{name}: {time_offsets}: only the blind scorer (no --detector) searches frame offsets")


def decoded_frames(src: Path, size: tuple[int, int] | None, max_frames: int | None, fps: float | None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, frame) of each decoded frame, one at a time: uint8 (H, W, 3) RGB (bicubic to ``size`` =
    (W, H) when given), and its frame index in the marked video (the count, or ⌊time · fps⌋ with ``fps``).
    CodecLoopValueError naming the file when it cannot be opened or decoded, or decodes to no frame."""
    import av
    from av.video.reformatter import Interpolation

    from codecloop.mark import open_video

    frames = 0
    try:
        with open_video(src) as inp:
            stream = inp.streams.video[0]
            stream.thread_type = "AUTO"
            to_rgb = av.video.reformatter.VideoReformatter()
            for frame in inp.decode(stream):
                if size is not None:
                    rgb = to_rgb.reformat(frame, width=size[0], height=size[1], format="rgb24", interpolation=Interpolation.BICUBIC)
                else:
                    rgb = to_rgb.reformat(frame, format="rgb24", interpolation=Interpolation.BICUBIC)
                index = frames if fps is None or frame.time is None else int(math.floor(frame.time * fps + 1e-6))
                yield index, rgb.to_ndarray()
                frames += 1
                if max_frames is not None and frames >= max_frames:
                    break
    except av.FFmpegError as err:
        raise CodecLoopValueError(f"{str(src)!r}: cannot be decoded ({type(err).__name__}: {err})") from None
    if frames == 0:
        raise CodecLoopValueError(f"{str(src)!r}: decodes to no video frame")


def _template(signature: np.ndarray, kernel: int) -> np.ndarray:
    """The blind scorer's template of the signature, zero mean over the tile, with the residual
    filter wrapping around the tile (the tiled pattern is periodic, so its residual is too)."""
    from scipy.ndimage import uniform_filter

    sig = signature.astype(np.float64)
    t = sig - uniform_filter(sig, size=(1, kernel, kernel, 1), mode="wrap")
    return t - t.mean()


def detect_video(
    path: str | Path,
    signature: np.ndarray | str | Path,
    *,
    fpr: float = DEFAULT_FPR,
    kernel: int = DEFAULT_KERNEL,
    size: tuple[int, int] | None = None,
    max_frames: int | None = None,
    fps: float | None = None,
    detector: str | None = None,
    client: Client | None = None,
    time_offsets: int = 0,
) -> Detection:
    """Score one video against ``signature`` by the deployment rule, with its null-model p-value.

    With ``detector`` (the name of a keyed detector ``client``'s server serves) the video is cut into
    the detector's clips by the same rule and scored there (codecloop.detect_served); ``kernel`` is
    then unused. Without it, the blind scorer runs here and no server is needed.

    Args:
        path: a video file PyAV (FFmpeg) reads; its first video stream.
        signature: (T, h, w, 3) in [-1, 1], or the path of a ``.npy`` of one.
        fpr: the decision's false-positive rate, in [1e-12, 0.5].
        kernel: the blind scorer's box size k (odd, 3..15).
        size: (width, height) to resize every decoded frame to before scoring (the size the
            video was marked at, when a platform re-scaled it); None: as decoded.
        max_frames: stop after this many frames (None: all).
        fps: the frame rate the video was marked at, when a platform changed it: a decoded frame at
            time τ s is marked frame ⌊τ · fps⌋ (None: the decoded frames are counted).
        detector: a detector served by ``client``'s server (None: the blind scorer, here).
        client: a :class:`codecloop.Client` of that server (only with ``detector``).
        time_offsets: K >= 0: also try the signature K frames early and late (module docstring);
            at most (T - 1) // 2 of a signature of T frames; 0 for a static one (T = 1).

    Raises:
        CodecLoopValueError: naming the file or argument (no such file, no video stream, not
            decodable, no frame, a frame smaller than the tile, bad fpr / kernel / size / signature;
            with ``detector``: one the server does not serve, or whose clip shapes the signature does not fit).
    """
    from codecloop.mark import load_signature
    from codecloop_server.scorers import box_residual  # the server's blind features, exactly

    sig = load_signature(signature) if isinstance(signature, (str, Path)) else deploy.check_signature(signature)
    check_options(fpr, size, max_frames, fps)
    check_time_offsets(time_offsets, sig.shape[0], detector)
    if detector is not None:
        from codecloop import detect_served

        if client is None:
            raise CodecLoopValueError(f"client: detector {detector!r} is served by a server; pass client=codecloop.Client(...) of that server")
        return detect_served.detect(path, detect_served.plan(client, detector, sig), fpr=fpr, size=size, max_frames=max_frames, fps=fps)
    if kernel % 2 == 0 or not 3 <= kernel <= 15:
        raise CodecLoopValueError(f"kernel: {kernel} must be an odd integer in [3, 15]")
    t, h, w, _ = sig.shape
    fold = deploy.Fold(t, h, w, 3)
    total = squares = 0  # exact integer sums of the residual, for the normalization
    frames, width, height = 0, 0, 0
    src = Path(path)
    for index, x in decoded_frames(src, size, max_frames, fps):
        height, width = x.shape[:2]
        if height < h or width < w:
            raise CodecLoopValueError(f"{str(src)!r}: frames of {width}x{height} are smaller than the {w}x{h} signature tile")
        res = box_residual(x, kernel)
        fold.add(res[None], index)
        total += int(res.sum(dtype=np.int64))
        squares += int(np.square(res, dtype=np.int64).sum())
        frames += 1
    template = _template(sig, kernel)
    if time_offsets:
        found = offset_null(fold.sums, template, time_offsets)
        z, p, offset, offsets = found.z, found.p, found.offset, found.offsets
    else:
        null = shift_null(fold.sums if t > 1 else fold.sums[0], template)
        z, p, offset, offsets = null.z, null.p, 0, 1
    # the score at the offset found: slot i of the fold holds signature frame i - offset
    template = np.roll(template, offset, axis=0)
    # over the video: <x - mean x, w_tiled> = <x, w_tiled> - mean x * sum(w_tiled); sum(w_tiled) and
    # ||w_tiled||² from how many video pixels fall on each tile position (fold.counts)
    count = int(fold.counts.sum()) * 3
    tiled_sum = float((fold.counts[..., None] * template).sum())
    tiled_sq = float((fold.counts[..., None] * template * template).sum())
    num = fold.correlate(template) - total / count * tiled_sum
    var = squares - total * total / count
    score = num / math.sqrt(var * tiled_sq) if var > 0 and tiled_sq > 0 else 0.0
    return Detection(
        path=str(src), score=float(score), z=z, p_value=p, marked=bool(p < fpr), fpr=fpr, frames=frames, width=width, height=height,
        offset=offset, offsets=offsets,
    )  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``codecloop detect`` arguments."""
    parser.add_argument("videos", nargs="+", help="video files to test (any size and length)")
    parser.add_argument("--signature", required=True, help=".npy of (T, H, W, 3) in [-1, 1], as given to codecloop mark")
    parser.add_argument("--fpr", type=float, default=DEFAULT_FPR, help="false-positive rate of the decision: marked when p < FPR")
    parser.add_argument("--kernel", type=int, default=DEFAULT_KERNEL, help="the blind scorer's box size (odd, 3..15)")
    parser.add_argument("--size", default=None, help="WxH: resize frames to the size the video was marked at (after a platform re-scaled it)")
    parser.add_argument("--max-frames", type=int, default=None, help="use at most this many frames per video")
    parser.add_argument("--fps", type=float, default=None, help="the frame rate the video was marked at, when a platform changed it (frames placed by timestamp)")
    parser.add_argument("--time-offsets", type=int, default=0, metavar="K",
                        help="also try the signature up to K frames early or late (a re-timed video); p corrected for the 2K+1 tried")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="one JSON object per video per line instead of the table")
    parser.add_argument(
        "--detector", default=None, metavar="NAME[=FILE]",
        help="score with a keyed detector the server serves (clips cut by the deployment rule, their null z combined); "
        "a private server (--local) serves NAME=FILE, or the shipped example for 'example'; without it the blind scorer runs here, no server",
    )  # fmt: skip
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--target", default=None, help="with --detector: the server (host:port) that serves it; default as for evaluate")
    group.add_argument("--local", action="store_true", help="with --detector: a private local server for this command")


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CodecLoopValueError(f"--size: {text!r} is not WxH, e.g. 1280x720") from None
    return w, h


def run(args: argparse.Namespace) -> int:
    """``codecloop detect``: one line (or JSON object) per video; a video that cannot be tested gets
    one line on stderr naming it and the reason, the others are still tested, and the exit code is 2.
    With ``--detector`` the server is picked as for ``evaluate`` (``--target``, ``--local``, else the
    default server or a private one) and the detector checked once, before any video."""
    from codecloop.mark import load_signature

    sig = load_signature(args.signature)
    size = _size(args.size)
    check_time_offsets(args.time_offsets, sig.shape[0], args.detector, "--time-offsets")  # once, not once per video
    if args.detector is None:
        if args.target is not None or args.local:
            raise CodecLoopValueError("--target, --local: only with --detector (the blind scorer runs here, without a server)")
        return _videos(args, lambda video: detect_video(video, sig, fpr=args.fpr, kernel=args.kernel, size=size, max_frames=args.max_frames, fps=args.fps,
                                                        time_offsets=args.time_offsets))  # fmt: skip
    from codecloop import detect_served, serverpick

    check_options(args.fpr, size, args.max_frames, args.fps)  # before a server is picked or started
    name, _, file = args.detector.partition("=")
    if file and args.target is not None:
        raise CodecLoopValueError(f"--detector {args.detector}: a server at --target serves its own detectors; give the NAME only")
    served = file or ("example" if name == "example" else "")
    with serverpick.pick(args.target, args.local, server_args=["--detector", f"{name}={served}"] if served else []) as client:
        how = detect_served.plan(client, name, sig)
        return _videos(args, lambda video: detect_served.detect(video, how, fpr=args.fpr, size=size, max_frames=args.max_frames, fps=args.fps))


def _videos(args: argparse.Namespace, detect: Callable[[str], Detection]) -> int:
    """Each video's line (or JSON object); a video that cannot be tested gets one line on stderr."""
    failed = False
    if not args.json:
        by = f", detector {args.detector.partition('=')[0]}" if args.detector else ""
        offsets = f", frame offsets -{args.time_offsets}..{args.time_offsets} tried: z and p corrected" if args.time_offsets else ""
        print(f"{'marked':<7} {'p':>9} {'z':>7} {'score':>8} {'frames':>7} {'size':>10}{' offset' if args.time_offsets else ''}  video "
              f"(decision: p < {args.fpr:g}{by}{offsets})")  # fmt: skip
    for video in args.videos:
        try:
            d = detect(video)
        except CodecLoopValueError as err:
            print(f"codecloop detect: {err}", file=sys.stderr)
            failed = True
            continue
        if args.json:
            row = {k: v for k, v in asdict(d).items() if v is not None or k not in ("detector", "clips")}
            row["z"] = d.z if math.isfinite(d.z) else None
            print(json.dumps(row), flush=True)
        else:
            offset = f" {d.offset:>+6d}" if args.time_offsets else ""
            print(f"{'yes' if d.marked else 'no':<7} {d.p_value:>9.2e} {d.z:>7.2f} {d.score:>8.4f} {d.frames:>7} {d.width:>4}x{d.height:<5}{offset}  {d.path}",
                  flush=True)  # fmt: skip
    return 2 if failed else 0

