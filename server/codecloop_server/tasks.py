"""The clip-level work units that codec worker processes run: pure functions, ndarray in and out.

One task is one carrier clip through one codec setting: poison (for candidates), RGB -> yuv420p,
real libx264 encode, h264 decode, yuv420p -> RGB, scorer features and score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codecloop.poison import poison
from codecloop_server import scorers
from codecloop_server.codec import CodecSettings, rgb_to_yuv420p, transcode_yuv, yuv420p_to_rgb

ScorerKey = tuple[str, tuple[tuple[str, float], ...]]  # (scorer name, resolved params)


@dataclass(frozen=True)
class CleanClip:
    """A carrier clip after the codec, as the cache keeps it."""

    features: np.ndarray  # float32 (T, H, W, 3): the scorer's signature-free features
    encoded_bytes: int

    @property
    def nbytes(self) -> int:
        return self.features.nbytes


@dataclass(frozen=True)
class PoisonedScore:
    poisoned: float  # score of the poisoned clip after the codec
    clean: float  # score of the clean clip after the codec, against the same signature
    encoded_bytes: int
    squared_error: float  # sum over the clip of (poisoned_u8 - clean_u8)^2, before the codec


def transcode_rgb(clip: np.ndarray, settings: CodecSettings) -> tuple[np.ndarray, int]:
    """uint8 (T, H, W, 3) RGB through the real codec -> (decoded uint8 (T, H, W, 3), encoded bytes)."""
    decoded, nbytes = transcode_yuv(rgb_to_yuv420p(clip), settings)
    return yuv420p_to_rgb(decoded), nbytes


def clean_task(clip: np.ndarray, settings: CodecSettings, scorer: ScorerKey) -> CleanClip:
    decoded, nbytes = transcode_rgb(clip, settings)
    return CleanClip(features=scorers.get(scorer[0]).features(decoded[None], scorer[1])[0], encoded_bytes=nbytes)


def poisoned_task(
    clip: np.ndarray,
    clean: CleanClip,
    signature: np.ndarray,
    epsilon: float,
    settings: CodecSettings,
    scorer: ScorerKey,
) -> PoisonedScore:
    """Score one candidate on one clip; the clean side comes from the cache."""
    impl = scorers.get(scorer[0])
    marked = poison(clip, signature, epsilon)
    decoded, nbytes = transcode_rgb(marked, settings)
    features = impl.features(decoded[None], scorer[1])
    reference = clean.features[None] if impl.uses_reference else None
    diff = marked.astype(np.int32) - clip.astype(np.int32)
    return PoisonedScore(
        poisoned=float(impl.score(features, signature, reference, scorer[1])[0]),
        clean=float(impl.score(clean.features[None], signature, reference, scorer[1])[0]),
        encoded_bytes=nbytes,
        squared_error=float((diff * diff).sum()),
    )


def transcode_task(
    clip: np.ndarray, signature: np.ndarray | None, epsilon: float, settings: CodecSettings
) -> tuple[np.ndarray, np.ndarray, int]:
    """(encoder input uint8, decoded uint8, encoded bytes) for one clip, clean when signature is None."""
    marked = clip if signature is None else poison(clip, signature, epsilon)
    decoded, nbytes = transcode_rgb(marked, settings)
    return marked, decoded, nbytes
