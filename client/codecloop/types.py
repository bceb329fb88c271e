"""Typed request options and results of the SDK."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.stats import OperatingPoint
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


@dataclass(frozen=True)
class CodecStats:
    """Detection statistics of one candidate under one codec setting or channel (see README
    "Statistics"). ``codec``: the (last) encode; ``channel``: the whole channel, when the request
    gave channels."""

    codec: Codec
    clean_mean: float
    clean_std: float
    poisoned_mean: float
    poisoned_std: float
    separation: float
    threshold: float
    tpr: float
    fpr: float
    auc: float
    p_value: float
    p_value_test: str
    psnr_db: float
    clean_bytes_mean: float
    poisoned_bytes_mean: float
    num_clips: int = 0  # N: tpr = true_positives / N, fpr = false_positives / N
    true_positives: int = 0
    false_positives: int = 0
    tpr_ci: tuple[float, float] = (0.0, 1.0)  # 95 % Clopper-Pearson
    fpr_ci: tuple[float, float] = (0.0, 1.0)
    auc_ci: tuple[float, float] = (0.0, 1.0)  # 95 %, see auc_ci_method
    auc_ci_method: str = ""
    clean_scores: np.ndarray | None = None  # (N,) when per_clip_scores was asked for
    poisoned_scores: np.ndarray | None = None
    channel: Channel | None = None
    # the null model (EvaluateOptions.null_model): operating points per clip and per source video
    null_model: str = ""
    tpr_at_fpr: tuple[OperatingPoint, ...] = ()
    video_tpr_at_fpr: tuple[OperatingPoint, ...] = ()
    clean_p_values: np.ndarray | None = None  # (N,) when per_clip_scores and null_model
    poisoned_p_values: np.ndarray | None = None
    clean_z: np.ndarray | None = None  # p = Φ̄(z)
    poisoned_z: np.ndarray | None = None

    _ARRAYS = ("clean_scores", "poisoned_scores", "clean_p_values", "poisoned_p_values", "clean_z", "poisoned_z")

    def label(self) -> str:
        return self.channel.label() if self.channel is not None else self.codec.label()

    @classmethod
    def from_proto(cls, msg: pb.CodecResult) -> CodecStats:
        special = {"codec", "channel", "tpr_at_fpr", "video_tpr_at_fpr", *cls._ARRAYS}
        names = [f for f in cls.__dataclass_fields__ if f not in special and not f.endswith("_ci") and not f.startswith("_")]
        return cls(
            codec=Codec.from_proto(msg.codec),
            channel=Channel.from_proto(msg.channel) if msg.HasField("channel") else None,
            tpr_ci=_interval(msg.tpr_ci),
            fpr_ci=_interval(msg.fpr_ci),
            auc_ci=_interval(msg.auc_ci),
            tpr_at_fpr=tuple(_operating_point(p) for p in msg.tpr_at_fpr),
            video_tpr_at_fpr=tuple(_operating_point(p) for p in msg.video_tpr_at_fpr),
            **{a: np.array(getattr(msg, a)) if len(getattr(msg, a)) else None for a in cls._ARRAYS},
            **{n: getattr(msg, n) for n in names},
        )


def _interval(msg: pb.Interval) -> tuple[float, float]:
    return (msg.low, msg.high)


def _operating_point(msg: pb.OperatingPoint) -> OperatingPoint:
    return OperatingPoint(
        fpr=msg.fpr, threshold=msg.threshold, n=msg.n, true_positives=msg.true_positives, tpr=msg.tpr, tpr_ci=_interval(msg.tpr_ci),
        false_positives=msg.false_positives, observed_fpr=msg.observed_fpr, observed_fpr_ci=_interval(msg.observed_fpr_ci),
    )  # fmt: skip


@dataclass(frozen=True)
class CandidateResult:
    """``fitness`` = min over codec settings and channels of ``separation`` (``fitness_mean``: their
    mean): bigger is better. ``codecs``: codec settings then channels, presets expanded in place."""

    fitness: float
    codecs: tuple[CodecStats, ...]
    fitness_mean: float = math.nan
    num_clips: int = 0  # the clips these statistics rest on: the first num_clips of the request's carriers
    race_rank: int | None = None  # racing only: the race's order, 0 = best


@dataclass(frozen=True)
class EvaluateResult:
    candidates: tuple[CandidateResult, ...]
    scorer: str
    epsilon: float
    num_clips: int
    clip_ids: tuple[int, ...] = field(default=())
    clip_sources: tuple[int, ...] = field(default=())  # the source video of each clip (inline: each its own)
    source_names: tuple[str, ...] = field(default=())  # the names of the distinct sources, ascending by index

    @property
    def fitness(self) -> np.ndarray:
        """(P,) float64, one per candidate, in request order; bigger is better."""
        return np.array([c.fitness for c in self.candidates], dtype=np.float64)

    @property
    def raced(self) -> bool:
        return any(c.race_rank is not None for c in self.candidates)

    @property
    def race_fitness(self) -> np.ndarray:
        """(P,) float64 ``P - 1 - race_rank``: the race's order as a fitness (bigger is better, the
        winner has P - 1). A race compares candidates on different numbers of clips, so their
        ``fitness`` values are not comparable with each other; their order is what the race decided.
        Without a race: :attr:`fitness`."""
        if not self.raced:
            return self.fitness
        return np.array([len(self.candidates) - 1 - (c.race_rank or 0) for c in self.candidates], dtype=np.float64)

    @property
    def clip_tasks(self) -> int:
        """Poisoned clip encodes behind these results (candidates x clips x codec settings), cache
        hits included."""
        return sum(c.num_clips * len(c.codecs) for c in self.candidates)

    def table(self) -> str:
        """The detection table, one row per candidate and codec setting: rates with their counts
        and 95 % intervals; with the null model, TPR at each FPR per clip and per source video."""
        head = (
            f"{'cand':>4}  {'codec':<24} {'clean μ±σ':>15} {'poisoned μ±σ':>15} {'sep':>8} {'thr':>7} "
            f"{'TPR k/n [95% CI]':>22} {'FPR k/n [95% CI]':>22} {'AUC [95% CI]':>17} {'p':>8} {'PSNR':>6} {'bytes clean→pois':>17}"
        )
        lines = [f"scorer={self.scorer} epsilon={self.epsilon:.5g} ({self.epsilon * 255:.3g}/255) clips={self.num_clips}", head]
        for i, cand in enumerate(self.candidates):
            if cand.race_rank is not None:
                lines.append(f"{i:>4}  race rank {cand.race_rank}, statistics on the first {cand.num_clips} clips")
            for s in cand.codecs:
                psnr = "inf" if math.isinf(s.psnr_db) else f"{s.psnr_db:.1f}"
                tpr = f"{s.true_positives}/{s.num_clips} {_ci(s.tpr_ci)}"
                fpr = f"{s.false_positives}/{s.num_clips} {_ci(s.fpr_ci)}"
                auc = f"{s.auc:.2f} [{s.auc_ci[0]:.2f},{s.auc_ci[1]:.2f}]"
                lines.append(
                    f"{i:>4}  {s.label():<24} {s.clean_mean:>7.3f}±{s.clean_std:<7.3f} "
                    f"{s.poisoned_mean:>7.3f}±{s.poisoned_std:<7.3f} {s.separation:>8.4f} {s.threshold:>7.3f} "
                    f"{tpr:>22} {fpr:>22} {auc:>17} {s.p_value:>8.2g} {psnr:>6} "
                    f"{s.clean_bytes_mean:>8.0f}→{s.poisoned_bytes_mean:<8.0f}"
                )
                for unit, points in (("clips", s.tpr_at_fpr), ("videos", s.video_tpr_at_fpr)):
                    if points:
                        lines.append(f"{'':>6}null, {unit:<6} " + "  ".join(_point(p) for p in points))
        first = self.candidates[0].codecs[0] if self.candidates else None
        lines.append("TPR/FPR at the threshold thr; k/n counts, [95% CI] Clopper-Pearson; AUC [95% CI] Newcombe score interval")
        lines.append("p: " + (first.p_value_test if first else ""))
        if first is not None and first.null_model:
            lines.append("null: marked when p < FPR; TPR k/n [95% CI], clean called marked (false alarms) f/n; " + first.null_model)
        return "\n".join(lines)


def _ci(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.0%},{ci[1]:.0%}]"


def _point(p: OperatingPoint) -> str:
    return f"FPR {p.fpr:.0e}: TPR {p.true_positives}/{p.n} {_ci(p.tpr_ci)} f {p.false_positives}/{p.n}"


@dataclass(frozen=True)
class TranscodeResult:
    decoded: np.ndarray  # uint8 (N, T, H, W, 3) after the codec (channel), at the carriers' size
    inputs: np.ndarray | None  # uint8 (N, T, H, W, 3) that went into the channel, when asked for
    encoded_bytes: np.ndarray  # (N,) int64, all encodes of the channel
    clip_ids: tuple[int, ...]
    codec: Codec  # the (last) encode
    channel: Channel | None = None  # the whole channel, when one was asked for


@dataclass(frozen=True)
class ClipScores:
    """``Client.score_clips``: a served detector's scores of N clips, and for a keyed detector each
    score in units of its empirical null (``z``, ``p_values`` = P(N(0, 1) >= z), ``null_model`` in words)."""

    scores: np.ndarray  # (N,) float64, larger = marked
    z: np.ndarray | None  # (N,) float64; None for a keyless detector
    p_values: np.ndarray | None  # (N,) float64; None for a keyless detector
    null_model: str = ""


@dataclass(frozen=True)
class Progress:
    """Streaming: ``done`` of ``total`` clip tasks (candidates x codecs x clips) are finished."""

    done: int
    total: int


@dataclass(frozen=True)
class CandidateDone:
    """Streaming: candidate ``index`` (its position in the population) is complete."""

    index: int
    result: CandidateResult


StreamEvent = Progress | CandidateDone
