"""Detectors that score decoded clips against a signature, and their registry.

A scorer works in three steps so that the server can cache the clean side and share work:

* ``features(clips, params)``: a per-clip, signature-independent transform of decoded uint8 clips
  (N, T, H, W, 3) into an integer array of the same shape. Clean features are computed once per
  (carrier clip, codec settings, scorer, params) and reused by every candidate, request and client.
* ``template(signature, params)``: the float64 (T or 1, H, W, 3) pattern the features are
  correlated with, computed once per candidate.
* ``score(features, template, reference)``: one float per clip, each :meth:`Scorer.score_clip`.
  The codec workers (tasks.py) score through the same ``score_clip``, and take the clean side from
  the server's cached clean stats (``score_clean``): a scorer that fills the hooks below scores the
  same in production as through ``score``.

Formulas (x: a decoded clip, uint8; w: the signature in [-1, 1], repeated over T when T = 1;
ncc(a, b) = <a - mean a, b - mean b> / (||a - mean a|| ||b - mean b||) over the whole
(T, H, W, 3) clip, 0 when a norm is 0; box_k: the k x k spatial mean filter per frame and channel,
borders mirrored with the edge pixel repeated, scipy's ``mode="reflect"``):

* ``blind``    s = ncc(x - box_k(x), w - box_k(w)). No access to the clean clip: the noise residual
  of the clip against the signature's own residual. Parameter ``kernel`` = k, odd, 3..15, default 3.
* ``informed`` s = ncc(x - x_clean, w), where x_clean is the decoded clean clip (same carrier, same
  codec settings). On a clean clip x - x_clean = 0, so its clean score is 0 by construction.

The clip side is integer arithmetic (k^2 x - boxsum_k(x) is exact), its sums are exact, and the
correlation with the template is a float64 numpy sum (not BLAS, whose kernels vary by CPU), so a
score is the same on every machine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy.ndimage import uniform_filter

from codecloop_server.registry import Registry, shown
from codecloop_wire.errors import CodecLoopValueError

Params = tuple[tuple[str, float], ...]


class Registered:
    """What the registry, request parsing and GetServerInfo know of any scorer: a name, a
    description and validated parameters. :class:`Scorer` (features and templates, run in the codec
    workers) and detector.DetectorScorer (a model, run in the server) are the two kinds; the engine
    drives each through its own strategy (scoring.py)."""

    name: str
    description: str
    # name -> (default, low, high); values must be finite and in [low, high]
    param_ranges: Mapping[str, tuple[float, float, float]] = {}

    def resolve_params(self, params: Mapping[str, float]) -> Params:
        """Validate ``params`` against ``param_ranges``; return every parameter, defaults filled, sorted."""
        for key, value in params.items():
            if key not in self.param_ranges:
                raise CodecLoopValueError(
                    f"scorer.params: unknown parameter {shown(key)} for scorer {self.name!r}; "
                    f"allowed: {sorted(self.param_ranges) or 'none'}"
                )
            _, low, high = self.param_ranges[key]
            if not (np.isfinite(value) and low <= value <= high):
                raise CodecLoopValueError(f"scorer.params[{key!r}]: {value} is outside the allowed range [{low:g}, {high:g}]")
        resolved = {k: float(params.get(k, d)) for k, (d, _, _) in self.param_ranges.items()}
        self._internal_check(resolved)
        return tuple(sorted(resolved.items()))

    def _internal_check(self, params: dict[str, float]) -> None:
        """Extra validation beyond the ranges (e.g. an odd kernel); none by default."""


class Scorer(Registered, ABC):
    """A scorer run in the codec workers; subclasses fill the ``_internal_*`` hooks (and set
    ``uses_reference`` to be scored against the clean clip), validation happens here once."""

    uses_reference: ClassVar[bool] = False

    def features(self, clips: np.ndarray, params: Params) -> np.ndarray:
        """uint8 (N, T, H, W, 3) decoded clips -> integer (N, T, H, W, 3) signature-free features."""
        return self._internal_features(clips, dict(params))

    def template(self, signature: np.ndarray, params: Params) -> np.ndarray:
        """float32 (T or 1, H, W, 3) signature -> float64 zero-mean template of the same shape."""
        t = self._internal_template(signature.astype(np.float64), dict(params))
        return t - t.mean()

    def score(self, features: np.ndarray, template: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
        """Scores (N,) float64 of N clips' features (N, T, H, W, 3) against a template from
        :meth:`template`, with the clean clips' features (N, T, H, W, 3) as reference: one
        :meth:`score_clip` each, the path the codec workers run."""
        t_sq = template_sq(template)
        refs = [None] * len(features) if reference is None else list(reference)
        return np.array([self.score_clip(f, template, r, t_sq).score for f, r in zip(features, refs)])

    def signal(self, features: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
        """The integer clip (T, H, W, 3) one clip's features are scored by: the features, or for a
        scorer that ``uses_reference`` their int16 difference to the clean clip's features."""
        if not self.uses_reference:
            return features
        assert reference is not None, f"scorer {self.name} needs the clean clips' features"
        return features.astype(np.int16) - reference.astype(np.int16)

    def score_clip(self, features: np.ndarray, template: np.ndarray, reference: np.ndarray | None, t_sq: float | None = None) -> ClipScore:
        """One clip's features (T, H, W, 3) against ``template``, the clean clip's features as
        ``reference`` (read only when ``uses_reference``); ``t_sq``: :func:`template_sq`, if known."""
        signal = self.signal(features, reference)
        stats = clip_stats(signal)
        return ClipScore(ncc_from_stats(stats, template, signal, t_sq), stats, signal)

    def score_clean(self, stats: ClipStats, template: np.ndarray, features: np.ndarray | None, t_sq: float | None = None) -> ClipScore | None:
        """The clean clip's :meth:`score_clip` from its cached feature stats (the server computes
        them once per clean clip); ``features`` (T, H, W, 3) are needed only for a template with
        T > 1. None for a scorer that ``uses_reference``: the clean clip's difference to itself is
        0, score 0, no evidence at all."""
        if self.uses_reference:
            return None
        return ClipScore(ncc_from_stats(stats, template, features, t_sq), stats, features)

    @abstractmethod
    def _internal_features(self, clips: np.ndarray, params: dict[str, float]) -> np.ndarray: ...

    @abstractmethod
    def _internal_template(self, signature: np.ndarray, params: dict[str, float]) -> np.ndarray: ...


