"""Channels: where a video goes between the marker and the detector, as an ordered list of steps
(resize, crop, frame-rate change, encode + decode), applied to RGB clips. ndarray in, ndarray out.

A channel ends where it started: its output is resized back to the carriers' H x W with
``map_back_filter`` (when the size differs) and mapped back in time (carrier frame i, at time
i / input_fps, takes the latest output frame at or before that time), so every scorer compares
clips of the carriers' shape. A crop comes back as a zoom of the kept rectangle.

A channel of one encode step is exactly :func:`transcode.transcode_rgb` (what ``codecs`` always ran).
Sizes in absolute terms: ``Resize(max_short_side=N)`` scales the VIDEO a clip stands for so that its
short side is at most N pixels ("to 540 lines"; never up), and applies that same scale to the clip.
The video's short side is ``source_side`` (a dataset records it per clip: the source's frame at its
own pixel scale; inline clips and whole files stand for themselves). So "messaging" takes a 1080p
video to 540 lines, a 1080p-sourced 112-px carrier to 56 px, and leaves a 480-line video and its
carriers at their size, as a messenger does. Presets (:data:`PRESETS`, a registry that refuses name
collisions) are named channel sets, described in these absolute terms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import av
import numpy as np
from av.video.reformatter import Interpolation

from codecloop_server.codecs import MIN_SIZE, CodecSettings
from codecloop_server.convert import reformatter
from codecloop_server.registry import Registry, shown
from codecloop_server.transcode import transcode_rgb
from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopValueError

FILTERS = {
    "bicubic": Interpolation.BICUBIC,
    "bilinear": Interpolation.BILINEAR,
    "lanczos": Interpolation.LANCZOS,
    "area": Interpolation.AREA,
    "neighbor": Interpolation.POINT,
}
MAX_STEPS = 8
MAX_NAME = 256  # characters of a channel's name: it is copied into every result
MAX_SIDE = 8192
SCALE_RANGE = (0.0, 4.0)  # (low open]
SVTAV1_BITRATE_MIN_SIZE = 64  # smallest width and height of a libsvtav1 encode in bitrate mode
# smallest width of a libx265 encode: at 64 px and under (one 64-px CTU column) the x265 build in the
# PyAV wheel (4.2) gave different bitstreams for the same frames in one process, and at 40-48 px
# corrupted its heap (glibc "free(): invalid next size"); 56-62 and 66-96 px repeated exactly in the
# measurement (docs/codecs-and-channels.md), so everything up to 64 is refused, not only the widths seen
X265_MIN_WIDTH = 66


def _check_filter(name: str, field_name: str) -> None:
    if name not in FILTERS:
        raise CodecLoopValueError(f"{field_name}: unknown filter {shown(name)}; allowed: {tuple(FILTERS)}")


@dataclass(frozen=True)
class Resize:
    """Every frame to ``width`` x ``height``; or both sides times ``scale``; or times the scale that
    brings the short side of the video the clip stands for to at most ``max_short_side`` pixels
    (never up). Scaled sides are rounded to the nearest even number."""

    width: int | None = None
    height: int | None = None
    scale: float | None = None
    filter: str = defaults.RESIZE_FILTER
    max_short_side: int | None = None

    def __post_init__(self) -> None:
        given = [k for k, v in (("width/height", self.width is not None or self.height is not None), ("scale", self.scale is not None),
                                ("max_short_side", self.max_short_side is not None)) if v]  # fmt: skip
        if len(given) != 1:
            raise CodecLoopValueError(f"resize: give width and height, or scale, or max_short_side (exactly one; given: {', '.join(given) or 'none'})")
        if self.scale is not None:
            if not (math.isfinite(self.scale) and SCALE_RANGE[0] < self.scale <= SCALE_RANGE[1]):
                raise CodecLoopValueError(f"resize.scale: {self.scale} is outside the allowed range (0, 4]")
        elif self.max_short_side is not None:
            if not MIN_SIZE <= self.max_short_side <= MAX_SIDE:
                raise CodecLoopValueError(f"resize.max_short_side: {self.max_short_side} is outside the allowed range [{MIN_SIZE}, {MAX_SIDE}]")
        else:
            if self.width is None or self.height is None:
                raise CodecLoopValueError("resize: give width and height, or scale, or max_short_side")
            for name in ("width", "height"):
                if not 2 <= getattr(self, name) <= MAX_SIDE:
                    raise CodecLoopValueError(f"resize.{name}: {getattr(self, name)} is outside the allowed range [2, {MAX_SIDE}]")
        _check_filter(self.filter, "resize.filter")

    def factor(self, source_side: int) -> float:
        """The scale this step applies when the video the clip stands for has short side ``source_side`` px."""
        if self.max_short_side is not None:
            return min(1.0, self.max_short_side / source_side)
        assert self.scale is not None, "a fixed width x height has no factor"
        return self.scale

    def size(self, h: int, w: int, source_side: int | None = None) -> tuple[int, int]:
        """(height, width) out for an h x w frame; ``source_side``: the short side of the video the
        frame stands for (None: the frame itself). A fit that does not shrink keeps (h, w)."""
        if self.width is not None and self.height is not None:
            return self.height, self.width
        s = self.factor(min(h, w) if source_side is None else source_side)
        if s == 1.0:
            return h, w
        return max(2, 2 * round(h * s / 2)), max(2, 2 * round(w * s / 2))


@dataclass(frozen=True)
class Crop:
    """The rectangle (x, y, width, height) of every frame."""

    x: int
    y: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.x < 0 or self.y < 0 or self.width < 1 or self.height < 1:
            raise CodecLoopValueError(f"crop: x, y = {self.x}, {self.y} must be >= 0 and width, height = {self.width}, {self.height} >= 1")


@dataclass(frozen=True)
class FrameRate:
    """Resample in time to ``fps`` (nearest earlier frame; the clip keeps its duration)."""

    fps: int

    def __post_init__(self) -> None:
        if not 1 <= self.fps <= 240:
            raise CodecLoopValueError(f"frame_rate.fps: {self.fps} is outside the allowed range [1, 240]")


Step = Resize | Crop | FrameRate | CodecSettings


def step_name(step: Step) -> str:
    """The field name of a step kind in a channel message (resize, crop, frame_rate, encode)."""
    return {Resize: "resize", Crop: "crop", FrameRate: "frame_rate", CodecSettings: "encode"}[type(step)]


@dataclass(frozen=True)
class Channel:
    """Steps applied in order. ``name`` is a label (not part of the identity: two channels with the
    same steps are the same work)."""

    steps: tuple[Step, ...]
    map_back_filter: str = defaults.RESIZE_FILTER
    input_fps: int = defaults.INPUT_FPS
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not 1 <= len(self.steps) <= MAX_STEPS:
            raise CodecLoopValueError(f"channel.steps: {len(self.steps)} steps; a channel has 1 to {MAX_STEPS}")
        if not any(isinstance(s, CodecSettings) for s in self.steps):
            raise CodecLoopValueError("channel.steps: no encode step; a channel encodes at least once")
        _check_filter(self.map_back_filter, "channel.map_back_filter")
        if not 1 <= self.input_fps <= 240:
            raise CodecLoopValueError(f"channel.input_fps: {self.input_fps} is outside the allowed range [1, 240]")
        if len(self.name) > MAX_NAME:
            raise CodecLoopValueError(f"channel.name: {len(self.name)} characters; a channel name has at most {MAX_NAME}")

    @classmethod
    def of(cls, codec: CodecSettings) -> Channel:
        """The one-step channel that a CodecSettings given alone is."""
        return cls((codec,))

    @property
    def final_codec(self) -> CodecSettings:
        """The last encode step (what a result's ``codec`` reports)."""
        return next(s for s in reversed(self.steps) if isinstance(s, CodecSettings))

    @property
    def is_codec(self) -> bool:
        """One encode step with the default mapping: exactly a CodecSettings given alone."""
        return len(self.steps) == 1 and self.input_fps == defaults.INPUT_FPS

    def stages(
        self, clip_shape: tuple[int, int, int], source_side: int | None = None
    ) -> list[tuple[int, Step, tuple[int, int, int], tuple[int, int, int]]]:
        """(index, step, (T, H, W) in, (T, H, W) out) of every step on clips of ``clip_shape`` that stand
        for a video of short side ``source_side`` px (None: the clip itself), without checking that
        the steps fit (:meth:`check` does). Without ``source_side`` the sizes are the largest any
        source gives (a ``max_short_side`` step never enlarges): what memory admission needs."""
        t, h, w = clip_shape
        side = float(min(h, w) if source_side is None else source_side)
        rate, out = self.input_fps, []
        for i, step in enumerate(self.steps):
            before = (t, h, w)
            if isinstance(step, (Resize, Crop)):
                if isinstance(step, Resize):
                    nh, nw = step.size(h, w, max(1, round(side)))
                else:
                    nh, nw = step.height, step.width
                side *= min(nh, nw) / min(h, w)  # the video the clip stands for changes by the clip's own ratio
                h, w = nh, nw
            elif isinstance(step, FrameRate):
                t, rate = _frames_at(t, rate, step.fps), step.fps
            out.append((i, step, before, (t, h, w)))
        return out

    def check(self, clip_shape: tuple[int, int, int], field_name: str = "channel", source_side: int | None = None) -> None:
        """Refuse (naming the step) a channel that cannot run on clips of (T, H, W) standing for a
        video of short side ``source_side`` (None: the clip itself)."""
        for i, step, (_, h, w), _ in self.stages(clip_shape, source_side):
            where = f"{field_name}.steps[{i}].{step_name(step)}"
            if isinstance(step, Crop):
                if step.x + step.width > w or step.y + step.height > h:
                    raise CodecLoopValueError(
                        f"{where}: the rectangle x={step.x} y={step.y} {step.width}x{step.height} does not fit a {w}x{h} frame"
                    )
            elif isinstance(step, CodecSettings):
                check_encode_size(step, h, w, where)


    def apply(self, clip: np.ndarray, source_side: int | None = None) -> tuple[np.ndarray, int]:
        """uint8 (T, H, W, 3) RGB through every step and back to (T, H, W, 3): (output, encoded bytes of
        all encodes). ``source_side``: the short side in pixels of the video the clip stands for (None:
        the clip itself); only ``max_short_side`` resizes read it. CodecLoopValueError when the steps
        cannot run at this clip's sizes (a dataset's largest source is checked at admission)."""
        if self.is_codec:
            return transcode_rgb(clip, self.final_codec)
        t, h, w, _ = clip.shape
        if source_side is not None and any(isinstance(s, Resize) and s.max_short_side is not None for s in self.steps):
            self.check((t, h, w), source_side=source_side)
        sizes = iter([after for _, step, _, after in self.stages((t, h, w), source_side) if isinstance(step, Resize)])
        x, rate, total = clip, self.input_fps, 0
        for step in self.steps:
            if isinstance(step, Resize):
                _, nh, nw = next(sizes)
                if (nh, nw) != x.shape[1:3]:
                    x = resize(x, nh, nw, step.filter)
            elif isinstance(step, Crop):
                x = x[:, step.y : step.y + step.height, step.x : step.x + step.width]  # a view: the next step copies
            elif isinstance(step, FrameRate):
                x, rate = x[_latest_frames(_frames_at(len(x), rate, step.fps), len(x), rate, step.fps)], step.fps
            else:
                x, nbytes = transcode_rgb(x, step)
                total += nbytes
        if x.shape[1:3] != (h, w):
            x = resize(x, h, w, self.map_back_filter)
        if rate != self.input_fps or len(x) != t:
            x = x[_latest_frames(t, len(x), rate, self.input_fps)]
        return np.ascontiguousarray(x), total


def check_encode_size(step: CodecSettings, h: int, w: int, where: str) -> None:
    """Refuse (naming ``where``) an encode of ``step`` on h x w frames that the encoder cannot run
    exactly: odd or tiny sizes, SVT-AV1's rate control under 64 px, libx265 at X265_MIN_WIDTH and under."""
    if h % 2 or w % 2 or h < MIN_SIZE or w < MIN_SIZE:
        raise CodecLoopValueError(f"{where}: a {w}x{h} frame; an encode needs even width and height of at least {MIN_SIZE}")
    if step.codec == "libsvtav1" and step.bitrate_kbps is not None and min(h, w) < SVTAV1_BITRATE_MIN_SIZE:
        # SVT-AV1 turns adaptive quantization off under 64 px and then refuses rate control
        raise CodecLoopValueError(
            f"{where}.bitrate_kbps: libsvtav1 in bitrate mode needs width and height of at least "
            f"{SVTAV1_BITRATE_MIN_SIZE}, the frame here is {w}x{h}; use crf or qp at this size"
        )
    if step.codec == "libx265" and w < X265_MIN_WIDTH:
        raise CodecLoopValueError(
            f"{where}: libx265 needs a width of at least {X265_MIN_WIDTH} px, the frame here is {w}x{h}: at 64 px and under this "
            "x265 build is not repeatable (and corrupted its memory at 40-48 px); resize first or use another codec"
        )


def _frames_at(t: int, rate: int, fps: int) -> int:
    """Frames of a T-frame clip at ``rate`` resampled to ``fps`` (same duration)."""
    return max(1, math.ceil(t * fps / rate - 1e-9))


def _latest_frames(count: int, available: int, rate: int, fps: int) -> np.ndarray:
    """Indices of ``count`` frames at ``fps`` taken from ``available`` frames at ``rate``: frame j
    (time j / fps) is the latest input frame at or before that time."""
    return np.minimum(available - 1, np.floor(np.arange(count) * rate / fps + 1e-9).astype(int))


def resize(clip: np.ndarray, height: int, width: int, filter: str) -> np.ndarray:
    """uint8 (T, H, W, 3) RGB -> (T, height, width, 3) with swscale (``filter``, FILTERS), per frame,
    into one preallocated output (no list of frames next to it)."""
    r = reformatter(f"resize:{filter}")
    interpolation = FILTERS[filter]
    out = np.empty((len(clip), height, width, 3), np.uint8)
    for k, f in enumerate(clip):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
        out[k] = r.reformat(frame, width=width, height=height, interpolation=interpolation).to_ndarray()
    return out


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    channels: tuple[Channel, ...]


PRESETS: Registry[Preset] = Registry("preset")


def register(preset: Preset) -> Preset:
    """Add a channel preset; a name that is already taken is refused."""
    return PRESETS.add(preset.name, preset)


def _named(name: str, steps: Sequence[Step]) -> Channel:
    return Channel(tuple(steps), name=name)


register(Preset(
    "social",
    "H.264 at CRF 23 and 28 (preset medium) at most 720 lines (bicubic; 1080p -> 720p, a 480-line video keeps its size), "
    "as feeds re-encode uploads",
    (
        _named("social-crf23", [Resize(max_short_side=720), CodecSettings("libx264", crf=23)]),
        _named("social-crf28", [Resize(max_short_side=720), CodecSettings("libx264", crf=28)]),
    ),
))  # fmt: skip
register(Preset(
    "streaming",
    "a VP9 and an AV1 ladder: the source size and at most 540 lines (1080p -> 540p), VP9 CRF 32 / 36 (cpu-used 4), "
    "SVT-AV1 CRF 35 / 40 (preset 8)",
    (
        _named("vp9-full", [CodecSettings("libvpx-vp9", crf=32)]),
        _named("vp9-540", [Resize(max_short_side=540), CodecSettings("libvpx-vp9", crf=36)]),
        _named("av1-full", [CodecSettings("libsvtav1", crf=35)]),
        _named("av1-540", [Resize(max_short_side=540), CodecSettings("libsvtav1", crf=40)]),
    ),
))  # fmt: skip
register(Preset(
    "messaging",
    "H.264 CRF 35 (preset veryfast) at most 540 lines (1080p -> 540p, a 480-line video keeps its size), 15 fps, as messengers send video",
    (_named("messaging", [Resize(max_short_side=540), FrameRate(15), CodecSettings("libx264", crf=35, preset="veryfast", fps=15)]),),
))  # fmt: skip
register(Preset(
    "reupload",
    "a re-upload: H.264 CRF 23, then at most 720 lines (1080p -> 720p) and H.265 CRF 28",
    (_named("reupload", [CodecSettings("libx264", crf=23), Resize(max_short_side=720), CodecSettings("libx265", crf=28)]),),
))  # fmt: skip
