"""PNG reports (matplotlib, Agg backend): fitness per generation, score histograms, ROC."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from codecloop.types import CodecStats


def roc_curve(clean: np.ndarray, poisoned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) over every threshold, for 'score > threshold means marked'."""
    thresholds = np.concatenate([[np.inf], np.sort(np.concatenate([clean, poisoned]))[::-1], [-np.inf]])
    fpr = np.array([(clean > t).mean() for t in thresholds])
    tpr = np.array([(poisoned > t).mean() for t in thresholds])
    return fpr, tpr


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def train_plots(folder: Path, history: Sequence[dict[str, float]], holdout: CodecStats) -> list[Path]:
    """fitness.png (proxy vs real separation per validation step) and the held-out plots."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["train_separation"] for h in history], "-", label="training objective (its own forward)")
    ax.plot(steps, [h["proxy_separation"] for h in history], "--", label="proxy separation (hard rounding)")
    ax.plot(steps, [h["real_separation"] for h in history], "-o", label="real libx264 separation")
    ax.set_xlabel("step")
    ax.set_ylabel("separation")
    ax.legend(fontsize=8)
    return [_save(fig, folder / "fitness.png"), *_holdout_plots(folder, [holdout])]


def run_plots(folder: Path, history: Sequence[dict[str, float]], holdout: Sequence[CodecStats]) -> list[Path]:
    """fitness.png, holdout_hist.png, holdout_roc.png in ``folder``; returns their paths."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    gens = np.arange(len(history))
    for key, style in (("max", "-"), ("mean", "--"), ("best", ":")):
        ax.plot(gens, [h[key] for h in history], style, label=f"{key} fitness")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness (bigger is better)")
    ax.set_title("training fitness on the real codec")
    ax.legend()
    return [_save(fig, folder / "fitness.png"), *_holdout_plots(folder, holdout)]


def _save(fig, path: Path) -> Path:
    """Lay out, write as a 100-dpi PNG and close a figure; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def _holdout_plots(folder: Path, holdout: Sequence[CodecStats]) -> list[Path]:
    plt = _pyplot()
    paths = []
    fig, axes = plt.subplots(1, len(holdout), figsize=(6 * len(holdout), 4), squeeze=False)
    for ax, s in zip(axes[0], holdout):
        bins = np.linspace(min(s.clean_scores.min(), s.poisoned_scores.min()), max(s.clean_scores.max(), s.poisoned_scores.max()), 30)
        ax.hist(s.clean_scores, bins, alpha=0.6, label=f"clean {s.clean_mean:.3f}±{s.clean_std:.3f}")
        ax.hist(s.poisoned_scores, bins, alpha=0.6, label=f"poisoned {s.poisoned_mean:.3f}±{s.poisoned_std:.3f}")
        ax.axvline(s.threshold, color="k", lw=1, label=f"threshold (TPR {s.tpr:.0%}, FPR {s.fpr:.0%})")
        ax.set_title(f"held-out clips, {s.codec.label()}")
        ax.set_xlabel("detector score")
        ax.legend(fontsize=8)
    paths.append(_save(fig, folder / "holdout_hist.png"))

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for s in holdout:
        fpr, tpr = roc_curve(s.clean_scores, s.poisoned_scores)
        ax.plot(fpr, tpr, label=f"{s.codec.label()} AUC {s.auc:.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, held-out clips")
    ax.legend(fontsize=8)
    paths.append(_save(fig, folder / "holdout_roc.png"))
    return paths
