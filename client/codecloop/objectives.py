"""What an optimizer maximizes: one number per candidate from the per-clip scores of one request.

Every objective here is a pure function of the clean and poisoned detector scores the server
returned for one candidate under one codec setting (the N carrier clips of the request, paired);
a candidate's value is the **minimum over its codec settings** (the worst codec decides). Bigger is
better. The decision that is deployed is "score > a threshold calibrated so that at most a fraction
``target_fpr`` of clean clips pass", so:

| name | value (c: clean scores, p: poisoned scores, f: target_fpr) |
|---|---|
| ``separation`` | mean(p) - mean(c): the server's own fitness |
| ``centred-separation`` | separation - w * abs(mean(c)): also penalizes a signature whose clean scores sit off 0, i.e. one correlated with the carriers' content (that correlation does not carry over to other footage) |
| ``dprime`` | separation / sqrt((var(c) + var(p)) / 2) |
| ``tpr`` | TPR at FPR <= f (threshold calibrated on c as in :mod:`codecloop.stats`): what is deployed, a step function |
| ``auc`` | P(p > c) + P(tie) / 2 |
| ``margin`` | quantile(p, q) - quantile(c, 1 - f): a smooth stand-in for the TPR at FPR f (>= 0 means a fraction >= 1 - q of poisoned clips clear the clean (1 - f) quantile) |
| ``centred-margin`` | margin - w * abs(mean(c)) |
| ``null-tpr`` | mean over poisoned clips of Φ((z_i - z_a) / τ) minus the same over clean clips: a smooth stand-in for TPR minus FPR at p < a under the null model (docs/statistics.md), z_i a clip's score in units of its null, z_a = Φ̄⁻¹(a), a = ``null_fpr`` (default 1e-3), τ = 1; the clean term keeps a signature from matching the training content; asks the server for the null model on every evaluation |

Quantiles interpolate linearly between order statistics (numpy's default), so ``margin`` moves
continuously with every score. The default is ``centred-separation``: on 32 to 72 clips the
tail statistics (``tpr``, ``margin``, ``auc``) of a candidate predicted its held-out TPR no better
than its mean scores did (docs/optimize.md, ``benchmarks/objectives_bench.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from codecloop.results import CandidateResult, CodecStats, EvaluateResult
from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.null import z_of_p
from codecloop_wire.stats import calibrate_threshold

NAMES = ("separation", "centred-separation", "dprime", "tpr", "auc", "margin", "centred-margin", "null-tpr")
# objectives computed from the mean scores alone: the only ones a race (which ranks by means) can order by
FROM_MEANS = ("separation", "centred-separation")
# objectives that count clips (or clip pairs): on few clips a whole population often ties
COUNTS = ("tpr", "auc")


@dataclass(frozen=True)
class Objective:
    """An objective by name, with its parameters.

    Attributes:
        name: one of :data:`NAMES`.
        target_fpr: the false-positive rate the detector is deployed at, in [0, 1).
        poisoned_quantile: q of ``margin``: the low quantile of poisoned scores, in (0, 1).
        centre_weight: w of the ``centred-*`` objectives (score units per score unit), >= 0.
    """

    name: str = "centred-separation"
    target_fpr: float = defaults.TARGET_FPR
    poisoned_quantile: float = 0.1
    centre_weight: float = 1.0
    null_fpr: float = 1e-3  # a of ``null-tpr``
    null_temperature: float = 1.0  # τ of ``null-tpr``, z units

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise CodecLoopValueError(f"objective: {self.name!r} is not one of {list(NAMES)}")
        if not 0 <= self.target_fpr < 1:
            raise CodecLoopValueError(f"target_fpr: {self.target_fpr} is outside the allowed range [0, 1)")
        if not 0 < self.poisoned_quantile < 1:
            raise CodecLoopValueError(f"poisoned_quantile: {self.poisoned_quantile} is outside the allowed range (0, 1)")
        if not (self.centre_weight >= 0 and math.isfinite(self.centre_weight)):
            raise CodecLoopValueError(f"centre_weight: {self.centre_weight} must be finite and >= 0")
        if not 1e-12 <= self.null_fpr <= 0.5:
            raise CodecLoopValueError(f"null_fpr: {self.null_fpr} is outside the allowed range [1e-12, 0.5]")
        if not (self.null_temperature > 0 and math.isfinite(self.null_temperature)):
            raise CodecLoopValueError(f"null_temperature: {self.null_temperature} must be finite and > 0")

    @property
    def needs_null(self) -> bool:
        """Whether the request must ask for the null model (per-clip z-scores)."""
        return self.name == "null-tpr"

    @property
    def needs_per_clip(self) -> bool:
        """Whether the request must ask for per-clip scores (the two separations need only means)."""
        return self.name not in FROM_MEANS

    def scores(self, clean: np.ndarray, poisoned: np.ndarray) -> float:
        """The objective of (N,) clean and (N,) poisoned scores of the same clips."""
        clean, poisoned = np.asarray(clean, np.float64), np.asarray(poisoned, np.float64)
        if clean.shape != poisoned.shape or clean.ndim != 1 or len(clean) == 0:
            raise CodecLoopValueError(f"scores: clean {clean.shape} and poisoned {poisoned.shape} must be the same (N,), N >= 1")
        centring = self.centre_weight * abs(float(clean.mean()))
        if self.name == "separation":
            return float(poisoned.mean() - clean.mean())
        if self.name == "centred-separation":
            return float(poisoned.mean() - clean.mean()) - centring
        if self.name == "dprime":
            return float((poisoned.mean() - clean.mean()) / math.sqrt(0.5 * (clean.var() + poisoned.var()) + 1e-12))
        if self.name == "tpr":
            return float(np.mean(poisoned > calibrate_threshold(clean, self.target_fpr)))
        if self.name == "auc":
            # pairs (i, j) over all clips: P(p_i > c_j) + P(p_i == c_j) / 2
            diff = poisoned[:, None] - clean[None, :]
            return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))
        margin = float(np.quantile(poisoned, self.poisoned_quantile) - np.quantile(clean, 1 - self.target_fpr))
        return margin if self.name == "margin" else margin - centring

    def null_tpr(self, clean_z: np.ndarray, poisoned_z: np.ndarray) -> float:
        """``null-tpr`` of (N,) clean and (N,) poisoned clips' null z-scores: soft TPR - soft FPR."""
        clean, poisoned = np.asarray(clean_z, np.float64), np.asarray(poisoned_z, np.float64)
        if clean.shape != poisoned.shape or clean.ndim != 1 or len(clean) == 0:
            raise CodecLoopValueError(f"z: clean {clean.shape} and poisoned {poisoned.shape} must be the same (N,), N >= 1")
        z_a = z_of_p(self.null_fpr)
        soft = [float(np.mean(special.ndtr((z - z_a) / self.null_temperature))) for z in (poisoned, clean)]
        return soft[0] - soft[1]

    def codec(self, stats: CodecStats) -> float:
        """The objective of one candidate under one codec setting."""
        if self.name == "null-tpr":
            if stats.poisoned_z is None or stats.clean_z is None:
                raise CodecLoopValueError("objective 'null-tpr' needs the null model: evaluate with null_model=True, per_clip_scores=True")
            return self.null_tpr(stats.clean_z, stats.poisoned_z)
        if self.name in FROM_MEANS:  # the server's means are those of the per-clip scores, bit for bit
            return float(stats.separation) - (self.centre_weight * abs(stats.clean_mean) if self.name != "separation" else 0.0)
        if stats.clean_scores is None or stats.poisoned_scores is None:
            raise CodecLoopValueError(f"objective {self.name!r} needs per-clip scores: evaluate with per_clip_scores=True")
        return self.scores(stats.clean_scores, stats.poisoned_scores)

    def candidate(self, result: CandidateResult) -> float:
        """Worst codec setting decides."""
        return min(self.codec(s) for s in result.codecs)

    def __call__(self, result: EvaluateResult) -> np.ndarray:
        """(P,) float64, one value per candidate of ``result``, in order; bigger is better."""
        return np.array([self.candidate(c) for c in result.candidates], dtype=np.float64)