@dataclass(frozen=True)
class ClipStats:
    """What ncc needs of one integer clip (T, H, W, 3), all exact: its sum over time, total, sum of squares."""

    time_sum: np.ndarray  # int64 (H, W, 3)
    total: int
    squares: int
    count: int  # T * H * W * 3


@dataclass(frozen=True)
class ClipScore:
    """One clip's score and the integer clip it correlated with the template (:meth:`Scorer.signal`),
    with its stats: what a null model of the score (null.shift_null) reads again."""

    score: float
    stats: ClipStats
    signal: np.ndarray | None  # None only where the stats stand for it (a clean clip, T = 1 template)

    def correlated(self, template: np.ndarray) -> np.ndarray:
        """What the template (T or 1, H, W, 3) is correlated with: the signal, or its time sum (H, W, 3) when T = 1."""
        if template.shape[0] == 1:
            return self.stats.time_sum
        assert self.signal is not None, "a time-varying template needs the whole clip"
        return self.signal


_SMALL_INTS = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16))


def clip_stats(clip: np.ndarray) -> ClipStats:
    """The exact :class:`ClipStats` of an integer clip (T, H, W, 3)."""
    if clip.dtype in _SMALL_INTS and len(clip) < 1 << 16:
        # |x| <= 2^15, so x^2 <= 2^30 and a sum of fewer than 2^16 frames stay below 2^31: int32
        # is exact here and about twice as fast as int64 (0.44 -> 0.20 ms for the time sum,
        # 0.68 -> 0.52 ms for the squares of a 112x112x16 int16 clip); totals in int64
        time_sum = clip.sum(axis=0, dtype=np.int32).astype(np.int64)
        squares = int(np.square(clip, dtype=np.int32).sum(dtype=np.int64))
    else:
        time_sum = clip.sum(axis=0, dtype=np.int64)
        flat = clip.reshape(-1)
        # exact integer sum of squares; einsum, not `flat @ flat`: BLAS would start threads per worker
        squares = int(np.einsum("i,i->", flat, flat, dtype=np.int64))
    return ClipStats(time_sum, int(time_sum.sum()), squares, clip.size)


def template_sq(template: np.ndarray) -> float:
    """Sum of squares of a template: computed once per candidate, shared by all its clips."""
    return float((template * template).sum())


def ncc_from_stats(
    stats: ClipStats, template: np.ndarray, clip: np.ndarray | None = None, t_sq: float | None = None
) -> float:
    """ncc of a clip with a zero-mean template (T or 1, H, W, 3); ``clip`` is needed only when T > 1;
    ``t_sq`` is :func:`template_sq` of the template, if already known.

    The template sums to zero, so <a - mean a, template> = <a, template>: no centring of a. For a
    T = 1 template the numerator is <sum over time of a, template>: T times less float work.
    """
    reps = stats.count // template.size
    t_norm = np.sqrt((template_sq(template) if t_sq is None else t_sq) * reps)
    if template.shape[0] == 1:
        num = (stats.time_sum * template[0]).sum()
    else:
        assert clip is not None, "a time-varying template needs the whole clip"
        num = (clip * template).sum()
    var = stats.squares - stats.total * stats.total / stats.count
    den = np.sqrt(var) * t_norm if var > 1e-9 else 0.0
    return float(num / den) if den > 0 else 0.0


