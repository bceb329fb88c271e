"""Request parsing: protobuf messages -> validated engine jobs (replies are rendered in render.py); an unset field takes its value from
``codecloop_wire.defaults`` (the one place request defaults are written).

Every check raises CodecLoopValueError (-> INVALID_ARGUMENT) or CodecLoopLimitError
(-> RESOURCE_EXHAUSTED) naming the field and the allowed range. Nothing is clipped or dropped.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import Message

from codecloop_server import channels, memory, x264_asm
from codecloop_server.codecs import CodecSettings
from codecloop_server.corpus import Dataset
from codecloop_server.jobs import CarrierSet, EvaluateJob, Racing, ScoreClipsJob, TranscodeJob
from codecloop_server.registry import shown
from codecloop_server.scorers import ScorerRegistry, offers_null
from codecloop_server.scoring import served_detector
from codecloop_server.tasks import ScorerKey
from codecloop_server.versions import x264_build
from codecloop_wire import defaults, deploy, null, stats
from codecloop_wire.errors import CodecLoopLimitError, CodecLoopValueError
from codecloop_wire.tensors import from_tensor
from codecloop_wire.v1 import codecloop_pb2 as pb


@dataclass(frozen=True)
class Limits:
    """Per-request hard limits (published by GetServerInfo)."""

    max_candidates: int = 256
    max_clips: int = 512
    max_clip_pixels: int = 64 * 512 * 512  # T * H * W of one clip
    max_work_pixels: int = 1 << 31  # candidates * clips * codecs * T * H * W
    max_codecs: int = 8
    max_message_bytes: int = 64 << 20  # gRPC send and receive limit, both directions
    max_client_calls: int = 16  # evaluate / transcode calls in progress per client
    max_worker_memory_bytes: int = memory.DEFAULT_MAX_WORKER_MEMORY_BYTES  # one clip task's worker, base included


def _field(msg: Message, name: str, default: Any) -> Any:
    """The value of an ``optional`` field, or ``default`` when absent (0 is a value, not absence)."""
    return getattr(msg, name) if msg.HasField(name) else default


def codec_settings(msg: pb.CodecSettings, field: str = "codecs", fps: int = defaults.FPS) -> CodecSettings:
    """A CodecSettings message -> validated settings (``fps``: the frame rate when it is unset)."""
    # x264_asm / x264_build are the server's; a client may only pin them (refuse any other server)
    for name, mine in (("x264_asm", x264_asm.default()), ("x264_build", x264_build())):
        if msg.HasField(name) and getattr(msg, name) != mine:
            raise CodecLoopValueError(f"{field}.{name}: {shown(getattr(msg, name))}; this server runs x264 {name} = {mine!r} only")
    try:
        return CodecSettings(
            codec=_field(msg, "codec", defaults.CODEC),
            crf=_field(msg, "crf", None),  # no rate control given: CodecSettings takes defaults.CRF
            qp=_field(msg, "qp", None),
            bitrate_kbps=_field(msg, "bitrate_kbps", None),
            preset=_field(msg, "preset", None),  # the codec's default preset
            pix_fmt=_field(msg, "pix_fmt", defaults.PIX_FMT),
            gop=_field(msg, "gop", defaults.GOP),
            fps=_field(msg, "fps", fps),
            x264_asm=_field(msg, "x264_asm", None),
        )
    except CodecLoopValueError as err:  # "codec.crf: ..." -> "codecs[1].crf: ..."
        raise CodecLoopValueError(str(err).replace("codec.", f"{field}.", 1)) from None


def _step(msg: pb.ChannelStep, field: str, fps: int) -> channels.Step:
    which = msg.WhichOneof("step")
    if which is None:
        raise CodecLoopValueError(f"{field}: empty step; set one of resize, crop, frame_rate, encode")
    if which == "encode":
        return codec_settings(msg.encode, f"{field}.encode", fps)
    try:
        if which == "resize":
            r = msg.resize
            return channels.Resize(
                _field(r, "width", None), _field(r, "height", None), _field(r, "scale", None), _field(r, "filter", defaults.RESIZE_FILTER),
                _field(r, "max_short_side", None),
            )  # fmt: skip
        if which == "crop":
            c = msg.crop
            return channels.Crop(c.x, c.y, c.width, c.height)
        return channels.FrameRate(msg.frame_rate.fps)
    except CodecLoopValueError as err:  # "resize.scale: ..." -> "channels[0].steps[1].resize.scale: ..."
        raise CodecLoopValueError(f"{field}.{err}") from None


def channel_list(msg: pb.Channel, field: str, clip_shape: tuple[int, int, int]) -> tuple[channels.Channel, ...]:
    """One channel, or a preset's channels; each checked against clips of ``clip_shape`` (T, H, W)."""
    if msg.HasField("preset"):
        if msg.steps:
            raise CodecLoopValueError(f"{field}.preset: a preset brings its own steps; leave steps empty")
        found = channels.PRESETS.lookup(msg.preset, f"{field}.preset").channels
    else:
        input_fps = _field(msg, "input_fps", defaults.INPUT_FPS)
        if not 1 <= input_fps <= 240:  # before the steps: an encode's fps defaults to it
            raise CodecLoopValueError(f"{field}.input_fps: {input_fps} is outside the allowed range [1, 240]")
        name = _field(msg, "name", "")
        if len(name) > channels.MAX_NAME:  # before anything copies it
            raise CodecLoopValueError(f"{field}.name: {len(name)} characters; a channel name has at most {channels.MAX_NAME}")
        steps, fps = [], input_fps
        for j, step in enumerate(msg.steps):
            steps.append(_step(step, f"{field}.steps[{j}]", fps))
            fps = steps[-1].fps if isinstance(steps[-1], channels.FrameRate) else fps
        try:
            found = (channels.Channel(tuple(steps), _field(msg, "map_back_filter", defaults.RESIZE_FILTER), input_fps, name),)
        except CodecLoopValueError as err:  # "channel.steps: ..." -> "channels[0].steps: ..."
            raise CodecLoopValueError(str(err).replace("channel.", f"{field}.", 1)) from None
    for c in found:
        c.check(clip_shape, field)
    return found


