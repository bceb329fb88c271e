"""A run's report: one candidate's statistics on one split, the gaps between splits, and the kept
signature's fidelity (PSNR / SSIM, frames.png's clips). summary.json is built from these by
:meth:`codecloop.run.Run.finish`."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import numpy as np

from codecloop import fidelity as fidelity_metrics
from codecloop import leadchannel
from codecloop.client import Client
from codecloop.objectives import Objective
from codecloop.results import CodecStats, EvaluateResult
from codecloop.runconfig import RunConfig
from codecloop.types import DatasetCarriers
from codecloop_wire.errors import CodecLoopValueError

FIDELITY_CLIPS = 4  # held-out clips the report's PSNR / SSIM and frames.png are measured on

_ARRAYS = ("clean_scores", "poisoned_scores", "clean_p_values", "poisoned_p_values", "clean_z", "poisoned_z")


def _stats_fields(stats: CodecStats, objective: Objective) -> dict[str, Any]:
    """One codec setting's statistics (no per-clip arrays) plus its objective value and label."""
    out = {k: v for k, v in asdict(stats).items() if k not in ("codec", "channel", "p_value_test", *_ARRAYS)}
    # the x264 level and build that produced these numbers (docs/codecs-and-channels.md, "Determinism"), archived with them
    codec = {"codec": stats.label(), "x264_asm": stats.codec.x264_asm, "x264_build": stats.codec.x264_build}
    return {**codec, "objective": objective.codec(stats), **out}


def report(result: EvaluateResult, index: int, objective: Objective, carriers: DatasetCarriers) -> dict[str, Any]:
    """One candidate's report on one split: the worst codec setting's statistics at the top level
    (``tpr``, ``fpr``, ``threshold``, ``separation``, ``clean_mean``, ...), every setting under ``per_codec``."""
    per_codec = [_stats_fields(s, objective) for s in result.candidates[index].codecs]
    worst = min(per_codec, key=lambda s: float(s["objective"]))
    return {"dataset": carriers.dataset, "split": carriers.split, "clips": result.num_clips, **worst, "per_codec": per_codec}


def gaps(sections: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, float | None]]:
    """Differences of objective, TPR and separation between splits (train - validation, ...)."""
    pairs = (("train", "validation"), ("validation", "holdout"), ("train", "holdout"))
    out: dict[str, dict[str, float | None]] = {}
    for metric in ("objective", "tpr", "separation"):
        row: dict[str, float | None] = {}
        for a, b in pairs:
            first, second = sections[a], sections[b]
            row[f"{a}_minus_{b}"] = float(first[metric] - second[metric]) if first and second else None
        out[metric] = row
    return out


Clips = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # clean, marked, both after the codec: (N, T, H, W, 3) uint8


def fidelity(
    client: Client, config: RunConfig, holdout: DatasetCarriers, signature: np.ndarray, through: leadchannel.Lead | None = None
) -> tuple[dict[str, Any], Clips | None]:
    """PSNR and SSIM of ``signature`` (:mod:`codecloop.fidelity`) on up to :data:`FIDELITY_CLIPS`
    held-out clips through ``through`` (the run passes the worst codec setting or channel on the
    held-out split, resolved: one channel of a preset), else the first codec setting (else the
    first channel), and those clips (clean, marked, both after the codec) for frames.png."""
    c = config
    look = replace(holdout, num_clips=min(FIDELITY_CLIPS, holdout.num_clips or FIDELITY_CLIPS), seed=0)
    if through is None:
        through = (c.codecs[0], None) if c.codecs else (None, c.channels[0])
    codec, channel = through
    route: dict[str, Any] = {"codec": codec} if channel is None else {"channel": channel}
    label = leadchannel.label(through)
    try:
        clean = client.transcode(None, epsilon=c.epsilon, carriers=look, include_input=True, **route)
        marked = client.transcode(signature, epsilon=c.epsilon, carriers=look, include_input=True, **route)
    except CodecLoopValueError as err:  # e.g. a channel preset of several channels: no single "after"
        return {"codec": label, "note": f"not measured: {err}"}, None
    assert clean.inputs is not None and marked.inputs is not None  # include_input=True
    clips: Clips = (clean.inputs, marked.inputs, clean.decoded, marked.decoded)
    measured = fidelity_metrics.report(*clips)
    return {"codec": label, "clips": len(clean.decoded), "split": holdout.split, "ssim": fidelity_metrics.SSIM_DEFINITION, **measured}, clips
