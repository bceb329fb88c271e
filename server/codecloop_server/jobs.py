"""What the engine is asked to do and what it answers: job and outcome records, transport-free.

The gRPC layer (service.py) builds jobs from requests (parse.py) and turns outcomes into replies (render.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from codecloop_server.channels import Channel
from codecloop_server.tasks import PoisonedScore, ScorerKey
from codecloop_wire import stats
from codecloop_wire.null import p_values


@dataclass(frozen=True)
class CarrierSet:
    """Resolved carriers: either ``clip_ids`` of ``dataset`` or ``inline`` uint8 (N, T, H, W, 3)."""

    keys: tuple[Hashable, ...]  # a cache identity per clip
    clip_shape: tuple[int, int, int]  # (T, H, W)
    dataset: str | None = None
    clip_ids: tuple[int, ...] = ()
    inline: np.ndarray | None = None
    # the source video of each clip (inline clips: each its own) and the names of the sources used
    sources: tuple[int, ...] = ()
    source_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.keys)

    def clip_sources(self) -> tuple[int, ...]:
        """The source index of each clip: the dataset's, or 0 .. N-1 for inline clips."""
        return self.sources or tuple(range(len(self.keys)))


@dataclass(frozen=True)
class Racing:
    """Successive halving over the carriers (proto ``Racing``; validated by parse.py)."""

    first_clips: int  # clips of round 1, in [1, N]
    eta: int  # survivors' share 1/eta and clip growth per round, >= 2
    finalists: int  # candidates that get all N clips, in [1, P]
    centre_weight: float  # race value = min over channels of separation - centre_weight * |clean_mean|

    def rounds(self, candidates: int, clips: int) -> tuple[tuple[int, int], ...]:
        """``(candidates in the round, clips they have after it)`` per round; the last has ``clips``."""
        out = []
        alive, n = candidates, min(self.first_clips, clips)
        while True:
            out.append((alive, n))
            if n >= clips:
                return tuple(out)
            alive, n = max(self.finalists, -(-alive // self.eta)), min(clips, n * self.eta)

    def value(self, outcome: CandidateOutcome) -> float:
        """The race value of a candidate's outcome on its clips (bigger is better)."""
        return min(float(c.stats["separation"]) - self.centre_weight * abs(float(c.stats["clean_mean"])) for c in outcome.codecs)


@dataclass(frozen=True)
class EvaluateJob:
    candidates: tuple[np.ndarray, ...]  # float32 (T or 1, H, W, 3) in [-1, 1]
    epsilon: float
    carriers: CarrierSet
    channels: tuple[Channel, ...]  # codecs given alone are one-step channels
    scorer: ScorerKey
    decision: stats.Decision
    per_clip: bool = False
    report_channels: bool = False  # results name their channel (the request gave channels)
    racing: Racing | None = None
    null_fprs: tuple[float, ...] | None = None  # the null model's operating points; None: no null model

    def rounds(self) -> tuple[tuple[int, int], ...]:
        """``(candidates, clips)`` per round: one round of every candidate on every clip unless racing."""
        p, n = len(self.candidates), len(self.carriers)
        return self.racing.rounds(p, n) if self.racing is not None else ((p, n),)

    def clip_tasks(self) -> int:
        """Poisoned clip tasks the job runs (the race's schedule), over all channels."""
        total, before = 0, 0
        for alive, clips in self.rounds():
            total, before = total + alive * (clips - before), clips
        return total * len(self.channels)


@dataclass(frozen=True)
class TranscodeJob:
    """The carriers through one channel, poisoned with ``signature`` when given (TranscodeRequest)."""

    carriers: CarrierSet
    channel: Channel
    epsilon: float
    signature: np.ndarray | None = None  # float32 (T or 1, H, W, 3) in [-1, 1]; None: the clean clips
    include_input: bool = False  # the reply carries the (poisoned) input clips too
    report_channel: bool = False  # the reply names its channel (the request gave a channel)

    @property
    def channels(self) -> tuple[Channel, ...]:
        return (self.channel,)

    def clip_tasks(self) -> int:
        """Clip tasks the job runs: one per carrier."""
        return len(self.carriers)


@dataclass(frozen=True)
class CodecOutcome:
    channel: Channel
    stats: dict[str, Any]
    psnr_db: float
    clean_bytes_mean: float
    poisoned_bytes_mean: float
    clean_scores: np.ndarray
    poisoned_scores: np.ndarray
    null: NullOutcome | None = None


@dataclass(frozen=True)
class NullOutcome:
    """The null model's view of one candidate under one channel (stats.py, null.py)."""

    clean_z: np.ndarray  # (n,) per clip; p = Φ̄(z)
    poisoned_z: np.ndarray
    tpr_at_fpr: tuple[stats.OperatingPoint, ...]  # per clip
    video_tpr_at_fpr: tuple[stats.OperatingPoint, ...]  # per source video (Stouffer)


@dataclass(frozen=True)
class CandidateOutcome:
    fitness: float  # min over channels of separation
    codecs: tuple[CodecOutcome, ...]
    fitness_mean: float  # mean over channels of separation
    num_clips: int  # the clips these statistics rest on: the first num_clips carriers
    race_rank: int | None = None  # racing: the race's order, 0 = best


@dataclass(frozen=True)
class TranscodeOutcome:
    inputs: np.ndarray | None  # uint8 (N, T, H, W, 3), when asked for
    decoded: np.ndarray  # uint8 (N, T, H, W, 3)
    encoded_bytes: tuple[int, ...]


@dataclass(frozen=True)
class EngineStats:
    """The engine's counters and state at one moment (GetServerInfo's load, the Prometheus metrics)."""

    workers: int  # codec worker processes
    encodes: dict[str, int]  # clips through the codec in a worker by kind (clean, poisoned, transcode), kinds that ran
    clean_cache_bytes: int
    clean_cache_held: int  # clean entries leased by requests in progress
    clean_cache_hits: int
    clean_cache_misses: int
    result_cache_hits: int
    result_cache_misses: int
    queued_tasks: int
    tasks_in_flight: int
    worker_restarts: int  # worker pools replaced after a worker died
    workers_responsive: int  # alive, not stopped, no task past the timeout
    queued_by_client: dict[str, int]  # clip tasks queued now, per client
    dispatched_by_client: dict[str, int]  # clip tasks handed to workers so far, per client


ProgressFn = Callable[[int, int], None]  # (clip tasks done, total)
CandidateFn = Callable[[int, CandidateOutcome], None]


def candidate_outcome(job: EvaluateJob, results: list[list[PoisonedScore]], clean_bytes: list[list[int]]) -> CandidateOutcome:
    """Statistics of one candidate: ``results[c][i]`` its score on clip i through channel c (the
    first n carriers), ``clean_bytes[c][i]`` the encoded size of that clean clip (n or more)."""
    values_per_clip = int(np.prod(job.carriers.clip_shape)) * 3
    codecs = []
    for channel, per_clip, sizes in zip(job.channels, results, clean_bytes):
        poisoned = np.array([r.poisoned for r in per_clip])
        clean_scores = np.array([r.clean for r in per_clip])
        null = None if job.null_fprs is None else null_outcome(job, per_clip)
        codecs.append(
            CodecOutcome(
                channel=channel,
                stats=stats.detection_stats(clean_scores, poisoned, job.decision),
                psnr_db=stats.psnr_db(sum(r.squared_error for r in per_clip), values_per_clip * len(per_clip)),
                clean_bytes_mean=float(np.mean(sizes[: len(per_clip)])),
                poisoned_bytes_mean=float(np.mean([r.encoded_bytes for r in per_clip])),
                clean_scores=clean_scores,
                poisoned_scores=poisoned,
                null=null,
            )
        )
    separations = [c.stats["separation"] for c in codecs]
    return CandidateOutcome(
        fitness=min(separations), codecs=tuple(codecs), fitness_mean=float(np.mean(separations)), num_clips=len(results[0])
    )


def null_outcome(job: EvaluateJob, per_clip: list[PoisonedScore]) -> NullOutcome:
    """Operating points per clip and per source video from the clips' null z-scores."""
    assert job.null_fprs is not None, "the job asked for no null model"
    clean_z = np.array([r.clean_z for r in per_clip])
    poisoned_z = np.array([r.poisoned_z for r in per_clip])
    sources = np.array(job.carriers.clip_sources()[: len(per_clip)])
    _, clean_video = stats.video_z(clean_z, sources)
    _, poisoned_video = stats.video_z(poisoned_z, sources)
    return NullOutcome(
        clean_z=clean_z,
        poisoned_z=poisoned_z,
        tpr_at_fpr=stats.operating_points(p_values(clean_z), p_values(poisoned_z), job.null_fprs),
        video_tpr_at_fpr=stats.operating_points(p_values(clean_video), p_values(poisoned_video), job.null_fprs),
    )


@dataclass(frozen=True)
class ScoreClipsJob:
    """Clips to score with a served detector (ScoreClips): uint8 ``clips`` (N, T, H, W, 3), one of the
    detector's clip shapes; ``signature`` float32 (T or 1, H, W, 3), the key, for a keyed detector only."""

    detector: str
    clips: np.ndarray
    signature: np.ndarray | None


@dataclass(frozen=True)
class ClipScores:
    """A ScoreClips answer: ``scores`` float64 (N,), and for a keyed detector ``z`` float64 (N,), each
    score's z in its empirical null (codecloop_wire.null.empirical_z over the key's moved copies)."""

    scores: np.ndarray
    z: np.ndarray | None