def codec_channel(msg: pb.CodecSettings, field: str, clip_shape: tuple[int, int, int]) -> channels.Channel:
    """The one-step channel of a CodecSettings given alone, checked against clips of ``clip_shape``."""
    channel = channels.Channel.of(codec_settings(msg, field))
    try:
        channel.check(clip_shape)
    except CodecLoopValueError as err:  # "channel.steps[0].encode.bitrate_kbps: ..." -> "codecs[0].bitrate_kbps: ..."
        raise CodecLoopValueError(str(err).replace("channel.steps[0].encode", field, 1)) from None
    return channel


def admit(found: list[channels.Channel], fields: list[str], tasks_per_channel: int, clip_shape: tuple[int, int, int], limits: Limits) -> None:
    """Refuse, before any encode, channels whose clip tasks would take a codec worker past
    ``max_worker_memory_bytes``, and a request whose work (``tasks_per_channel`` clip tasks per
    channel, each of its channel's largest frame count x H x W: memory.channel_footprint) is over
    ``max_work_pixels``; both name the channel step that makes the most."""
    prints = [memory.channel_footprint(c, clip_shape, f) for c, f in zip(found, fields, strict=True)]
    for fp in prints:
        memory.check_worker_memory(fp, limits.max_worker_memory_bytes)
    work = tasks_per_channel * sum(fp.work_pixels for fp in prints)
    if work > limits.max_work_pixels:
        big = max(prints, key=lambda fp: fp.work_pixels)
        raise CodecLoopLimitError(
            f"candidates x clips x channels x frames x H x W = {work} (each channel at its largest step; the largest, "
            f"{big.where or 'the carriers'}, makes {big.work_pixels} pixels per clip) exceeds the server limit max_work_pixels = "
            f"{limits.max_work_pixels}"
        )


def epsilon(msg: pb.EvaluateRequest | pb.TranscodeRequest, field: str = "epsilon") -> float:
    """The request's epsilon, checked by the deployment rule's check (``codecloop mark`` runs the same one)."""
    return deploy.check_epsilon(_field(msg, "epsilon", defaults.EPSILON), field)


def scorer_key(msg: pb.Scorer, registry: ScorerRegistry) -> ScorerKey:
    """The scorer of ``registry`` the message names, with its parameters validated."""
    impl = registry.get(_field(msg, "name", defaults.SCORER))
    return impl.name, impl.resolve_params(dict(msg.params))


