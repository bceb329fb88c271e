"""PNG reports (matplotlib, Agg backend): train / validation / held-out curves per generation, held-out
score histograms (counts) and ROC curves with a log-scale FPR axis and the operating point marked."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from codecloop.results import CodecStats
from codecloop.units import fraction_label
from codecloop_wire import stats


def roc_curve(clean: np.ndarray, poisoned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) over every threshold, for 'score > threshold means marked'."""
    thresholds = np.concatenate([[np.inf], np.sort(np.concatenate([clean, poisoned]))[::-1], [-np.inf]])
    fpr = np.array([(clean > t).mean() for t in thresholds])
    tpr = np.array([(poisoned > t).mean() for t in thresholds])
    return fpr, tpr


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """Lay out, write as a 100-dpi PNG and close a figure; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def run_plots(
    folder: Path,
    history: Sequence[dict[str, Any]],
    validations: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    holdout: Sequence[CodecStats],
    epsilon: float,
) -> list[Path]:
    """fitness.png (:func:`curves_figure`), holdout_hist.png and holdout_roc.png in ``folder``."""
    fig = curves_figure(history, validations, summary)
    return [_save(fig, folder / "fitness.png"), *holdout_plots(folder, holdout, epsilon, summary["target_fpr"])]


def curves_figure(history: Sequence[dict[str, Any]], validations: Sequence[dict[str, Any]], summary: dict[str, Any]) -> Any:
    """Objective (left) and TPR at the target FPR (right) per generation: the training population
    (each generation on its own clips), the validated candidates, and the kept signature on the
    train sample, validation and held-out splits (summary sections)."""
    plt = _pyplot()
    fpr_text = fraction_label(summary["target_fpr"])
    last = history[-1]["generation"]
    fig, (obj_ax, tpr_ax) = plt.subplots(1, 2, figsize=(11, 5.5))
    gens = [h["generation"] for h in history]
    obj_ax.plot(gens, [h["max"] for h in history], "-", color="C0", lw=1, label="train: generation's best (its clips)")
    obj_ax.plot(gens, [h["mean"] for h in history], "--", color="C0", lw=1, alpha=0.6, label="train: generation mean")
    tpr_ax.plot(gens, [h["best_tpr"] for h in history], "-", color="C0", lw=1, label="train: generation's best (its clips)")
    for cand, marker in (("best", "o"), ("mean", "s")):
        points = [v for v in validations if v["candidate"] == cand]
        if points:
            label = f"validation: {'generation best' if cand == 'best' else 'optimizer mean'}"
            obj_ax.plot([v["generation"] for v in points], [v["fitness"] for v in points], marker, color="C1", mfc="none", label=label)
            tpr_ax.plot([v["generation"] for v in points], [v["tpr"] for v in points], marker, color="C1", mfc="none", label=label)
    sel = summary["selected"]
    for key, ax in (("objective", obj_ax), ("tpr", tpr_ax)):
        for split, marker, color in (("train", "P", "C0"), ("validation", "*", "C1"), ("holdout", "D", "C3")):
            section = summary.get(split)
            if section:
                x, y = sel["generation"] if split == "validation" else last, section[key]
                ci = section.get("tpr_ci") if key == "tpr" else None
                yerr = [[y - ci[0]], [ci[1] - y]] if ci else None  # the kept signature's TPR with its 95 % interval
                ax.errorbar([x], [y], yerr=yerr, fmt=marker, color=color, ms=10, capsize=4,
                            label=f"kept signature, {split} ({section['clips']} clips): {y:.3g}")  # fmt: skip
        ax.set_xlabel("generation")
        # under the axes: inside, the legend covered the kept signature's markers at the last generation
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    obj_ax.set_ylabel(f"{summary['objective']} (bigger is better)")
    obj_ax.set_title(f"objective, kept by {sel['by']} (generation {sel['generation']})", fontsize=10)
    tpr_ax.set_ylabel(f"TPR at FPR ≤ {fpr_text}")
    tpr_ax.set_ylim(-0.02, 1.02)
    tpr_ax.set_title(f"TPR at FPR ≤ {fpr_text}, threshold from each split's clean scores", fontsize=10)
    return fig


def holdout_plots(folder: Path, holdout: Sequence[CodecStats], epsilon: float | None, target_fpr: float | None) -> list[Path]:
    """holdout_hist.png and holdout_roc.png (see :func:`histogram_figure`, :func:`roc_figure`)."""
    return [
        _save(histogram_figure(holdout, epsilon), folder / "holdout_hist.png"),
        _save(roc_figure(holdout, epsilon, target_fpr), folder / "holdout_roc.png"),
    ]


def _scores(s: CodecStats) -> tuple[np.ndarray, np.ndarray]:
    """The clean and poisoned per-clip scores of ``s`` (the plots need them: per_clip_scores=True)."""
    if s.clean_scores is None or s.poisoned_scores is None:
        raise ValueError(f"{s.label()}: no per-clip scores; evaluate with per_clip_scores=True")
    return s.clean_scores, s.poisoned_scores


def histogram_figure(holdout: Sequence[CodecStats], epsilon: float | None, split: str = "held-out") -> Any:
    """Clip counts of clean and poisoned scores with the threshold marked, one panel per codec
    setting, titled with the split, codec, epsilon and number of clips (per-clip scores needed)."""
    plt = _pyplot()
    eps_text = f"ε = {fraction_label(epsilon)}" if epsilon is not None else ""
    fig, axes = plt.subplots(1, len(holdout), figsize=(6 * len(holdout), 4), squeeze=False)
    for ax, s in zip(axes[0], holdout):
        clean, poisoned = _scores(s)
        scores = np.concatenate([clean, poisoned])
        bins = np.linspace(scores.min(), scores.max(), 30)
        ax.hist(clean, bins, alpha=0.6, label=f"clean {s.clean_mean:.3f}±{s.clean_std:.3f}")
        ax.hist(poisoned, bins, alpha=0.6, label=f"poisoned {s.poisoned_mean:.3f}±{s.poisoned_std:.3f}")
        ax.axvline(
            s.threshold, color="k", lw=1,
            label=f"threshold: TPR {s.true_positives}/{s.num_clips} [{s.tpr_ci[0]:.0%}, {s.tpr_ci[1]:.0%}], FPR {s.false_positives}/{s.num_clips}",
        )  # fmt: skip
        ax.set_title(", ".join(t for t in (split, s.label(), eps_text, f"n = {len(clean)} clips") if t), fontsize=10)
        ax.set_xlabel("detector score")
        ax.set_ylabel("clips")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    return fig


def roc_figure(holdout: Sequence[CodecStats], epsilon: float | None, target_fpr: float | None, split: str = "held-out") -> Any:
    """ROC curves on a log-scale FPR axis (FPR 0 drawn at 1/(2n)) with a pointwise 95 %
    Clopper-Pearson band on TPR, each codec setting's operating point with its TPR and FPR
    intervals as error bars, the target FPR as a vertical line, and, with the null model, TPR at
    each fixed FPR (p < FPR) with its interval: the low-FPR points the clean clips alone cannot show."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    n = max(len(_scores(s)[0]) for s in holdout)
    null_fprs = [p.fpr for s in holdout for p in s.tpr_at_fpr]
    floor = min([1 / (2 * n), *null_fprs])  # FPR 0 cannot sit on a log axis
    for i, s in enumerate(holdout):
        clean, poisoned = _scores(s)
        fpr, tpr = roc_curve(clean, poisoned)
        k = np.round(tpr * len(poisoned)).astype(int)
        band = np.array([stats.clopper_pearson(int(j), len(poisoned)) for j in k])
        x = np.maximum(fpr, 1 / (2 * n))
        ax.plot(x, tpr, "-", color=f"C{i}", label=f"{s.label()} AUC {s.auc:.3f} [{s.auc_ci[0]:.2f}, {s.auc_ci[1]:.2f}]")
        ax.fill_between(x, band[:, 0], band[:, 1], color=f"C{i}", alpha=0.15, step=None)
        ax.errorbar(
            [max(s.fpr, 1 / (2 * n))], [s.tpr], yerr=[[s.tpr - s.tpr_ci[0]], [s.tpr_ci[1] - s.tpr]],
            xerr=[[0.0], [max(s.fpr_ci[1] - s.fpr, 0.0)]], fmt="o", color=f"C{i}", ms=7, capsize=3,
            label=f"threshold: TPR {s.true_positives}/{s.num_clips}, FPR {s.false_positives}/{s.num_clips} (bars: 95 % CI)",
        )  # fmt: skip
        if s.tpr_at_fpr:
            pts = s.tpr_at_fpr
            ax.errorbar(
                [p.fpr for p in pts], [p.tpr for p in pts],
                yerr=[[p.tpr - p.tpr_ci[0] for p in pts], [p.tpr_ci[1] - p.tpr for p in pts]],
                fmt="s", color=f"C{i}", mfc="none", ms=6, capsize=3, label="null model: TPR at p < FPR (95 % CI)",
            )  # fmt: skip
    grid = np.logspace(np.log10(floor), 0, 50)
    ax.plot(grid, grid, "k:", lw=1, label="chance")
    if target_fpr is not None:
        # below 1/n the calibrated threshold is the highest clean score: no clean clip passes
        note = f" (below 1/{n}: threshold = highest clean score)" if target_fpr < 1 / n else ""
        ax.axvline(max(target_fpr, 1 / (2 * n)), color="grey", ls="--", lw=1, label=f"target FPR {fraction_label(target_fpr)}{note}")
    ax.set_xscale("log")
    ax.set_xlim(floor * 0.5, 1.05)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"false positive rate (log; an empirical FPR of 0 drawn at 1/{2 * n})")
    ax.set_ylabel("true positive rate")
    eps_text = f"ε = {fraction_label(epsilon)}" if epsilon is not None else ""
    ax.set_title(", ".join(t for t in (f"ROC, {split} clips", eps_text, f"n = {n}") if t), fontsize=10)
    ax.legend(fontsize=6, loc="lower right")
    return fig


