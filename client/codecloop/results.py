"""Typed results of the SDK: per codec setting or channel (:class:`CodecStats`), per candidate, per
request (:class:`EvaluateResult`, its printable table), Transcode and ScoreClips replies, stream events."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from codecloop.types import Channel, Codec
from codecloop_wire.stats import OperatingPoint
from codecloop_wire.v1 import codecloop_pb2 as pb


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