def decision(msg: pb.DecisionRule) -> stats.Decision:
    which = msg.WhichOneof("rule")
    if which == "threshold":
        if not math.isfinite(msg.threshold):
            raise CodecLoopValueError(f"decision.threshold: {msg.threshold} must be finite")
        return stats.Decision(threshold=msg.threshold)
    fpr = msg.target_fpr if which == "target_fpr" else defaults.TARGET_FPR
    if not (0 <= fpr < 1):
        raise CodecLoopValueError(f"decision.target_fpr: {fpr} is outside the allowed range [0, 1)")
    return stats.Decision(target_fpr=fpr)


MAX_NULL_FPRS = 16


def null_fprs(req: pb.EvaluateRequest, scorer: str, registry: ScorerRegistry) -> tuple[float, ...] | None:
    """The null model's operating points (EvaluateRequest.null_model), or None when not asked for."""
    if not req.HasField("null_model"):
        return None
    if not offers_null(registry.get(scorer)):
        raise CodecLoopValueError(
            f"null_model: scorer {scorer!r} is a detector without a key input; the null model needs a key to move "
            f"(offered for: {', '.join(registry.with_null())})"
        )
    fprs = tuple(req.null_model.fprs) or stats.DEFAULT_FPRS
    if len(fprs) > MAX_NULL_FPRS:
        raise CodecLoopValueError(f"null_model.fprs: {len(fprs)} values; at most {MAX_NULL_FPRS}")
    for i, f in enumerate(fprs):
        if not (1e-12 <= f <= 0.5):
            raise CodecLoopValueError(f"null_model.fprs[{i}]: {f} is outside the allowed range [1e-12, 0.5]")
    return fprs


def carriers(msg: pb.Carriers, datasets: dict[str, Dataset], limits: Limits) -> CarrierSet:
    if msg.WhichOneof("source") == "clips":
        clips = from_tensor(msg.clips, "carriers.clips", allowed=(pb.UINT8,))
        if clips.ndim != 5 or clips.shape[-1] != 3:
            raise CodecLoopValueError(f"carriers.clips.shape: {list(clips.shape)} must be (N, T, H, W, 3)")
        n, t, h, w, _ = clips.shape
        if h % 2 or w % 2 or h < 16 or w < 16:
            raise CodecLoopValueError(f"carriers.clips.shape: H x W = {h}x{w} must be even and at least 16x16 (yuv420p)")
        _check_clips(n, t * h * w, limits)
        inline_keys: tuple[Hashable, ...] = tuple(("inline", hashlib.sha256(c.tobytes()).hexdigest()) for c in clips)
        return CarrierSet(keys=inline_keys, clip_shape=(t, h, w), inline=clips)
    sel = msg.dataset
    name = _field(sel, "dataset", defaults.DATASET)
    if name not in datasets:
        raise CodecLoopValueError(f"carriers.dataset: unknown dataset {shown(name)}; allowed: {sorted(datasets)}")
    ds = datasets[name]
    split = _field(sel, "split", defaults.SPLIT)
    num = _field(sel, "num_clips", defaults.NUM_CLIPS)
    if num == 0:  # 0 = the whole split (an unknown split is refused by select below)
        num = len(ds.splits.get(split, ()))
    _check_clips(num, int(np.prod(ds.clip_shape)), limits)
    seed = _field(sel, "seed", defaults.SEED)
    if seed < 0:  # numpy's default_rng takes non-negative seeds only
        raise CodecLoopValueError(f"carriers.dataset.seed: {seed} is outside the allowed range [0, {2**63 - 1}]")
    ids = tuple(map(int, ds.select(split, num, seed)))
    keys = tuple(("dataset", ds.name, ds.digest, i) for i in ids)
    sources = tuple(int(ds.source_of_clip[i]) for i in ids)
    names = tuple(ds.sources[k] for k in sorted(set(sources)))
    return CarrierSet(keys=keys, clip_shape=ds.clip_shape, dataset=ds.name, clip_ids=ids, sources=sources, source_names=names)


def _check_clips(n: int, clip_pixels: int, limits: Limits, field: str = "carriers") -> None:
    if n > limits.max_clips:
        count = "carriers.num_clips" if field == "carriers" else f"{field}.shape"
        raise CodecLoopLimitError(f"{count}: {n} exceeds the server limit max_clips = {limits.max_clips}")
    if clip_pixels > limits.max_clip_pixels:
        raise CodecLoopLimitError(
            f"{field}: T*H*W = {clip_pixels} per clip exceeds the server limit max_clip_pixels = {limits.max_clip_pixels}"
        )