def diagnose_plot(
    path: Path, proxy_separation: dict[str, np.ndarray], real_separation: np.ndarray, rho: dict[str, float], codec: str, epsilon: float
) -> Path:
    """``codecloop diagnose``: real vs proxy separation of random signatures, one series per rounding."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for r, v in proxy_separation.items():
        ax.scatter(v, real_separation, label=f"{r}: Spearman ρ = {rho[r]:.2f}", s=18)
    ax.set_xlabel("proxy separation")
    ax.set_ylabel(f"real separation ({codec})")
    ax.set_title(f"{len(real_separation)} random signatures, ε = {fraction_label(epsilon)}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _amplified(signal: np.ndarray, half_range: float) -> np.ndarray:
    """A signed array shown as an image: 0 -> mid grey, +-half_range -> white / black (clipped)."""
    return np.clip(0.5 + signal / (2 * half_range), 0, 1)


def _frames_shown(t: int, count: int = 4) -> list[int]:
    """Up to ``count`` frame indices spread evenly over ``t`` frames."""
    return sorted({int(round(i)) for i in np.linspace(0, t - 1, min(count, t))})


def signature_figure(signature: np.ndarray, epsilon: float) -> Any:
    """The kept signature (T', H, W, 3) in [-1, 1], a few frames; -1..1 fills black..white, i.e.
    the +-epsilon it adds to a clip amplified 1/epsilon times."""
    plt = _pyplot()
    frames = _frames_shown(len(signature))
    fig, axes = plt.subplots(1, len(frames), figsize=(2.6 * len(frames), 3.0), squeeze=False)
    for ax, k in zip(axes[0], frames):
        ax.imshow(_amplified(signature[k], 1.0), interpolation="nearest")
        ax.set_title(f"frame {k}" + (" (all frames)" if len(signature) == 1 else f" of {len(signature)}"), fontsize=9)
        ax.axis("off")
    fig.suptitle(f"kept signature, ±ε = ±{fraction_label(epsilon)} shown as black/white (×{1 / epsilon:.0f})", fontsize=10)
    return fig


def frames_figure(clean: np.ndarray, marked: np.ndarray, clean_coded: np.ndarray, marked_coded: np.ndarray, epsilon: float, codec: str) -> Any:
    """One clip (T, H, W, 3) uint8 in rows of a few frames: clean, marked (the encoder's input),
    marked after the codec, the mark before the codec (marked - clean) and after it (marked after
    the codec - clean after the codec), both amplified so that +-2 epsilon fills black..white."""
    plt = _pyplot()
    frames = _frames_shown(len(clean), 3)
    half = 2 * epsilon * 255  # in uint8 levels: the codec can make a difference larger than epsilon
    columns: list[tuple[str, Callable[[int], np.ndarray]]] = [
        ("clean", lambda k: clean[k]),
        ("marked (codec input)", lambda k: marked[k]),
        (f"marked after {codec}", lambda k: marked_coded[k]),
        ("mark before the codec", lambda k: _amplified(marked[k].astype(float) - clean[k], half)),
        ("mark after the codec", lambda k: _amplified(marked_coded[k].astype(float) - clean_coded[k], half)),
    ]
    fig, axes = plt.subplots(len(frames), len(columns), figsize=(2.4 * len(columns), 2.4 * len(frames) + 0.6), squeeze=False)
    for row, k in zip(axes, frames):
        for ax, (title, image) in zip(row, columns):
            ax.imshow(image(k), interpolation="nearest")
            ax.set_title(f"{title}, frame {k}", fontsize=7)
            ax.axis("off")
    fig.suptitle(f"differences amplified: ±{fraction_label(2 * epsilon)} (2ε) = black/white", fontsize=10)
    return fig


def result_images(folder: Path, signature: np.ndarray, epsilon: float, clips: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], codec: str) -> list[Path]:
    """signature.png (:func:`signature_figure`) and frames.png (:func:`frames_figure` of the first
    clip of ``clips`` = (clean, marked, clean after the codec, marked after the codec))."""
    clean, marked, clean_coded, marked_coded = (c[0] for c in clips)
    return [
        _save(signature_figure(signature, epsilon), folder / "signature.png"),
        _save(frames_figure(clean, marked, clean_coded, marked_coded, epsilon, codec), folder / "frames.png"),
    ]


def epsilon_figure(points: Sequence[Any], target_tpr: float | None = None, found: float | None = None, unit: str = "clips") -> Any:
    """TPR at the nominal FPR against ε (in uint8 levels), one line per channel, 95 % Clopper-Pearson
    error bars; ``points`` are :class:`codecloop.epsilon.EpsilonPoint` (one FPR)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for channel in sorted({p.channel for p in points}):
        mine = sorted((p for p in points if p.channel == channel), key=lambda p: p.epsilon)
        x = np.array([p.epsilon * 255 for p in mine])
        y = np.array([p.tpr for p in mine])
        err = np.array([[p.tpr - p.tpr_ci[0] for p in mine], [p.tpr_ci[1] - p.tpr for p in mine]])
        ax.errorbar(x, y, yerr=err, fmt="-o", capsize=3, label=channel)
    if target_tpr is not None:
        ax.axhline(target_tpr, color="grey", ls=":", label=f"target TPR {target_tpr:g}")
    if found is not None:
        ax.axvline(found * 255, color="black", ls="--", label=f"smallest ε {found * 255:g}/255")
    fprs = sorted({p.fpr for p in points})
    n = sorted({p.n for p in points})
    ax.set_xlabel("ε (uint8 levels, /255)")
    ax.set_ylabel(f"TPR at FPR {', '.join(f'{f:g}' for f in fprs)} ({unit}, n = {', '.join(map(str, n))})")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    return fig


def epsilon_plot(path: Path, points: Sequence[Any], target_tpr: float | None = None, found: float | None = None, unit: str = "clips") -> Path:
    """Write :func:`epsilon_figure` to ``path`` (PNG); returns ``path``."""
    return _save(epsilon_figure(points, target_tpr, found, unit), path)