def ncc(a: np.ndarray, template: np.ndarray) -> np.ndarray:
    """ncc of each integer clip a[i] (a: (N, T, H, W, 3)) with a zero-mean template (T or 1, H, W, 3)."""
    return np.array([ncc_from_stats(clip_stats(clip), template, clip) for clip in a])


def box_residual(x: np.ndarray, k: int) -> np.ndarray:
    """k^2 x - boxsum_k(x) over the H, W axes of uint8 (..., H, W, C), exactly, in int16 or int32."""
    dtype = np.int16 if k * k * 255 <= np.iinfo(np.int16).max else np.int32
    p = k // 2
    pad = [(0, 0)] * (x.ndim - 3) + [(p, p), (p, p), (0, 0)]
    xp = np.pad(x.astype(dtype), pad, mode="symmetric")
    h, w = x.shape[-3], x.shape[-2]
    rows = sum(xp[..., i : i + h, :, :] for i in range(k))
    box = sum(rows[..., j : j + w, :] for j in range(k))
    centre = xp[..., p : p + h, p : p + w, :]
    return (k * k) * centre - box


class BlindScorer(Scorer):
    name = "blind"
    description = "ncc(x - box_k(x), w - box_k(w)): noise residual vs the signature's, no clean clip"
    param_ranges: ClassVar[Mapping[str, tuple[float, float, float]]] = {"kernel": (3.0, 3.0, 15.0)}

    def _internal_check(self, params: dict[str, float]) -> None:
        k = params["kernel"]
        if k != int(k) or int(k) % 2 == 0:
            raise CodecLoopValueError(f"scorer.params['kernel']: {k} must be an odd integer in [3, 15]")

    def _internal_features(self, clips: np.ndarray, params: dict[str, float]) -> np.ndarray:
        return box_residual(clips, int(params["kernel"]))

    def _internal_template(self, signature: np.ndarray, params: dict[str, float]) -> np.ndarray:
        k = int(params["kernel"])
        return signature - uniform_filter(signature, size=(1, k, k, 1), mode="reflect")


class InformedScorer(Scorer):
    name = "informed"
    description = "ncc(x - x_clean, w): difference to the decoded clean clip vs the signature"
    uses_reference = True

    def _internal_features(self, clips: np.ndarray, params: dict[str, float]) -> np.ndarray:
        return clips

    def _internal_template(self, signature: np.ndarray, params: dict[str, float]) -> np.ndarray:
        return signature


class ScorerRegistry:
    """The scorers one server offers, by name: the built-in worker scorers and the server's own
    detectors. Each server (its engine) holds its own, so that two servers in one process never see
    each other's detectors; a name that is already taken is refused (registry.NameTaken)."""

    def __init__(self, items: Iterable[Registered] = ()) -> None:
        self._items: Registry[Registered] = Registry("scorer")
        for item in items:
            self.register(item)

    @classmethod
    def builtins(cls) -> ScorerRegistry:
        """A new registry of the built-in worker scorers only."""
        return cls(BUILTINS.values())

    def register(self, scorer: Registered) -> Registered:
        """Add ``scorer``; NameTaken when its name is already registered here."""
        return self._items.add(scorer.name, scorer)

    def get(self, name: str) -> Registered:
        """The scorer called ``name``, or a CodecLoopValueError naming the choices."""
        return self._items.lookup(name, "scorer.name")

    def values(self) -> list[Registered]:
        """Every scorer, in registration order (built-ins first)."""
        return list(self._items.values())

    def with_null(self) -> list[str]:
        """The names of the scorers that offer the null model (:func:`offers_null`)."""
        return [n for n, s in self._items.items() if offers_null(s)]


def offers_null(impl: Registered) -> bool:
    """Whether the null model (EvaluateRequest.null_model) is offered: the correlation scorers
    (shift null, null.py) and detectors that take the key (empirical null of moved keys)."""
    return isinstance(impl, Scorer) or bool(getattr(impl, "uses_key", False))


# the worker scorers every server offers, and the only ones a codec worker runs; fixed at import
BUILTINS: Registry[Scorer] = Registry("scorer")
for _builtin in (BlindScorer(), InformedScorer()):
    BUILTINS.add(_builtin.name, _builtin)


def get(name: str) -> Scorer:
    """The built-in scorer called ``name``, or a CodecLoopValueError naming the choices (a server's
    detectors are in its own :class:`ScorerRegistry`)."""
    return BUILTINS.lookup(name, "scorer.name")


def worker_scorer(name: str) -> Scorer:
    """The built-in worker scorer ``name`` (what a codec worker runs; detectors are scored in the server)."""
    if name not in BUILTINS:
        raise CodecLoopValueError(f"scorer.name: {name!r} is a detector, scored in the server, not in a codec worker")
    return BUILTINS[name]
