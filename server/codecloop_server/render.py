"""Outcomes and settings -> protos: everything the server sends on the wire is made here (the
inverse of parse.py): results, resolved codec settings and channels, limits, server information."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from codecloop_server import channels, scorers, scoring
from codecloop_server.codecs import CODECS, MIN_SIZE, PIX_FMTS, PRESETS, CodecSettings
from codecloop_server.corpus import Dataset
from codecloop_server.jobs import CandidateOutcome, ClipScores, CodecOutcome, EngineStats, EvaluateJob, TranscodeJob, TranscodeOutcome
from codecloop_server.parse import Limits
from codecloop_server.versions import encoder_version, x264_build
from codecloop_wire import stats
from codecloop_wire.null import EMPIRICAL_NULL_MODEL, NULL_MODEL, p_values
from codecloop_wire.tensors import to_tensor
from codecloop_wire.v1 import codecloop_pb2 as pb


def codec_to_proto(c: CodecSettings) -> pb.CodecSettings:
    """Every field of the resolved settings (x264_build for libx264 only)."""
    return pb.CodecSettings(
        codec=c.codec, crf=c.crf, qp=c.qp, bitrate_kbps=c.bitrate_kbps, preset=c.preset, pix_fmt=c.pix_fmt, gop=c.gop, fps=c.fps,
        x264_asm=c.x264_asm, x264_build=x264_build() if c.codec == "libx264" else None,
    )  # fmt: skip


def channel_to_proto(c: channels.Channel) -> pb.Channel:
    """Every field of the resolved channel."""
    steps = []
    for s in c.steps:
        if isinstance(s, channels.Resize):
            steps.append(pb.ChannelStep(resize=pb.ResizeStep(width=s.width, height=s.height, scale=s.scale, filter=s.filter, max_short_side=s.max_short_side)))
        elif isinstance(s, channels.Crop):
            steps.append(pb.ChannelStep(crop=pb.CropStep(x=s.x, y=s.y, width=s.width, height=s.height)))
        elif isinstance(s, channels.FrameRate):
            steps.append(pb.ChannelStep(frame_rate=pb.FrameRateStep(fps=s.fps)))
        else:
            steps.append(pb.ChannelStep(encode=codec_to_proto(s)))
    return pb.Channel(name=c.name, steps=steps, map_back_filter=c.map_back_filter, input_fps=c.input_fps)


def limits_proto(limits: Limits) -> pb.Limits:
    """The limits the proto carries (the worker bound is published in ServerInfo.load)."""
    return pb.Limits(**{k: v for k, v in limits.__dict__.items() if k in pb.Limits.DESCRIPTOR.fields_by_name})


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


def candidate_proto(o: CandidateOutcome, job: EvaluateJob, registry: scorers.ScorerRegistry) -> pb.CandidateResult:
    """One candidate's result; ``registry``: the server's scorers (which null model the job's has)."""
    per_clip = job.per_clip
    described = NULL_MODEL if isinstance(registry.get(job.scorer[0]), scorers.Scorer) else EMPIRICAL_NULL_MODEL
    return pb.CandidateResult(
        fitness=o.fitness,
        fitness_mean=o.fitness_mean,
        num_clips=o.num_clips,
        race_rank=o.race_rank,  # None: unset (no race)
        codecs=[
            pb.CodecResult(
                codec=codec_to_proto(c.channel.final_codec),
                channel=channel_to_proto(c.channel) if job.report_channels else None,
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


def evaluate_response(outcomes: list[CandidateOutcome], job: EvaluateJob, registry: scorers.ScorerRegistry) -> pb.EvaluateResponse:
    return pb.EvaluateResponse(
        results=[candidate_proto(o, job, registry) for o in outcomes],
        scorer=job.scorer[0],
        epsilon=job.epsilon,
        num_clips=len(job.carriers),
        clip_ids=job.carriers.clip_ids,
        clip_sources=job.carriers.clip_sources(),
        source_names=job.carriers.source_names,
    )


def started_event(job: EvaluateJob) -> pb.EvaluateEvent:
    """A stream's first event: what the job will run."""
    return pb.EvaluateEvent(
        started=pb.EvaluateEvent.Started(
            num_candidates=len(job.candidates),
            scorer=job.scorer[0],
            epsilon=job.epsilon,
            num_clips=len(job.carriers),
            clip_ids=job.carriers.clip_ids,
            clip_tasks=job.clip_tasks(),
            clip_sources=job.carriers.clip_sources(),
            source_names=job.carriers.source_names,
        )
    )


def progress_event(done: int, total: int) -> pb.EvaluateEvent:
    return pb.EvaluateEvent(progress=pb.EvaluateEvent.Progress(clip_tasks_done=done, clip_tasks=total))


def result_event(index: int, outcome: CandidateOutcome, job: EvaluateJob, registry: scorers.ScorerRegistry) -> pb.EvaluateEvent:
    return pb.EvaluateEvent(result=pb.EvaluateEvent.Result(index=index, result=candidate_proto(outcome, job, registry)))


def transcode_response(out: TranscodeOutcome, job: TranscodeJob) -> pb.TranscodeResponse:
    return pb.TranscodeResponse(
        decoded=to_tensor(out.decoded, "uint8"),
        input=to_tensor(out.inputs, "uint8") if out.inputs is not None else None,
        encoded_bytes=out.encoded_bytes,
        clip_ids=job.carriers.clip_ids,
        codec=codec_to_proto(job.channel.final_codec),
        channel=channel_to_proto(job.channel) if job.report_channel else None,
    )


def load(engine: EngineStats, server: Mapping[str, float]) -> dict[str, float]:
    """ServerInfo.load: the engine's statistics under their wire keys, then ``server``'s own
    (request memory, calls in progress)."""
    return {
        **{f"{kind}_encodes": float(n) for kind, n in engine.encodes.items()},
        "clean_cache_bytes": float(engine.clean_cache_bytes),
        "clean_cache_held": float(engine.clean_cache_held),
        "clean_cache_hits": float(engine.clean_cache_hits),
        "clean_cache_misses": float(engine.clean_cache_misses),
        "result_cache_hits": float(engine.result_cache_hits),
        "result_cache_misses": float(engine.result_cache_misses),
        "queued_tasks": float(engine.queued_tasks),
        "tasks_in_flight": float(engine.tasks_in_flight),
        "worker_restarts": float(engine.worker_restarts),
        "workers_responsive": float(engine.workers_responsive),
        **{f"queued_tasks{{client={c}}}": float(n) for c, n in engine.queued_by_client.items()},
        **{f"dispatched_tasks{{client={c}}}": float(n) for c, n in engine.dispatched_by_client.items()},
        **server,
    }


def _dataset_info(d: Dataset) -> pb.DatasetInfo:
    return pb.DatasetInfo(
        name=d.name,
        split_clips={k: len(v) for k, v in d.splits.items()},
        clip_shape=d.clip_shape,
        digest=d.digest,
        description=d.description,
        split_policy=d.split_policy,
        carrier_policy=d.carrier_policy,
        split_sources={k: pb.SourceNames(names=v) for k, v in d.split_sources().items()},
        sources=[pb.SourceClips(name=n, split_clips=c) for n, c in d.source_split_clips()],
        skipped=[pb.SkippedFile(name=n, reason=r) for n, r in d.skipped],
        folder=d.folder,
    )


def server_info(
    versions: Mapping[str, str], datasets: Iterable[Dataset], registry: scorers.ScorerRegistry, limits: Limits, load: Mapping[str, float],
    workers: int,
) -> pb.ServerInfo:
    """GetServerInfo's reply: what this server offers (codecs, channel presets, scorers, datasets), its
    limits and its ``load`` (:func:`load`)."""
    return pb.ServerInfo(
        versions=versions,
        datasets=[_dataset_info(d) for d in datasets],
        codecs=list(CODECS),
        presets=PRESETS,
        pix_fmts=PIX_FMTS,
        codec_info=[
            pb.CodecInfo(
                codec=spec.codec, decoder=spec.decoder, crf_range=spec.crf_range, qp_range=spec.qp_range or (), bitrate=True,
                presets=spec.presets, default_preset=spec.default_preset, min_size=MIN_SIZE, version=encoder_version(spec.codec),
            )
            for spec in CODECS.values()
        ],
        channel_presets=[
            pb.ChannelPreset(name=p.name, description=p.description, channels=[channel_to_proto(c) for c in p.channels])
            for p in channels.PRESETS.values()
        ],
        resize_filters=list(channels.FILTERS),
        scorers=[
            pb.ScorerInfo(
                name=s.name, description=s.description, default_params={k: v[0] for k, v in s.param_ranges.items()},
                null_model=scorers.offers_null(s),
                clip_shapes=[pb.ClipShape(frames=t, height=h, width=w) for t, h, w in scoring.clip_shapes(s)],
            )
            for s in registry.values()
        ],
        limits=limits_proto(limits),
        workers=workers,
        load=load,
    )  # fmt: skip


def score_clips_response(out: ClipScores) -> pb.ScoreClipsResponse:
    """ScoreClips's reply: the scores, and a keyed detector's null z, p-values and null model in words."""
    if out.z is None:
        return pb.ScoreClipsResponse(scores=out.scores.tolist())
    return pb.ScoreClipsResponse(scores=out.scores.tolist(), z=out.z.tolist(), p_values=p_values(out.z).tolist(), null_model=EMPIRICAL_NULL_MODEL)