def check_transcode_reply(carriers: CarrierSet, include_input: bool, limits: Limits) -> None:
    """Refuse, before any encode, a Transcode whose reply could not be sent (over max_message_bytes)."""
    t, h, w = carriers.clip_shape
    arrays = 2 if include_input else 1
    # the clips plus a generous allowance for shapes, per-clip sizes and ids, and the codec
    reply = arrays * len(carriers) * t * h * w * 3 + 32 * len(carriers) + 4096
    if reply > limits.max_message_bytes:
        per_call = (limits.max_message_bytes - 4096) // (arrays * t * h * w * 3 + 32)
        raise CodecLoopLimitError(
            f"carriers: the reply would be {reply} bytes ({len(carriers)} clips of {t}x{h}x{w}x3"
            f"{', decoded and include_input' if include_input else ' decoded'}), over the server limit max_message_bytes = "
            f"{limits.max_message_bytes}; ask for at most {per_call} clips per call"
        )


def signature(msg: pb.Tensor, field: str, clip_shape: tuple[int, ...]) -> np.ndarray:
    """A float32 signature (T or 1, H, W, 3), finite, in [-1, 1], matching the carriers' (T, H, W)."""
    sig = from_tensor(msg, field, allowed=(pb.FLOAT32, pb.FLOAT16, pb.INT8))
    t, h, w = clip_shape
    if sig.ndim != 4 or sig.shape[0] not in (1, t) or sig.shape[1:] != (h, w, 3):
        raise CodecLoopValueError(f"{field}.shape: {list(sig.shape)} must be ({t} or 1, {h}, {w}, 3) to match the carriers")
    return deploy.check_signature(sig, field)  # the values check that `codecloop mark` runs too


def racing(msg: pb.Racing, candidates: int, clips: int) -> Racing:
    """A Racing message -> validated settings for ``candidates`` signatures on ``clips`` carriers."""
    first = _field(msg, "first_clips", min(defaults.RACE_FIRST_CLIPS, clips))
    if not 1 <= first <= clips:
        raise CodecLoopValueError(f"racing.first_clips: {first} is outside the allowed range [1, {clips}] (the carrier clips)")
    eta = _field(msg, "eta", defaults.RACE_ETA)
    if not 2 <= eta <= 16:
        raise CodecLoopValueError(f"racing.eta: {eta} is outside the allowed range [2, 16]")
    finalists = _field(msg, "finalists", defaults.RACE_FINALISTS)
    if not 1 <= finalists <= candidates:
        raise CodecLoopValueError(f"racing.finalists: {finalists} is outside the allowed range [1, {candidates}] (the candidates)")
    weight = _field(msg, "centre_weight", defaults.RACE_CENTRE_WEIGHT)
    if not 0 <= weight <= 1000:  # also refuses NaN
        raise CodecLoopValueError(f"racing.centre_weight: {weight} is outside the allowed range [0, 1000]")
    return Racing(first_clips=first, eta=eta, finalists=finalists, centre_weight=weight)


def evaluate_job(req: pb.EvaluateRequest, datasets: dict[str, Dataset], limits: Limits, registry: ScorerRegistry) -> EvaluateJob:
    """An EvaluateRequest -> a validated job; ``registry``: the scorers the server offers."""
    n_cand = len(req.candidates)
    if n_cand == 0:
        raise CodecLoopValueError(f"candidates: the population is empty; send 1 to {limits.max_candidates} signatures")
    if n_cand > limits.max_candidates:
        raise CodecLoopLimitError(f"candidates: {n_cand} exceeds the server limit max_candidates = {limits.max_candidates}")
    if len(req.codecs) > limits.max_codecs:
        raise CodecLoopLimitError(f"codecs: {len(req.codecs)} settings exceed the server limit max_codecs = {limits.max_codecs}")
    eps = epsilon(req)
    carrier_set = carriers(req.carriers, datasets, limits)
    found = [codec_channel(c, f"codecs[{i}]", carrier_set.clip_shape) for i, c in enumerate(req.codecs)]
    fields = [f"codecs[{i}]" for i in range(len(found))]
    for i, c in enumerate(req.channels):
        more = channel_list(c, f"channels[{i}]", carrier_set.clip_shape)
        found.extend(more)
        fields.extend(f"channels[{i}]" if len(more) == 1 else f"channels[{i}].preset[{k}]" for k in range(len(more)))
        if len(found) > limits.max_codecs:
            break
    if len(found) > limits.max_codecs:
        raise CodecLoopLimitError(
            f"codecs, channels: {len(found)} or more codec settings and channels (presets expanded) exceed the server limit max_codecs = {limits.max_codecs}"
        )
    if not found:
        found, fields = [channels.Channel.of(CodecSettings())], ["codecs"]
    if len(set(found)) != len(found):
        raise CodecLoopValueError("codecs, channels: the same codec settings or channel steps appear twice; each must be distinct")
    scorer = scorer_key(req.scorer, registry)
    rule = decision(req.decision)
    admit(found, fields, n_cand * len(carrier_set), carrier_set.clip_shape, limits)
    fprs = null_fprs(req, scorer[0], registry)
    t, h, w = carrier_set.clip_shape
    sigs = tuple(signature(c, f"candidates[{i}]", (t, h, w)) for i, c in enumerate(req.candidates))
    race = racing(req.racing, n_cand, len(carrier_set)) if req.HasField("racing") else None
    return EvaluateJob(
        candidates=sigs, epsilon=eps, carriers=carrier_set, channels=tuple(found), scorer=scorer, decision=rule, per_clip=req.per_clip_scores,
        report_channels=len(req.channels) > 0, racing=race, null_fprs=fprs,
    )  # fmt: skip


