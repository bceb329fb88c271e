"""The null model of the correlation scorers: a clip's score against keys it does not carry.

A correlation score is s = <x, w> / (||x - mean x|| ||w||) for a clip's integer features x (T, H, W, C)
and a zero-mean template w (T or 1, H, W, C) (scorers.py). The null distribution is the clip's
numerator against the same key moved to every shift δ of a lattice: every frame offset (when the
key varies in time) and every multiple of :data:`GRID` pixels in height and width, circularly,
C(δ) = <x, roll(w, δ)>. A clip that does not carry the key could have met it at any such offset;
the key's alignment to the codec's 16-pixel macroblock grid is kept, because a key aligned to the
grid correlates with the codec's blocking more than one shifted by a few pixels would (measured on
real clips: shifts of 1 pixel give a null sd 10-35 % too small for block keys; grid-aligned shifts
give calibrated p-values, tests/test_statistics.py).

Shifts at which the moved key still correlates with the key itself (|ρ| >= 0.25: every frame
offset of a key that is constant in time, the periods of a tiled key) are left out: they are the
key, not another one. The score's z = (C(0) - mean) / sd over the remaining lattice and p = Φ̄(z),
the normal tail: C(0) is a sum of very many weakly dependent products. For a clip that does carry
the key, what is left of the key's autocorrelation on the lattice raises the sd a little, which
makes its p-value conservative.
All of it is a few FFTs of the clip (no extra encode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import special, stats

GRID = 16  # pixels: the codec's macroblock size; spatial shifts of the null are multiples of it
MAX_KEY_CORRELATION = 0.25  # shifts whose key correlates with the key by this much or more are left out
MIN_NULL_SHIFTS = 8  # fewer unrelated shifts than this: every lattice shift is used (conservative)

NULL_MODEL = (
    f"per clip: the score against the key at every frame offset and every {GRID}-pixel grid shift (circular) "
    f"where the moved key correlates with the key by less than {MAX_KEY_CORRELATION}; "
    "z over their exact mean and sd, p = P(N(0,1) >= z); per video: Stouffer's z of its clips"
)


@dataclass(frozen=True)
class NullScore:
    """One clip's score in units of its null: ``z`` and the one-sided p-value ``p`` = Φ̄(z)."""

    z: float
    p: float


def p_of_z(z: float) -> float:
    """The one-sided normal tail Φ̄(z); 1 for z = -inf, 0 for z = +inf."""
    return float(special.ndtr(-z))


def p_values(z: np.ndarray) -> np.ndarray:
    """:func:`p_of_z` of every element of ``z`` (float64, same shape)."""
    out: np.ndarray = special.ndtr(-np.asarray(z, np.float64))
    return out


def z_of_p(p: float) -> float:
    """The inverse of :func:`p_of_z`: the z whose tail is ``p`` (p in (0, 1))."""
    return float(-special.ndtri(p))


def _step(n: int) -> int:
    # an axis that is not a multiple of the grid keeps the largest step that divides it
    return math.gcd(GRID, n)


@dataclass(frozen=True)
class KeySpectrum:
    """What the null needs of one key, computed once per candidate (:func:`key_spectrum`) and shared
    by every clip: its conjugate spectrum and which lattice shifts are unrelated to it."""

    shape: tuple[int, ...]  # the transformed axes: (H, W) for a key constant in time, else (T, H, W)
    conj: np.ndarray  # complex64 (C, *shape[:-1], W // 2 + 1): conj(rfftn(template channel c))
    keep: np.ndarray  # bool, the lattice's shape: shifts used by the null


def _channels_first(a: np.ndarray) -> np.ndarray:
    # (..., C) -> (C, ...) float32, contiguous: the FFT runs over contiguous axes, in single
    # precision (a z-score needs ~1e-4 relative accuracy; float32's is ~1e-6 here, at a third of the time)
    return np.ascontiguousarray(np.moveaxis(a, -1, 0), dtype=np.float32)


