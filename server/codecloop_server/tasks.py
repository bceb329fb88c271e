"""The clip-level work units that codec worker processes run: pure functions of their arguments.

One task is one carrier clip (a candidate's task: one or more) through one channel (channels.py):
poison (for candidates), the channel's steps (RGB -> yuv420p, a real encode, its decode, yuv420p -> RGB, and any resize, crop or
frame-rate change), scorer features and scores. Frames, signatures
and clean features arrive as shared-memory references (shm.ArrayRef), results are a few numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from codecloop_server import scorers, shm
from codecloop_server.channels import Channel
from codecloop_server.codecs import CodecSettings
from codecloop_server.scorers import Params
from codecloop_server.transcode import transcode_rgb
from codecloop_wire.null import KeySpectrum, key_spectrum, shift_null
from codecloop_wire.poison import poison

ScorerKey = tuple[str, Params]  # (scorer name, resolved params)


@dataclass(frozen=True)
class ClipRef:
    """Clip ``index`` of the (N, T, H, W, 3) uint8 array behind ``source``; ``source_side``: the short
    side in pixels of the video it stands for (None: the clip itself; channels.Resize reads it)."""

    source: shm.ArrayRef
    index: int
    source_side: int | None = None

    def load(self) -> np.ndarray:
        """This clip only (a copy of one clip, not of the whole array, for a request's inline clips)."""
        return shm.read(self.source, self.index)


@dataclass(frozen=True)
class PoisonedScore:
    poisoned: float  # score of the poisoned clip after the codec
    clean: float  # score of the clean clip after the codec, against the same signature
    encoded_bytes: int
    squared_error: int  # sum over the clip of (poisoned_u8 - clean_u8)^2, before the codec
    poisoned_z: float = math.nan  # the scores in units of their null (null.py), when asked for
    clean_z: float = math.nan


@dataclass(frozen=True)
class CleanRef:
    """A cached clean clip, as a task sees it: features and their time sum in shared memory."""

    features: shm.ArrayRef  # integer (T, H, W, 3)
    time_sum: shm.ArrayRef  # int64 (H, W, 3)
    total: int
    squares: int

    def stats(self) -> scorers.ClipStats:
        count = int(np.prod(self.features.shape))
        return scorers.ClipStats(shm.read(self.time_sum), self.total, self.squares, count)


def clean_task(clip: ClipRef, channel: Channel, scorer: ScorerKey) -> tuple[np.ndarray, scorers.ClipStats, int]:
    """The clean clip after the channel: scorer features (integer (T, H, W, 3)), their stats, encoded size."""
    decoded, nbytes = channel.apply(clip.load(), clip.source_side)
    features = scorers.worker_scorer(scorer[0]).features(decoded[None], scorer[1])[0]
    return features, scorers.clip_stats(features), nbytes


def poisoned_task(
    clips: list[tuple[ClipRef, CleanRef]],
    signature: shm.ArrayRef,
    template: shm.ArrayRef,
    t_sq: float,
    epsilon: float,
    channel: Channel,
    scorer: ScorerKey,
    null: bool = False,
) -> list[PoisonedScore]:
    """Score one candidate on one or more clips, in order; each clip's clean side comes from the
    server's cache. One task for several clips is one round trip to the server process (fewer
    wake-ups of the server between the workers' encodes); the candidate's arrays are read once.

    ``t_sq`` is the template's sum of squares (scorers.template_sq), computed once per candidate.
    ``null``: also place both scores in their null (null.shift_null: a few FFTs per clip).
    """
    impl = scorers.worker_scorer(scorer[0])
    sig, tmpl = shm.read(signature), shm.read(template)
    key = key_spectrum(tmpl) if null else None  # once per task: shared by its clips, clean and poisoned
    return [_poisoned_score(impl, clip.load(), clip.source_side, clean, sig, tmpl, t_sq, epsilon, channel, scorer[1], key) for clip, clean in clips]


def _poisoned_score(
    impl: scorers.Scorer,
    original: np.ndarray,
    source_side: int | None,
    clean: CleanRef,
    sig: np.ndarray,
    tmpl: np.ndarray,
    t_sq: float,
    epsilon: float,
    channel: Channel,
    params: Params,
    key: KeySpectrum | None,
) -> PoisonedScore:
    """One clip: only the poisoned clip's features are computed; the clean score is the cached clean
    stats against this candidate's template (scorers.Scorer.score_clip and score_clean)."""
    marked = poison(original, sig, epsilon)
    decoded, nbytes = channel.apply(marked, source_side)
    features = impl.features(decoded[None], params)[0]
    # the cached clean features are read once, and only when the scorer or the template needs them
    clean_features = shm.read(clean.features) if impl.uses_reference or tmpl.shape[0] > 1 else None
    poisoned = impl.score_clip(features, tmpl, clean_features, t_sq)
    clean_side = impl.score_clean(clean.stats(), tmpl, clean_features, t_sq)
    poisoned_z = clean_z = math.nan
    if key is not None:
        poisoned_z = shift_null(poisoned.correlated(tmpl), key).z
        # no clean side (a reference-based scorer): no evidence at all, p = 1
        clean_z = shift_null(clean_side.correlated(tmpl), key).z if clean_side is not None else -math.inf
    return PoisonedScore(
        poisoned=poisoned.score,
        clean=clean_side.score if clean_side is not None else 0.0,
        encoded_bytes=nbytes,
        squared_error=squared_error(marked, original),
        poisoned_z=poisoned_z,
        clean_z=clean_z,
    )


def decoded_task(clip: ClipRef, signature: shm.ArrayRef | None, epsilon: float, channel: Channel) -> tuple[np.ndarray, int, int]:
    """For a detector (scored in the server): (decoded uint8 (T, H, W, 3), encoded bytes, squared
    error of the poisoning); the clean clip when ``signature`` is None."""
    original = clip.load()
    marked = original if signature is None else poison(original, shm.read(signature), epsilon)
    decoded, nbytes = channel.apply(marked, clip.source_side)
    return decoded, nbytes, squared_error(marked, original)


def squared_error(marked: np.ndarray, original: np.ndarray) -> int:
    """sum((marked - original)^2) over uint8 arrays of one shape, exactly.

    Squares in place in int32 (at most 255^2), summed in int64: a quarter faster than an int16
    einsum into int64 (0.6 ms instead of 0.8 ms per 112x112x16 clip), the same integer."""
    diff = np.subtract(marked, original, dtype=np.int32)
    np.multiply(diff, diff, out=diff)
    return int(diff.sum(dtype=np.int64))


def transcode_task(
    clip: ClipRef, signature: shm.ArrayRef | None, epsilon: float, channel: Channel, include_input: bool
) -> tuple[np.ndarray | None, np.ndarray, int]:
    """(encoder input uint8 when ``include_input``, decoded uint8, encoded bytes) for one clip,
    clean when signature is None. The input comes back only when asked for: it is a clip's worth of
    pipe transfer and server memory."""
    clean = clip.load()
    marked = clean if signature is None else poison(clean, shm.read(signature), epsilon)
    decoded, nbytes = channel.apply(marked, clip.source_side)
    return (marked if include_input else None), decoded, nbytes


def warm_task() -> int:
    """Import everything and run one tiny real encode, so a worker's first task pays no start-up.

    Holds the worker for 0.2 s so that a batch of these lands on distinct workers.
    """
    import os
    import time

    transcode_rgb(np.zeros((2, 16, 16, 3), np.uint8), CodecSettings(preset="ultrafast"))
    time.sleep(0.2)
    return os.getpid()