def transcode_job(req: pb.TranscodeRequest, datasets: dict[str, Dataset], limits: Limits) -> TranscodeJob:
    """A TranscodeRequest -> a validated job; the reply's size is checked before the channel."""
    carrier_set = carriers(req.carriers, datasets, limits)
    check_transcode_reply(carrier_set, req.include_input, limits)  # before any encode
    if req.HasField("channel"):
        found = channel_list(req.channel, "channel", carrier_set.clip_shape)
        if len(found) != 1:
            raise CodecLoopValueError(f"channel.preset: {shown(req.channel.preset)} has {len(found)} channels; Transcode takes one")
        channel, field = found[0], "channel"
    else:
        channel, field = codec_channel(req.codec, "codec", carrier_set.clip_shape), "codec"
    admit([channel], [field], len(carrier_set), carrier_set.clip_shape, limits)
    eps = epsilon(req)
    sig = signature(req.signature, "signature", carrier_set.clip_shape) if req.HasField("signature") else None
    return TranscodeJob(
        carriers=carrier_set, channel=channel, epsilon=eps, signature=sig, include_input=req.include_input,
        report_channel=req.HasField("channel"),
    )  # fmt: skip


def score_clips_job(req: pb.ScoreClipsRequest, limits: Limits, registry: ScorerRegistry) -> ScoreClipsJob:
    """A ScoreClipsRequest -> a validated job: a served detector, clips of one of its clip shapes
    (at most max_clips of at most max_clip_pixels; every forward's pixels within max_work_pixels), and
    the key exactly when the detector takes one."""
    det = served_detector(registry, req.detector)
    clips = from_tensor(req.clips, "clips", allowed=(pb.UINT8,))
    shapes = [list(s) for s in det.clip_shapes]
    if clips.ndim != 5 or clips.shape[-1] != 3 or tuple(clips.shape[1:4]) not in det.clip_shapes:
        raise CodecLoopValueError(
            f"clips.shape: {list(clips.shape)} must be (N, T, H, W, 3) with (T, H, W) one of the clip shapes of detector {det.name!r}: {shapes}"
        )
    n, t, h, w, _ = clips.shape
    _check_clips(n, t * h * w, limits, "clips")
    forwards = n * (1 + (null.EMPIRICAL_SHIFTS if det.uses_key else 0))
    if forwards * t * h * w > limits.max_work_pixels:
        raise CodecLoopLimitError(
            f"clips: {n} clips x {forwards // n} forwards x T*H*W {t * h * w} = {forwards * t * h * w} pixels exceeds the server limit "
            f"max_work_pixels = {limits.max_work_pixels}; send at most {limits.max_work_pixels // (forwards // n * t * h * w)} clips per call"
        )
    if not det.uses_key:
        if req.HasField("signature"):
            raise CodecLoopValueError(f"signature: detector {det.name!r} takes clips only, no key; leave signature unset")
        return ScoreClipsJob(det.name, clips, None)
    if not req.HasField("signature"):
        raise CodecLoopValueError(f"signature: detector {det.name!r} takes the key; send the signature, ({t} or 1, {h}, {w}, 3) in [-1, 1]")
    return ScoreClipsJob(det.name, clips, signature(req.signature, "signature", (t, h, w)))