def _lattice(spectrum: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The real correlation whose rfftn is ``spectrum`` (over ``shape``), at the lattice shifts only:
    every frame offset, every :func:`_step` row and column. Aliasing the spectrum onto the lattice
    (sum of the frequencies that coincide there) costs a transform of the small lattice, not of the clip."""
    h, w = shape[-2], shape[-1]
    sh, sw = _step(h), _step(w)
    folded = spectrum.reshape(*spectrum.shape[:-2], sh, h // sh, spectrum.shape[-1]).sum(axis=-3) / sh
    corr = scipy.fft.irfftn(folded, s=(*shape[:-2], h // sh, w), axes=tuple(range(-len(shape), 0)), workers=1)
    out: np.ndarray = corr[..., ::sw]
    return out


def key_spectrum(template: np.ndarray) -> KeySpectrum:
    """The :class:`KeySpectrum` of a zero-mean template (T or 1, H, W, C)."""
    w = template[0] if template.shape[0] == 1 else template
    shape = w.shape[:-1]
    axes = tuple(range(1, w.ndim))
    # workers=1: the codec workers are one process per core already
    wf = scipy.fft.rfftn(_channels_first(w), axes=axes, workers=1)
    auto = _lattice((wf * np.conj(wf)).real.sum(axis=0), shape)  # the key's own correlation A(δ)
    rho = auto / max(float(auto.flat[0]), 1e-300)
    # a shift that nearly reproduces the key (a key constant in time, a periodic one) is not an
    # unrelated key: on a marked clip it would carry the mark into the null
    keep = np.abs(rho) < MAX_KEY_CORRELATION
    if keep.sum() < MIN_NULL_SHIFTS:
        keep = np.ones_like(keep)
    return KeySpectrum(shape=shape, conj=np.conj(wf), keep=keep)


def shift_null(features: np.ndarray, key: np.ndarray | KeySpectrum) -> NullScore:
    """z and p of a clip's correlation with a key against its lattice shifts.

    ``features``: the clip's integer features (T, H, W, C), or their sum over time (H, W, C) when the
    key is constant in time (T = 1: only spatial shifts). ``key``: a float template (T or 1, H, W, C)
    with zero mean, the same H, W, C (and T when it varies in time) as the features, or its
    :func:`key_spectrum` (computed once, for many clips).
    """
    spec = key if isinstance(key, KeySpectrum) else key_spectrum(key)
    lattice = _correlations(features, spec)  # C(δ) on the lattice; C(0) first
    return _z_against(float(lattice.flat[0]), lattice[spec.keep])


def _correlations(features: np.ndarray, spec: KeySpectrum) -> np.ndarray:
    """The features' correlation with the key at every lattice shift (frames, rows, columns)."""
    x = features
    if len(spec.shape) == 2 and features.ndim == 4:
        x = features.sum(axis=0, dtype=np.int64)
    if x.shape[:-1] != spec.shape or x.shape[-1] != spec.conj.shape[0]:
        raise ValueError(f"features {features.shape} do not match the key's {spec.shape} x {spec.conj.shape[0]} channels")
    xf = scipy.fft.rfftn(_channels_first(x), axes=tuple(range(1, x.ndim)), workers=1)
    return _lattice((xf * spec.conj).sum(axis=0), spec.shape)


def _z_against(c: float, null: np.ndarray) -> NullScore:
    """The correlation ``c`` in units of the ``null`` correlations' mean and sd."""
    mean, sd = float(null.mean()), float(null.std())
    if not sd > 1e-6 * max(abs(mean), float(np.abs(null).max()), 1e-300):
        # no variation over shifts (e.g. all-zero features): the score carries no evidence (z = -inf,
        # p = 1), unless it stands above a constant null
        return NullScore(-math.inf, 1.0) if c <= mean else NullScore(math.inf, 0.0)
    z = (c - mean) / sd
    return NullScore(z, p_of_z(z))


@dataclass(frozen=True)
class OffsetScore:
    """The best of several frame offsets: ``offset`` (frames: the video's frame i carried the
    signature's frame i - offset), its ``best_z``, and ``z`` / ``p`` corrected for the
    ``offsets`` tried (Šidák: p = 1 - (1 - p_best)^offsets, z = Φ̄⁻¹(p))."""

    z: float
    p: float
    offset: int
    best_z: float
    offsets: int


def offset_null(features: np.ndarray, key: np.ndarray, search: int) -> OffsetScore:
    """:func:`shift_null` at each frame offset -search .. search of a key that varies in time, the
    best one kept and its p corrected for the 2 search + 1 tried.

    A platform that re-times a video (a frame-rate change, dropped or repeated frames, a shifted
    start) moves the signature's frames against their timestamps by a frame or two; the folded
    features then correlate with the key at that offset, not at 0. The offsets tried are left out of
    the null (a mark split over two of them stays out of it). ``features`` (T, H, W, C), ``key``
    (T, H, W, C) zero-mean, 2 search + 1 <= T; search 0 is :func:`shift_null` exactly.
    """
    t = key.shape[0]
    if key.ndim != 4 or t == 1:
        raise ValueError("offset_null: the key must vary in time (T > 1): a static key has no frame offsets")
    if not 0 <= search <= (t - 1) // 2:
        raise ValueError(f"offset_null: search {search} is outside [0, {(t - 1) // 2}] for a key of {t} frames")
    spec = key_spectrum(key)
    lattice = _correlations(features, spec)
    offsets = list(range(-search, search + 1))
    tried = np.zeros_like(spec.keep)
    for d in offsets:
        tried[d % t, 0, 0] = True
    null = lattice[spec.keep & ~tried]
    scores = [_z_against(float(lattice[d % t, 0, 0]), null) for d in offsets]
    best = max(range(len(offsets)), key=lambda i: (scores[i].z, -abs(offsets[i])))
    n, p_best = len(offsets), scores[best].p
    if n == 1:
        return OffsetScore(z=scores[0].z, p=p_best, offset=0, best_z=scores[0].z, offsets=1)
    p = float(-np.expm1(n * np.log1p(-p_best))) if p_best < 1 else 1.0  # Šidák, stable for tiny p
    z = z_of_p(p) if 0 < p < 1 else scores[best].z
    return OffsetScore(z=z, p=p, offset=offsets[best], best_z=scores[best].z, offsets=n)


EMPIRICAL_SHIFTS = 16  # keys a detector scores per clip for its empirical null

EMPIRICAL_NULL_MODEL = (
    f"per clip: the detector's score against the key at {EMPIRICAL_SHIFTS} other frame offsets / {GRID}-pixel grid shifts "
    "(circular; shifts the key correlates with by >= 0.25 left out); p from Student's t of the score over their mean and sd "
    f"({EMPIRICAL_SHIFTS - 1} degrees of freedom, a prediction interval), reported as z = Φ̄⁻¹(p); per video: Stouffer's z"
)


def key_shifts(key: np.ndarray, count: int = EMPIRICAL_SHIFTS) -> list[tuple[int, int, int]]:
    """``count`` lattice shifts (frames, rows, columns) of a (T, H, W, 3) key for an empirical null:
    frame offsets and multiples of :data:`GRID` pixels, spread evenly over the lattice in a fixed
    order, leaving out the origin and shifts where the moved key correlates with the key by
    :data:`MAX_KEY_CORRELATION` or more. Fewer than ``count`` unrelated shifts: ValueError."""
    t, h, w = key.shape[:3]
    spec = key_spectrum(key - key.mean())
    keep = spec.keep.reshape(t, h // _step(h), w // _step(w))
    lattice = [(a, b * _step(h), c * _step(w)) for a in range(t) for b in range(keep.shape[1]) for c in range(keep.shape[2])]
    usable = [s for s, k in zip(lattice[1:], keep.reshape(-1)[1:]) if k]
    if len(usable) < count:
        raise ValueError(f"the key has {len(usable)} unrelated lattice shifts; the empirical null needs {count}")
    picks = np.linspace(0, len(usable) - 1, count).round().astype(int)
    return [usable[i] for i in picks]


def empirical_z(score: float, null_scores: np.ndarray) -> float:
    """z = Φ̄⁻¹(p) of ``score`` against K null scores: p = P(t_{K-1} >= (score - mean) / (sd sqrt(1 + 1/K))),
    the prediction-interval tail for one more draw of a normal sample of K with unknown mean and sd."""
    k = len(null_scores)
    mean, sd = float(np.mean(null_scores)), float(np.std(null_scores, ddof=1))
    if not sd > 0:
        return -math.inf if score <= mean else math.inf
    p = float(stats.t.sf((score - mean) / (sd * math.sqrt(1 + 1 / k)), k - 1))
    return -math.inf if p >= 1 else (math.inf if p <= 0 else z_of_p(p))


def stouffer(z: np.ndarray) -> float:
    """Stouffer's combination of k independent clip z-scores into one: sum(z) / sqrt(k)."""
    z = np.asarray(z, dtype=np.float64)
    if z.size == 0:
        raise ValueError("stouffer: no z-scores to combine")
    return float(z.sum() / math.sqrt(z.size))
