"""Typed request options and results of the SDK."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from codecloop_wire import defaults
from codecloop_wire.v1 import codecloop_pb2 as pb


@dataclass(frozen=True)
class Codec:
    """Real-codec settings. A field left None is not sent: the server applies its default
    (``codecloop_wire.defaults``: libx264, CRF 28, medium, yuv420p, GOP 250, 25 fps).
    ``crf`` in [0, 51], 0 = lossless.

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

    def to_proto(self) -> pb.CodecSettings:
        return pb.CodecSettings(**{k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def from_proto(cls, msg: pb.CodecSettings) -> Codec:
        return cls(**{f.name: getattr(msg, f.name) if msg.HasField(f.name) else None for f in fields(cls)})

    def resolved(self) -> Codec:
        """Every unset field filled with the server's default (what a request with these settings runs)."""
        return replace(
            self,
            **{f.name: getattr(defaults, f.name.upper()) for f in fields(self) if getattr(self, f.name) is None and hasattr(defaults, f.name.upper())},
        )

    def label(self) -> str:
        c = self.resolved()
        return f"{c.codec} crf={c.crf:g} {c.preset}"


@dataclass(frozen=True)
class DatasetCarriers:
    """Carrier clips from a server-side dataset: ``num_clips`` drawn from ``split`` with ``seed``.
    A field left None is not sent: the server applies its default (``codecloop_wire.defaults``:
    dataset "embedded", split "train", 32 clips, seed 0)."""

    dataset: str | None = None
    split: str | None = None
    num_clips: int | None = None
    seed: int | None = None

    def to_proto(self) -> pb.Carriers:
        return pb.Carriers(dataset=pb.DatasetCarriers(**{k: v for k, v in asdict(self).items() if v is not None}))

    def resolved(self) -> DatasetCarriers:
        """Every unset field filled with the server's default."""
        return replace(self, **{f.name: getattr(defaults, f.name.upper()) for f in fields(self) if getattr(self, f.name) is None})


@dataclass(frozen=True)
class CodecStats:
    """Detection statistics of one candidate under one codec setting (see README "Statistics")."""

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
    clean_scores: np.ndarray | None = None  # (N,) when per_clip_scores was asked for
    poisoned_scores: np.ndarray | None = None

    @classmethod
    def from_proto(cls, msg: pb.CodecResult) -> CodecStats:
        names = [f for f in cls.__dataclass_fields__ if f not in ("codec", "clean_scores", "poisoned_scores")]
        per_clip = len(msg.clean_scores) > 0
        return cls(
            codec=Codec.from_proto(msg.codec),
            clean_scores=np.array(msg.clean_scores) if per_clip else None,
            poisoned_scores=np.array(msg.poisoned_scores) if per_clip else None,
            **{n: getattr(msg, n) for n in names},
        )


@dataclass(frozen=True)
class CandidateResult:
    """``fitness`` = min over codec settings of ``separation``: bigger is better."""

    fitness: float
    codecs: tuple[CodecStats, ...]


@dataclass(frozen=True)
class EvaluateResult:
    candidates: tuple[CandidateResult, ...]
    scorer: str
    epsilon: float
    num_clips: int
    clip_ids: tuple[int, ...] = field(default=())

    @property
    def fitness(self) -> np.ndarray:
        """(P,) float64, one per candidate, in request order; bigger is better."""
        return np.array([c.fitness for c in self.candidates], dtype=np.float64)

    def table(self) -> str:
        """The seed report's table, one row per candidate and codec setting."""
        head = (
            f"{'cand':>4}  {'codec':<24} {'clean μ±σ':>15} {'poisoned μ±σ':>15} {'sep':>8} {'thr':>7} "
            f"{'TPR':>5} {'FPR':>5} {'AUC':>5} {'p':>8} {'PSNR':>6} {'bytes clean→pois':>17}"
        )
        lines = [f"scorer={self.scorer} epsilon={self.epsilon:.5g} ({self.epsilon * 255:.3g}/255) clips={self.num_clips}", head]
        for i, cand in enumerate(self.candidates):
            for s in cand.codecs:
                psnr = "inf" if math.isinf(s.psnr_db) else f"{s.psnr_db:.1f}"
                lines.append(
                    f"{i:>4}  {s.codec.label():<24} {s.clean_mean:>7.3f}±{s.clean_std:<7.3f} "
                    f"{s.poisoned_mean:>7.3f}±{s.poisoned_std:<7.3f} {s.separation:>8.4f} {s.threshold:>7.3f} "
                    f"{s.tpr:>5.0%} {s.fpr:>5.0%} {s.auc:>5.2f} {s.p_value:>8.2g} {psnr:>6} "
                    f"{s.clean_bytes_mean:>8.0f}→{s.poisoned_bytes_mean:<8.0f}"
                )
        lines.append("p: " + (self.candidates[0].codecs[0].p_value_test if self.candidates else ""))
        return "\n".join(lines)


@dataclass(frozen=True)
class TranscodeResult:
    decoded: np.ndarray  # uint8 (N, T, H, W, 3) after libx264 + h264 decode
    inputs: np.ndarray | None  # uint8 (N, T, H, W, 3) that went into the encoder, when asked for
    encoded_bytes: np.ndarray  # (N,) int64
    clip_ids: tuple[int, ...]
    codec: Codec


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
