"""What a server offers, typed: :class:`ServerInfo` (``Client.info()``), read from the wire's
``ServerInfo`` message. ``info.dataset(name)`` finds a dataset or names the ones there are."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from codecloop.types import Channel
from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.v1 import codecloop_pb2 as pb


@dataclass(frozen=True)
class SourceClips:
    """One source of a dataset (a file, an array of a ``.npz``, a photograph) and its clips per split."""

    name: str
    split_clips: dict[str, int]


@dataclass(frozen=True)
class SkippedFile:
    """A folder file that gave no clip, and why (unreadable, no video stream, too short)."""

    name: str
    reason: str


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset: clips per split, clip shape (T, H, W), content digest, how it was split and from
    which sources (``split_sources``: split -> names; ``sources``: each with its clips per split),
    how video frames became clip frames (``carrier_policy``), the files skipped, and its folder ("" for
    the built-in ones)."""

    name: str
    split_clips: dict[str, int]
    clip_shape: tuple[int, int, int]
    digest: str
    description: str
    split_policy: str
    split_sources: dict[str, tuple[str, ...]]
    carrier_policy: str
    sources: tuple[SourceClips, ...]
    skipped: tuple[SkippedFile, ...]
    folder: str

    @classmethod
    def from_proto(cls, msg: pb.DatasetInfo) -> DatasetInfo:
        t, h, w = (int(x) for x in msg.clip_shape)
        return cls(
            name=msg.name,
            split_clips=dict(msg.split_clips),
            clip_shape=(t, h, w),
            digest=msg.digest,
            description=msg.description,
            split_policy=msg.split_policy,
            split_sources={k: tuple(v.names) for k, v in msg.split_sources.items()},
            carrier_policy=msg.carrier_policy,
            sources=tuple(SourceClips(s.name, dict(s.split_clips)) for s in msg.sources),
            skipped=tuple(SkippedFile(s.name, s.reason) for s in msg.skipped),
            folder=msg.folder,
        )


@dataclass(frozen=True)
class ScorerInfo:
    """A scorer (built-in or a served detector), its default parameters, whether it offers the
    null model (``EvaluateRequest.null_model``), and for a detector the clip shapes (T, H, W) that
    ``Client.score_clips`` takes (empty for a built-in scorer)."""

    name: str
    description: str
    default_params: dict[str, float]
    null_model: bool
    clip_shapes: tuple[tuple[int, int, int], ...] = ()


@dataclass(frozen=True)
class CodecInfo:
    """A codec the server runs: its decoder, rate controls (CRF range, QP range or None, bitrate),
    presets, the smallest frame side an encode step takes, and the encoder library's version."""

    codec: str
    decoder: str
    crf_range: tuple[float, float]
    qp_range: tuple[int, int] | None
    bitrate: bool
    presets: tuple[str, ...]
    default_preset: str
    min_size: int
    version: str

    @classmethod
    def from_proto(cls, msg: pb.CodecInfo) -> CodecInfo:
        lo, hi = msg.crf_range
        return cls(
            codec=msg.codec,
            decoder=msg.decoder,
            crf_range=(lo, hi),
            qp_range=(int(msg.qp_range[0]), int(msg.qp_range[1])) if len(msg.qp_range) == 2 else None,
            bitrate=msg.bitrate,
            presets=tuple(msg.presets),
            default_preset=msg.default_preset,
            min_size=msg.min_size,
            version=msg.version,
        )


@dataclass(frozen=True)
class ChannelPreset:
    """A named set of channels (``Channel(preset=name)``), fully resolved."""

    name: str
    description: str
    channels: tuple[Channel, ...]


@dataclass(frozen=True)
class Limits:
    """The server's request limits (docs/operations.md, "Limits and errors"); pixels are T * H * W, bytes per message."""

    max_candidates: int
    max_clips: int
    max_clip_pixels: int
    max_work_pixels: int
    max_codecs: int
    max_message_bytes: int
    max_client_calls: int

    @classmethod
    def from_proto(cls, msg: pb.Limits) -> Limits:
        return cls(**{f.name: int(getattr(msg, f.name)) for f in fields(cls)})


@dataclass(frozen=True)
class ServerInfo:
    """Versions (codecloop, pyav, ffmpeg, x264 build and SIMD level, ...), datasets, codecs, presets,
    scorers, limits, codec workers, current load and cache counters, and what channels can use.
    ``message`` is the wire message it was read from (what ``codecloop info`` prints as JSON)."""

    versions: dict[str, str]
    datasets: tuple[DatasetInfo, ...]
    codecs: tuple[str, ...]
    presets: tuple[str, ...]
    pix_fmts: tuple[str, ...]
    scorers: tuple[ScorerInfo, ...]
    limits: Limits
    workers: int
    load: dict[str, float]
    codec_info: tuple[CodecInfo, ...]
    channel_presets: tuple[ChannelPreset, ...]
    resize_filters: tuple[str, ...]
    message: pb.ServerInfo = field(repr=False, compare=False)

    def dataset(self, name: str) -> DatasetInfo:
        """The dataset called ``name``; CodecLoopValueError naming the ones there are otherwise."""
        for d in self.datasets:
            if d.name == name:
                return d
        raise CodecLoopValueError(f"dataset: the server has no dataset {name!r}; it has {', '.join(d.name for d in self.datasets)}")

    @classmethod
    def from_proto(cls, msg: pb.ServerInfo) -> ServerInfo:
        return cls(
            versions=dict(msg.versions),
            datasets=tuple(DatasetInfo.from_proto(d) for d in msg.datasets),
            codecs=tuple(msg.codecs),
            presets=tuple(msg.presets),
            pix_fmts=tuple(msg.pix_fmts),
            scorers=tuple(
                ScorerInfo(s.name, s.description, dict(s.default_params), s.null_model, tuple((c.frames, c.height, c.width) for c in s.clip_shapes))
                for s in msg.scorers
            ),
            limits=Limits.from_proto(msg.limits),
            workers=msg.workers,
            load=dict(msg.load),
            codec_info=tuple(CodecInfo.from_proto(c) for c in msg.codec_info),
            channel_presets=tuple(ChannelPreset(p.name, p.description, tuple(Channel.from_proto(c) for c in p.channels)) for p in msg.channel_presets),
            resize_filters=tuple(msg.resize_filters),
            message=msg,
        )
