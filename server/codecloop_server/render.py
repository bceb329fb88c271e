"""Outcomes -> protos: how the engine's results are rendered on the wire (the inverse of parse.py)."""

from __future__ import annotations

from typing import Any

from codecloop_server import parse, scorers
from codecloop_server.jobs import CandidateOutcome, CodecOutcome, EvaluateJob
from codecloop_wire import stats
from codecloop_wire.null import EMPIRICAL_NULL_MODEL, NULL_MODEL, p_values
from codecloop_wire.v1 import codecloop_pb2 as pb


def _interval(ci: tuple[float, float]) -> pb.Interval:
    return pb.Interval(low=ci[0], high=ci[1])


def _points(points: tuple[stats.OperatingPoint, ...]) -> list[pb.OperatingPoint]:
    return [
        pb.OperatingPoint(
            fpr=p.fpr, threshold=p.threshold, n=p.n, true_positives=p.true_positives, tpr=p.tpr, tpr_ci=_interval(p.tpr_ci),
            false_positives=p.false_positives, observed_fpr=p.observed_fpr, observed_fpr_ci=_interval(p.observed_fpr_ci),
        )
        for p in points
    ]  # fmt: skip


def _null_fields(c: CodecOutcome, per_clip: bool, described: str) -> dict[str, Any]:
    """The CodecResult fields of the null model (none when the request did not ask for it)."""
    if c.null is None:
        return {}
    n = c.null
    fields: dict[str, Any] = {
        "null_model": described,
        "tpr_at_fpr": _points(n.tpr_at_fpr),
        "video_tpr_at_fpr": _points(n.video_tpr_at_fpr),
    }
    if per_clip:
        fields.update(
            clean_z=n.clean_z.tolist(), poisoned_z=n.poisoned_z.tolist(),
            clean_p_values=p_values(n.clean_z).tolist(), poisoned_p_values=p_values(n.poisoned_z).tolist(),
        )  # fmt: skip
    return fields


def _stats_fields(s: dict[str, Any]) -> dict[str, Any]:
    """detection_stats' dict as CodecResult fields (intervals as messages)."""
    out = {k: v for k, v in s.items() if not k.endswith("_ci")}
    out.update({k: _interval(v) for k, v in s.items() if k.endswith("_ci")})
    out["auc_ci_method"] = stats.AUC_CI_METHOD
    return out


def candidate_proto(o: CandidateOutcome, job: EvaluateJob) -> pb.CandidateResult:
    per_clip = job.per_clip
    described = NULL_MODEL if isinstance(scorers.get(job.scorer[0]), scorers.Scorer) else EMPIRICAL_NULL_MODEL
    return pb.CandidateResult(
        fitness=o.fitness,
        fitness_mean=o.fitness_mean,
        num_clips=o.num_clips,
        race_rank=o.race_rank,  # None: unset (no race)
        codecs=[
            pb.CodecResult(
                codec=parse.codec_to_proto(c.channel.final_codec),
                channel=parse.channel_to_proto(c.channel) if job.report_channels else None,
                psnr_db=c.psnr_db,  # +inf when the signature changed no pixel
                clean_bytes_mean=c.clean_bytes_mean,
                poisoned_bytes_mean=c.poisoned_bytes_mean,
                clean_scores=c.clean_scores.tolist() if per_clip else [],
                poisoned_scores=c.poisoned_scores.tolist() if per_clip else [],
                **_stats_fields(c.stats),
                **_null_fields(c, per_clip, described),
            )
            for c in o.codecs
        ],
    )
