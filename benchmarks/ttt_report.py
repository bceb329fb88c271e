"""The deployment-target time-to-target report (benchmarks/ttt_deployment.py's rows): a markdown
table of medians over seeds, a per-checkpoint table, and the plot of held-out TPR against wall time."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any


def summarize_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with what its checkpoints say: reached, and the first checkpoint at the target (seconds,
    encodes, generations; None when not reached) and the best worst-channel TPR."""
    hit = next((c for c in row["checkpoints"] if c["reached"]), None)
    return row | {
        "reached": hit is not None,
        "seconds_to_target": None if hit is None else hit["seconds"],
        "encodes_to_target": None if hit is None else hit["encodes"],
        "generations_to_target": None if hit is None else hit["generations"],
        "best_worst_tpr": max((c["worst_tpr"] for c in row["checkpoints"]), default=0.0),
        "budget_seconds": row["checkpoints"][-1]["seconds"] if row["checkpoints"] else 0.0,
    }


def _median(rows: list[dict[str, Any]], key: str) -> float:
    """Median over seeds; a seed that never reached the target counts as infinite."""
    return statistics.median([r[key] if r["reached"] else math.inf for r in rows])


def _fmt(value: float, digits: int = 1) -> str:
    return "not reached" if math.isinf(value) else f"{value:.{digits}f}"


def markdown(rows: list[dict[str, Any]], setup: dict[str, Any]) -> list[str]:
    """Per mix: medians over seeds per back-end, ratios to ``defaults`` measured in this run, then every checkpoint."""
    lines = [f"Deployment target: per-video TPR >= {setup['target_tpr']:.0%} at p < {setup['fpr']:g} on every channel of the mix, "
             f"no false alarm; {setup['videos']} held-out test videos; dataset {setup['dataset']}, ε {setup['epsilon'] * 255:.3g}/255, "
             f"checkpoints at {', '.join(f'{s:g}' for s in setup['checkpoints'])} s of wall time (checks off the clock)."]  # fmt: skip
    for mix in dict.fromkeys(r["mix"] for r in rows):
        mine = [r for r in rows if r["mix"] == mix]
        channels = ", ".join(mine[0]["channels"])
        lines += ["", f"### {mix} ({channels})", "",
                  "| back-end | seeds at target | median s to target | median encodes to target | median best worst-channel TPR | notes |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        by_backend = {b: [r for r in mine if r["backend"] == b] for b in dict.fromkeys(r["backend"] for r in mine)}
        medians = {}
        for backend, rs in by_backend.items():
            medians[backend] = _median(rs, "seconds_to_target")
            notes = "; ".join(dict.fromkeys(r["note"] for r in rs if r["note"]))
            best = statistics.median(r["best_worst_tpr"] for r in rs)
            lines.append(f"| {backend} | {sum(r['reached'] for r in rs)}/{len(rs)} | {_fmt(medians[backend])} | "
                         f"{_fmt(_median(rs, 'encodes_to_target'), 0)} | {best:.2f} | {notes} |")  # fmt: skip
        base = medians.get("defaults", math.inf)
        if math.isfinite(base):
            lines.append("")
            for backend, med in medians.items():
                if backend == "defaults":
                    continue
                if math.isfinite(med):
                    lines.append(f"- time {backend} / defaults: {med / base:.2f}")
                else:  # a lower bound, measured: the budget it ran without reaching the target
                    budget = statistics.median(r["budget_seconds"] for r in by_backend[backend])
                    lines.append(f"- time {backend} / defaults: > {budget / base:.1f} (not reached in {budget:.0f} s)")
        lines += ["", "| back-end | seed | s | encodes | generations | " + " | ".join(f"{c}: called marked [95 % CI], false alarms" for c in mine[0]["channels"]) + " |",
                  "|---|---|---|---|---|" + "---|" * len(mine[0]["channels"])]  # fmt: skip
        for r in mine:
            for c in r["checkpoints"]:
                cells = [("no kept signature" if c["channels"] is None else
                          f"{c['channels'][ch]['true_positives']}/{c['channels'][ch]['n']} [{c['channels'][ch]['tpr_ci'][0]:.0%}, "
                          f"{c['channels'][ch]['tpr_ci'][1]:.0%}], {c['channels'][ch]['false_positives']}") for ch in r["channels"]]  # fmt: skip
                mark = " **target**" if c["reached"] else ""
                lines.append(f"| {r['backend']} | {r['seed']} | {c['seconds']:.1f}{mark} | {c['encodes']} | {c['generations']} | " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict[str, Any]], setup: dict[str, Any], path: Path) -> None:
    """Held-out per-video TPR (worst channel of the mix) against wall seconds, one colour per
    back-end, one line per seed; one panel per mix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixes = list(dict.fromkeys(r["mix"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    colours = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backends)}
    fig, axes = plt.subplots(1, len(mixes), figsize=(6.5 * len(mixes), 4.5), squeeze=False)
    for ax, mix in zip(axes[0], mixes):
        labelled = set()
        for r in (r for r in rows if r["mix"] == mix):
            xs, ys = [c["seconds"] for c in r["checkpoints"]], [c["worst_tpr"] for c in r["checkpoints"]]
            label = None if r["backend"] in labelled else r["backend"]
            labelled.add(r["backend"])
            ax.plot(xs, ys, marker="o", color=colours[r["backend"]], alpha=0.8, label=label)
        ax.axhline(setup["target_tpr"], color="grey", linestyle="--", linewidth=1)
        ax.set(title=f"{mix}: {', '.join(next(r for r in rows if r['mix'] == mix)['channels'])}", xlabel="wall seconds (checks off the clock)",
               ylabel=f"held-out per-video TPR at p < {setup['fpr']:g} (worst channel)", ylim=(-0.02, 1.02))  # fmt: skip
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
