"""Typed request options of the SDK: codec settings, carriers, racing, channels and their steps
(the results are in :mod:`codecloop.results`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.v1 import codecloop_pb2 as pb


def _given(obj: object, exclude: tuple[str, ...] = ()) -> dict[str, object]:
    """The dataclass's fields that are set (not None): what a request carries; the rest stays unset."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.name not in exclude and getattr(obj, f.name) is not None}  # type: ignore[arg-type]


def _present(msg: object, names: list[str]) -> dict[str, object]:
    """The ``optional`` proto fields ``names`` of ``msg``, None where absent (0 is a value, not absence)."""
    return {k: getattr(msg, k) if msg.HasField(k) else None for k in names}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Codec:
    """Real-codec settings. A field left None is not sent: the server applies its default
    (``codecloop_wire.defaults``: libx264, CRF 28, medium, yuv420p, GOP 250, 25 fps).
    ``codec``: libx264, libx265, libvpx-vp9 or libsvtav1 (``Client.info().codec_info`` lists each
    one's rate controls, ranges and presets). At most one of ``crf`` / ``qp`` / ``bitrate_kbps``;
    crf 0 = lossless (libx264, libx265).

    ``x264_asm`` / ``x264_build``: the x264 SIMD level and build that produced a result (always
    set in results). In a request, None = the server's; a value pins it (a server running another
    is refused with INVALID_ARGUMENT)."""

    crf: float | None = None
    preset: str | None = None
    gop: int | None = None
    fps: int | None = None
    codec: str | None = None
    pix_fmt: str | None = None
    x264_asm: str | None = None
    x264_build: str | None = None
    qp: int | None = None  # constant quantizer instead of crf (libx264, libx265, libsvtav1)
    bitrate_kbps: int | None = None  # average bitrate instead of crf, kbit/s

    def to_proto(self) -> pb.CodecSettings:
        return pb.CodecSettings(**_given(self))

    @classmethod
    def from_proto(cls, msg: pb.CodecSettings) -> Codec:
        return cls(**_present(msg, [f.name for f in fields(cls)]))

    def resolved(self) -> Codec:
        """Unset fields filled with the server's defaults for libx264 (codec, crf when no rate
        control is given, preset, pix_fmt, gop, fps); another codec's default preset stays None
        (the server's CodecInfo.default_preset)."""
        fill = {f.name: getattr(defaults, f.name.upper()) for f in fields(self) if getattr(self, f.name) is None and hasattr(defaults, f.name.upper())}
        if self.qp is not None or self.bitrate_kbps is not None:
            fill.pop("crf", None)
        if (self.codec or defaults.CODEC) not in ("libx264", "libx265"):
            fill.pop("preset", None)
        return replace(self, **fill)

    def label(self) -> str:
        c = self.resolved()
        rate = f"qp={c.qp}" if c.qp is not None else f"{c.bitrate_kbps}kbps" if c.bitrate_kbps is not None else f"crf={c.crf:g}"
        fps = f" {c.fps}fps" if c.fps is not None and c.fps != defaults.FPS else ""  # else two rates print alike
        return f"{c.codec} {rate} {c.preset or ''}".rstrip() + fps


@dataclass(frozen=True)
class DatasetCarriers:
    """Carrier clips from a server-side dataset: ``num_clips`` drawn from ``split`` with ``seed``.
    A field left None is not sent: the server applies its default (``codecloop_wire.defaults``:
    dataset "embedded", split "train", 32 clips, seed 0). ``num_clips`` 0 means the whole split."""

    dataset: str | None = None
    split: str | None = None
    num_clips: int | None = None
    seed: int | None = None

    def to_proto(self) -> pb.Carriers:
        return pb.Carriers(dataset=pb.DatasetCarriers(**_given(self)))

    def resolved(self) -> DatasetCarriers:
        """Every unset field filled with the server's default."""
        return replace(self, **{f.name: getattr(defaults, f.name.upper()) for f in fields(self) if getattr(self, f.name) is None})


