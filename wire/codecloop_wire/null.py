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


def shift_null(features: np.ndarray, template: np.ndarray) -> NullScore:
    """z and p of a clip's correlation with ``template`` against its lattice shifts.

    ``features``: the clip's integer features (T, H, W, C), or their sum over time (H, W, C) when the
    template is constant in time (T = 1: only spatial shifts). ``template``: float (T or 1, H, W, C)
    with zero mean, the same H, W, C (and T when it varies in time) as the features.
    """
    if template.shape[0] == 1:
        x = features if features.ndim == 3 else features.sum(axis=0, dtype=np.int64)
        w = template[0]
        if x.shape != w.shape:
            raise ValueError(f"features {x.shape} and template {w.shape} differ in shape")
    else:
        if features.shape != template.shape:
            raise ValueError(f"features {features.shape} and template {template.shape} differ in shape")
        x, w = features, template
    axes = tuple(range(x.ndim - 1))  # every axis but the channels
    shape = tuple(x.shape[a] for a in axes)
    # workers=1: the codec workers are one process per core already
    xf = scipy.fft.rfftn(x.astype(np.float64), axes=axes, workers=1)
    wf = scipy.fft.rfftn(w.astype(np.float64), axes=axes, workers=1)
    corr = scipy.fft.irfftn((xf * np.conj(wf)).sum(axis=-1), s=shape, workers=1)  # C(δ) at every shift
    auto = scipy.fft.irfftn((wf * np.conj(wf)).real.sum(axis=-1), s=shape, workers=1)  # the key's own A(δ)
    grid = (..., slice(None, None, _step(shape[-2])), slice(None, None, _step(shape[-1])))
    lattice, rho = corr[grid], auto[grid] / max(float(auto.flat[0]), 1e-300)
    # a shift that nearly reproduces the key (a key constant in time, a periodic one) is not an
    # unrelated key: on a marked clip it would carry the mark into the null
    unrelated = np.abs(rho) < MAX_KEY_CORRELATION
    if unrelated.sum() >= MIN_NULL_SHIFTS:
        lattice = lattice[unrelated]
    c0, mean, sd = float(corr.flat[0]), float(lattice.mean()), float(lattice.std())
    if not sd > 1e-9 * max(abs(mean), float(np.abs(lattice).max()), 1e-300):
        # no variation over shifts (e.g. all-zero features): the score carries no evidence (z = -inf,
        # p = 1), unless it stands above a constant null
        return NullScore(-math.inf, 1.0) if c0 <= mean else NullScore(math.inf, 0.0)
    z = (c0 - mean) / sd
    return NullScore(z, p_of_z(z))


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
    wf = scipy.fft.rfftn(key.astype(np.float64), axes=(0, 1, 2), workers=1)
    auto = scipy.fft.irfftn((wf * np.conj(wf)).real.sum(axis=-1), s=(t, h, w), workers=1)
    zero = max(float(auto.flat[0]), 1e-300)
    sh, sw = _step(h), _step(w)
    lattice = [(a, b, c) for a in range(t) for b in range(0, h, sh) for c in range(0, w, sw)]
    usable = [s for s in lattice[1:] if abs(auto[s] / zero) < MAX_KEY_CORRELATION]
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
