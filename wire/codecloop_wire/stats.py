"""Detection statistics of one candidate under one codec setting.

Conventions: a clip is called "marked" when its score > threshold. ``clean`` and ``poisoned`` are
the scores of the same N carrier clips without and with the signature, so the test is paired.

Every rate comes with its counts and an exact 95 % interval: TPR and FPR Clopper-Pearson
(:func:`clopper_pearson`), AUC Newcombe's score interval (:func:`auc_interval`). With the null
model (null.py), each clip also has a p-value, and :func:`operating_points` gives TPR at fixed
false-positive rates, per clip and per source video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize
from scipy import stats as sps

from codecloop_wire.null import stouffer, z_of_p

P_VALUE_TEST = "one-sided Wilcoxon signed-rank, paired per clip, H1: poisoned > clean"
CONFIDENCE = 0.95
AUC_CI_METHOD = "Newcombe (2006) score interval, method 5 (Hanley-McNeil variance with N* = (m + n)/2 - 1)"
DEFAULT_FPRS = (1e-2, 1e-3, 1e-4, 1e-6)  # the null model's default operating points


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided binomial interval for k successes in n trials; (0, 1) when n = 0."""
    if n == 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"clopper_pearson: k = {k} is outside [0, n = {n}]")
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(sps.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(sps.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return (low, high)


def auc_interval(auc: float, m: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's (2006) score interval for an AUC from m positives and n negatives (method 5).

    The bounds are the θ where (auc - θ)² = z² V(θ), V the Hanley-McNeil variance with both sample
    sizes replaced by N* = (m + n)/2 - 1: unlike a Wald interval it stays inside [0, 1] and is not
    empty at AUC = 1.
    """
    if m == 0 or n == 0:
        return (0.0, 1.0)
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    ns = max((m + n) / 2 - 1, 1.0)

    def gap(theta: float) -> float:
        v = theta * (1 - theta) * (1 + (ns - 1) * ((1 - theta) / (2 - theta) + theta / (1 + theta))) / (ns * ns)
        return (auc - theta) ** 2 - z * z * v

    # gap < 0 inside the interval; at AUC 0 or 1 V vanishes there, so bracket just inside
    inner_low, inner_high = min(auc, 1 - 1e-12), max(auc, 1e-12)
    low = 0.0 if gap(0.0) <= 0 else float(optimize.brentq(gap, 0.0, inner_low))
    high = 1.0 if gap(1.0) <= 0 else float(optimize.brentq(gap, inner_high, 1.0))
    return (low, high)


@dataclass(frozen=True)
class OperatingPoint:
    """Decisions at one nominal false-positive rate ``fpr``: marked when p < fpr, i.e. z > ``threshold``.

    ``tpr`` = true_positives / n (poisoned units called marked), ``observed_fpr`` = false_positives / n
    (clean units called marked: the calibration check, ``fpr`` is what it should be), each with its
    95 % Clopper-Pearson interval. A unit is a clip, or a source video.
    """

    fpr: float
    threshold: float  # in z units: Φ̄⁻¹(fpr)
    n: int
    true_positives: int
    tpr: float
    tpr_ci: tuple[float, float]
    false_positives: int
    observed_fpr: float
    observed_fpr_ci: tuple[float, float]


def operating_points(clean_p: np.ndarray, poisoned_p: np.ndarray, fprs: tuple[float, ...]) -> tuple[OperatingPoint, ...]:
    """One :class:`OperatingPoint` per nominal FPR, from the clean and poisoned units' p-values."""
    n = len(poisoned_p)
    out = []
    for fpr in fprs:
        tp, fp = int(np.sum(poisoned_p < fpr)), int(np.sum(clean_p < fpr))
        out.append(
            OperatingPoint(
                fpr=fpr, threshold=z_of_p(fpr), n=n, true_positives=tp, tpr=tp / n if n else 0.0, tpr_ci=clopper_pearson(tp, n),
                false_positives=fp, observed_fpr=fp / len(clean_p) if len(clean_p) else 0.0,
                observed_fpr_ci=clopper_pearson(fp, len(clean_p)),
            )
        )  # fmt: skip
    return tuple(out)


def video_z(z: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(source ids in ascending order, Stouffer z of each source's clips) for per-clip ``z`` and the
    source video of each clip; the clips of one video are taken as independent under the null."""
    ids = np.unique(sources)
    return ids, np.array([stouffer(z[sources == s]) for s in ids])


@dataclass(frozen=True)
class Decision:
    """Exactly one of ``threshold`` (explicit) or ``target_fpr`` (calibrated on clean scores) is set."""

    threshold: float | None = None
    target_fpr: float | None = None


def calibrate_threshold(clean: np.ndarray, target_fpr: float) -> float:
    """Smallest clean score such that at most floor(target_fpr * N) clean scores exceed it.

    With target_fpr < 1/N this is the highest clean score (no clean clip is called marked).
    """
    ranked = np.sort(clean)[::-1]
    allowed = min(int(math.floor(target_fpr * len(ranked))), len(ranked) - 1)
    return float(ranked[allowed])


def detection_stats(clean: np.ndarray, poisoned: np.ndarray, decision: Decision) -> dict[str, Any]:
    """Means, sample stds, separation, threshold, TPR/FPR with counts and intervals, AUC with its
    interval, and a one-sided p-value."""
    n = len(clean)
    threshold = decision.threshold if decision.threshold is not None else calibrate_threshold(clean, decision.target_fpr or 0.0)
    ddof = 1 if n > 1 else 0
    # AUC = P(poisoned > clean) + P(tie)/2, from the Mann-Whitney U statistic.
    auc = float(sps.mannwhitneyu(poisoned, clean, alternative="greater").statistic) / (n * n)
    diff = poisoned - clean
    if np.all(diff == 0):
        p_value = 1.0  # no evidence at all; scipy refuses an all-zero sample
    else:
        p_value = float(sps.wilcoxon(diff, alternative="greater", zero_method="wilcox").pvalue)
    true_positives, false_positives = int(np.sum(poisoned > threshold)), int(np.sum(clean > threshold))
    return {
        "clean_mean": float(clean.mean()),
        "clean_std": float(clean.std(ddof=ddof)),
        "poisoned_mean": float(poisoned.mean()),
        "poisoned_std": float(poisoned.std(ddof=ddof)),
        "separation": float(poisoned.mean() - clean.mean()),
        "threshold": float(threshold),
        "tpr": true_positives / n,
        "fpr": false_positives / n,
        "num_clips": n,
        "true_positives": true_positives,
        "false_positives": false_positives,
        "tpr_ci": clopper_pearson(true_positives, n),
        "fpr_ci": clopper_pearson(false_positives, n),
        "auc": auc,
        "auc_ci": auc_interval(auc, n, n),
        "p_value": p_value,
        "p_value_test": P_VALUE_TEST,
    }


def psnr_db(squared_error_sum: float, num_values: int) -> float:
    """PSNR in dB of uint8 data from the pooled squared error; +inf when identical."""
    if squared_error_sum == 0:
        return math.inf
    return 10.0 * math.log10(255.0**2 * num_values / squared_error_sum)