@dataclass(frozen=True)
class Racing:
    """Racing (successive halving) inside one request: spend clips only where the ranking is still
    undecided. Round 1 scores every candidate on the first ``first_clips`` carriers; each round the
    best ``max(finalists, ceil(alive / eta))`` go on to ``eta`` times as many clips (nested and
    paired: the first n carriers), until the finalists have all N. Candidates are ranked by
    ``min over codec settings of (separation - centre_weight * |clean_mean|)`` on the clips they
    share. A field left None takes the server's default (``codecloop_wire.defaults``: first_clips
    min(4, N), eta 2, finalists 1, centre_weight 0).

    Results: each candidate's statistics rest on :attr:`CandidateResult.num_clips` clips and carry
    its :attr:`CandidateResult.race_rank` (0 = best). With P candidates, N clips and the defaults
    the race runs about ``P * first_clips * (1 + log2(N / first_clips) / 2)`` poisoned clip encodes
    per codec setting instead of ``P * N`` while candidates remain to drop (P 16, N 32: 160 instead
    of 512; ``EvaluateResult.clip_tasks`` is the exact count)."""

    first_clips: int | None = None
    eta: int | None = None
    finalists: int | None = None
    centre_weight: float | None = None

    def to_proto(self) -> pb.Racing:
        return pb.Racing(**_given(self))


@dataclass(frozen=True)
class Resize:
    """Resize every frame to ``width`` x ``height``; or by ``scale`` (rounded to even sides); or, in
    absolute terms, by the scale that brings the short side of the video a clip stands for to at most
    ``max_short_side`` pixels, never up ("to 540 lines": the server knows each dataset clip's source
    size; an inline clip or a file stands for itself). ``filter``: bicubic (default), bilinear,
    lanczos, area, neighbor."""

    width: int | None = None
    height: int | None = None
    scale: float | None = None
    filter: str | None = None
    max_short_side: int | None = None


@dataclass(frozen=True)
class Crop:
    """Keep the rectangle (x, y, width, height) of every frame (pixels at that step)."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class FrameRate:
    """Resample in time to ``fps`` (the latest earlier frame; same duration)."""

    fps: int


Step = Resize | Crop | FrameRate | Codec


@dataclass(frozen=True)
class Channel:
    """Where a video goes: ``steps`` in order (at least one :class:`Codec`), e.g.
    ``Channel((Resize(scale=0.5), Codec(crf=23)))``; or ``Channel(preset="social")``, a server
    preset (``Client.info().channel_presets``) that expands to its channels. The output returns to
    the carriers' size with ``map_back_filter`` (default bicubic) and frame count before scoring.
    Unset fields: the server's defaults. :meth:`parse` reads the CLI's ``--channel`` syntax."""

    steps: tuple[Step, ...] = ()
    name: str | None = None
    map_back_filter: str | None = None
    input_fps: int | None = None
    preset: str | None = None

    def to_proto(self) -> pb.Channel:
        steps = []
        for s in self.steps:
            if isinstance(s, Resize):
                steps.append(pb.ChannelStep(resize=pb.ResizeStep(**_given(s))))
            elif isinstance(s, Crop):
                steps.append(pb.ChannelStep(crop=pb.CropStep(**asdict(s))))
            elif isinstance(s, FrameRate):
                steps.append(pb.ChannelStep(frame_rate=pb.FrameRateStep(fps=s.fps)))
            elif isinstance(s, Codec):
                steps.append(pb.ChannelStep(encode=s.to_proto()))
            else:
                raise CodecLoopValueError(f"channel.steps: {s!r} is not a Resize, Crop, FrameRate or Codec")
        return pb.Channel(steps=steps, **_given(self, exclude=("steps",)))

    @classmethod
    def from_proto(cls, msg: pb.Channel) -> Channel:
        steps: list[Step] = []
        for step in msg.steps:
            which = step.WhichOneof("step")
            if which == "resize":
                steps.append(Resize(**_present(step.resize, ["width", "height", "scale", "filter", "max_short_side"])))
            elif which == "crop":
                steps.append(Crop(step.crop.x, step.crop.y, step.crop.width, step.crop.height))
            elif which == "frame_rate":
                steps.append(FrameRate(step.frame_rate.fps))
            else:
                steps.append(Codec.from_proto(step.encode))
        return cls(tuple(steps), **_present(msg, ["name", "map_back_filter", "input_fps", "preset"]))

    def label(self) -> str:
        if self.name:
            return self.name
        if self.preset:
            return self.preset
        return " > ".join(s.label() if isinstance(s, Codec) else _step_label(s) for s in self.steps)

    @classmethod
    def parse(cls, spec: str) -> Channel:
        """The CLI syntax: a preset name (``social``), or comma-separated steps
        ``resize:0.5[:filter]`` | ``resize:WxH[:filter]`` | ``resize:540p[:filter]`` (short side at most 540 px) | ``crop:X:Y:W:H`` | ``fps:N`` |
        ``<codec>[:crf=N][:qp=N][:bitrate=KBPS][:preset=P][:gop=N][:fps=N]``, e.g.
        ``"resize:0.5:bicubic,libx264:crf=23"``. The spec is the channel's name."""
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        if len(parts) == 1 and ":" not in parts[0] and parts[0] not in (*_CODEC_NAMES, "resize", "crop", "fps"):
            return cls(preset=parts[0])
        return cls(tuple(_parse_step(p, spec) for p in parts), name=spec)


