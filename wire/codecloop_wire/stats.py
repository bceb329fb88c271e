"""Detection statistics of one candidate under one codec setting.

Conventions: a clip is called "marked" when its score > threshold. ``clean`` and ``poisoned`` are
the scores of the same N carrier clips without and with the signature, so the test is paired.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

P_VALUE_TEST = "one-sided Wilcoxon signed-rank, paired per clip, H1: poisoned > clean"


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


def detection_stats(clean: np.ndarray, poisoned: np.ndarray, decision: Decision) -> dict[str, float | str]:
    """Means, sample stds, separation, threshold, TPR/FPR, AUC and a one-sided p-value."""
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
    return {
        "clean_mean": float(clean.mean()),
        "clean_std": float(clean.std(ddof=ddof)),
        "poisoned_mean": float(poisoned.mean()),
        "poisoned_std": float(poisoned.std(ddof=ddof)),
        "separation": float(poisoned.mean() - clean.mean()),
        "threshold": float(threshold),
        "tpr": float(np.mean(poisoned > threshold)),
        "fpr": float(np.mean(clean > threshold)),
        "auc": auc,
        "p_value": p_value,
        "p_value_test": P_VALUE_TEST,
    }


def psnr_db(squared_error_sum: float, num_values: int) -> float:
    """PSNR in dB of uint8 data from the pooled squared error; +inf when identical."""
    if squared_error_sum == 0:
        return math.inf
    return 10.0 * math.log10(255.0**2 * num_values / squared_error_sum)
