"""What the engine is asked to do and what it answers: job and outcome records, transport-free.

The gRPC layer (service.py) builds jobs from requests (parse.py) and turns outcomes into replies.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from codecloop_server.channels import Channel
from codecloop_server.tasks import PoisonedScore, ScorerKey
from codecloop_wire import stats


@dataclass(frozen=True)
class CarrierSet:
    """Resolved carriers: either ``clip_ids`` of ``dataset`` or ``inline`` uint8 (N, T, H, W, 3)."""

    keys: tuple[Hashable, ...]  # a cache identity per clip
    clip_shape: tuple[int, int, int]  # (T, H, W)
    dataset: str | None = None
    clip_ids: tuple[int, ...] = ()
    inline: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)


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


@dataclass(frozen=True)
class CodecOutcome:
    channel: Channel
    stats: dict[str, Any]
    psnr_db: float
    clean_bytes_mean: float
    poisoned_bytes_mean: float
    clean_scores: np.ndarray
    poisoned_scores: np.ndarray


@dataclass(frozen=True)
class CandidateOutcome:
    fitness: float  # min over channels of separation
    codecs: tuple[CodecOutcome, ...]
    fitness_mean: float  # mean over channels of separation


@dataclass(frozen=True)
class TranscodeOutcome:
    inputs: np.ndarray | None  # uint8 (N, T, H, W, 3), when asked for
    decoded: np.ndarray  # uint8 (N, T, H, W, 3)
    encoded_bytes: tuple[int, ...]


ProgressFn = Callable[[int, int], None]  # (clip tasks done, total)
CandidateFn = Callable[[int, CandidateOutcome], None]


def candidate_outcome(job: EvaluateJob, results: list[list[PoisonedScore]], clean_bytes: list[list[int]]) -> CandidateOutcome:
    """Statistics of one candidate: ``results[c][i]`` its score on clip i through channel c,
    ``clean_bytes[c][i]`` the encoded size of that clean clip (all encodes of the channel)."""
    values_per_clip = int(np.prod(job.carriers.clip_shape)) * 3
    codecs = []
    for channel, per_clip, sizes in zip(job.channels, results, clean_bytes):
        poisoned = np.array([r.poisoned for r in per_clip])
        clean_scores = np.array([r.clean for r in per_clip])
        codecs.append(
            CodecOutcome(
                channel=channel,
                stats=stats.detection_stats(clean_scores, poisoned, job.decision),
                psnr_db=stats.psnr_db(sum(r.squared_error for r in per_clip), values_per_clip * len(per_clip)),
                clean_bytes_mean=float(np.mean(sizes)),
                poisoned_bytes_mean=float(np.mean([r.encoded_bytes for r in per_clip])),
                clean_scores=clean_scores,
                poisoned_scores=poisoned,
            )
        )
    separations = [c.stats["separation"] for c in codecs]
    return CandidateOutcome(fitness=min(separations), codecs=tuple(codecs), fitness_mean=float(np.mean(separations)))