_CODEC_NAMES = ("libx264", "libx265", "libvpx-vp9", "libsvtav1")


def _step_label(s: Resize | Crop | FrameRate) -> str:
    if isinstance(s, Resize):
        if s.max_short_side is not None:
            return f"resize to {s.max_short_side}p"
        return f"resize {s.scale:g}" if s.scale is not None else f"resize {s.width}x{s.height}"
    if isinstance(s, Crop):
        return f"crop {s.width}x{s.height}+{s.x}+{s.y}"
    return f"{s.fps} fps"


def _parse_step(text: str, spec: str) -> Step:
    head, *rest = text.split(":")
    try:
        if head == "resize":
            if not rest:
                raise ValueError("resize needs a scale, WxH or NNNp")
            size, flt = rest[0], (rest[1] if len(rest) > 1 else None)
            if "x" in size:
                w, h = size.split("x")
                return Resize(width=int(w), height=int(h), filter=flt)
            if size.endswith("p"):
                return Resize(max_short_side=int(size[:-1]), filter=flt)
            return Resize(scale=float(size), filter=flt)
        if head == "crop":
            x, y, w, h = map(int, rest)
            return Crop(x, y, w, h)
        if head == "fps":
            (n,) = rest
            return FrameRate(int(n))
        if head in _CODEC_NAMES:
            keys = {"crf": ("crf", float), "qp": ("qp", int), "bitrate": ("bitrate_kbps", int), "preset": ("preset", str),
                    "gop": ("gop", int), "fps": ("fps", int)}  # fmt: skip
            kwargs: dict[str, object] = {}
            for item in rest:
                key, _, value = item.partition("=")
                if key not in keys:
                    raise ValueError(f"unknown codec option {key!r}; allowed: {sorted(keys)}")
                name, kind = keys[key]
                if name in kwargs:
                    raise ValueError(f"codec option {key!r} given twice")
                kwargs[name] = kind(value)
            return Codec(codec=head, **kwargs)  # type: ignore[arg-type]
    except ValueError as err:
        raise CodecLoopValueError(f"channel: {spec!r}: step {text!r}: {err}") from None
    raise CodecLoopValueError(
        f"channel: {spec!r}: step {text!r} is not resize:, crop:, fps: or a codec {_CODEC_NAMES}; a preset name stands alone"
    )
