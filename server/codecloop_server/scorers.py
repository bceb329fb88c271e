"""Detectors that score decoded clips against a signature, and their registry.

A scorer works in two steps so the server can cache the clean side:

* ``features(clips, params)``: a per-clip, signature-independent transform of decoded uint8 clips
  (N, T, H, W, 3) into float32 (N, T, H, W, 3). Clean features are computed once per
  (carrier clip, codec settings, scorer, params) and reused by every candidate and request.
* ``score(features, signature, reference, params)``: one float per clip.

Formulas (x: a decoded clip as float in [0, 1]; w: the signature in [-1, 1], repeated over T when
T = 1; ncc(a, b) = <a - mean a, b - mean b> / (||a - mean a|| ||b - mean b||), 0 when a norm is 0;
box_k: the k x k spatial mean filter per frame and channel, reflecting at the borders):

* ``blind``   s = ncc(x - box_k(x), w - box_k(w)). No access to the clean clip: the noise residual of
  the clip against the signature's own residual. Parameter ``kernel`` = k, odd, 3..15, default 3.
* ``informed`` s = ncc(x - x_clean, w), where x_clean is the decoded clean clip (same carrier, same
  codec settings). On a clean clip x - x_clean = 0, so its clean score is 0 by construction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Mapping

import numpy as np
from scipy.ndimage import uniform_filter

from codecloop.errors import CodecLoopValueError


class Scorer(ABC):
    """Base class; subclasses fill the ``_internal_*`` hooks, validation happens here once."""

    name: ClassVar[str]
    description: ClassVar[str]
    # name -> (default, low, high); values must be finite and in [low, high]
    param_ranges: ClassVar[Mapping[str, tuple[float, float, float]]] = {}
    uses_reference: ClassVar[bool] = False

    def resolve_params(self, params: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
        """Validate ``params`` against ``param_ranges``; return every parameter, defaults filled, sorted."""
        for key, value in params.items():
            if key not in self.param_ranges:
                raise CodecLoopValueError(
                    f"scorer.params: unknown parameter {key!r} for scorer {self.name!r}; "
                    f"allowed: {sorted(self.param_ranges) or 'none'}"
                )
            _, low, high = self.param_ranges[key]
            if not (np.isfinite(value) and low <= value <= high):
                raise CodecLoopValueError(f"scorer.params[{key!r}]: {value} is outside the allowed range [{low:g}, {high:g}]")
        resolved = {k: float(params.get(k, d)) for k, (d, _, _) in self.param_ranges.items()}
        self._internal_check(resolved)
        return tuple(sorted(resolved.items()))

    def features(self, clips: np.ndarray, params: tuple[tuple[str, float], ...]) -> np.ndarray:
        """uint8 (N, T, H, W, 3) decoded clips -> float32 (N, T, H, W, 3) signature-free features."""
        return self._internal_features(clips.astype(np.float32) * np.float32(1 / 255), dict(params))

    def score(
        self,
        features: np.ndarray,
        signature: np.ndarray,
        reference: np.ndarray | None,
        params: tuple[tuple[str, float], ...],
    ) -> np.ndarray:
        """Scores (N,) float64 of N clips' features against one (T or 1, H, W, 3) signature."""
        return self._internal_score(features, signature, reference, dict(params))

    def _internal_check(self, params: dict[str, float]) -> None:
        """Extra validation beyond the ranges (e.g. an odd kernel)."""

    @abstractmethod
    def _internal_features(self, clips: np.ndarray, params: dict[str, float]) -> np.ndarray: ...

    @abstractmethod
    def _internal_score(
        self, features: np.ndarray, signature: np.ndarray, reference: np.ndarray | None, params: dict[str, float]
    ) -> np.ndarray: ...


def ncc(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Normalized correlation of each clip a[i] (a: (N, T, H, W, 3)) with w ((T or 1, H, W, 3)).

    Sums run in float64 with numpy's pairwise summation, not BLAS: BLAS kernels differ between CPUs,
    and a score must be the same on every machine. Because w - mean(w) sums to zero, the numerator
    needs no centring of a; for a T = 1 signature a is summed over time first (T times less work).
    """
    wc = w.astype(np.float64)
    count = a[0].size
    w_mean = wc.mean()
    wc -= w_mean
    # ||w broadcast over T - its mean||^2: the broadcast repeats wc T/Tw times
    w_norm = np.sqrt((wc * wc).sum() * (a.shape[1] // w.shape[0]))
    out = np.zeros(len(a))
    for i, clip in enumerate(a):
        if w.shape[0] == 1:
            num = (clip.sum(axis=0, dtype=np.float64) * wc[0]).sum()
        else:
            num = (clip * wc).sum()
        total = clip.sum(dtype=np.float64)
        sq = np.square(clip, dtype=np.float64).sum()
        var = sq - total * total / count
        # a constant clip leaves only rounding in var: treat it as zero like an exactly flat one
        den = np.sqrt(var) * w_norm if var > 1e-12 * sq else 0.0
        out[i] = num / den if den > 0 else 0.0
    return out


def _residual(x: np.ndarray, k: int) -> np.ndarray:
    """x - box_k(x) over the H, W axes of (..., H, W, C)."""
    size = (1,) * (x.ndim - 3) + (k, k, 1)
    return x - uniform_filter(x, size=size, mode="reflect")


class BlindScorer(Scorer):
    name = "blind"
    description = "ncc(x - box_k(x), w - box_k(w)): noise residual vs the signature's, no clean clip"
    param_ranges = {"kernel": (3.0, 3.0, 15.0)}

    def _internal_check(self, params: dict[str, float]) -> None:
        k = params["kernel"]
        if k != int(k) or int(k) % 2 == 0:
            raise CodecLoopValueError(f"scorer.params['kernel']: {k} must be an odd integer in [3, 15]")

    def _internal_features(self, clips: np.ndarray, params: dict[str, float]) -> np.ndarray:
        return _residual(clips, int(params["kernel"]))

    def _internal_score(self, features, signature, reference, params):
        return ncc(features, _residual(signature.astype(np.float32), int(params["kernel"])))


class InformedScorer(Scorer):
    name = "informed"
    description = "ncc(x - x_clean, w): difference to the decoded clean clip vs the signature"
    uses_reference = True

    def _internal_features(self, clips: np.ndarray, params: dict[str, float]) -> np.ndarray:
        return clips

    def _internal_score(self, features, signature, reference, params):
        assert reference is not None, "informed scorer needs the decoded clean clips"
        return ncc(features - reference, signature)


SCORERS: dict[str, Scorer] = {}


def register(scorer: Scorer) -> Scorer:
    """Add a scorer to the registry; a name that is already taken is refused."""
    if scorer.name in SCORERS:
        raise ValueError(f"a scorer named {scorer.name!r} is already registered")
    SCORERS[scorer.name] = scorer
    return scorer


def get(name: str) -> Scorer:
    """The registered scorer called ``name``, or a CodecLoopValueError naming the choices."""
    try:
        return SCORERS[name]
    except KeyError:
        raise CodecLoopValueError(f"scorer.name: unknown scorer {name!r}; allowed: {sorted(SCORERS)}") from None


register(BlindScorer())
register(InformedScorer())
