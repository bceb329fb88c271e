"""What an evaluation asks for, and its conversion to the wire: :class:`EvaluateOptions` (shared by
``Client.evaluate``, ``evaluate_stream`` and ``fitness``) and the population's batch form.

A field left None is not sent, so the server's default applies (``codecloop_wire.defaults``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from codecloop.types import Channel, Codec, DatasetCarriers, Racing
from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.tensors import to_tensor
from codecloop_wire.v1 import codecloop_pb2 as pb

Carriers = DatasetCarriers | np.ndarray | None
DTYPES = ("float32", "float16", "int8")


@dataclass(frozen=True)
class EvaluateOptions:
    """How to evaluate a population (every field optional).

    Attributes:
        epsilon: L-inf budget in [0, 1] units (4/255 = four uint8 levels); None: the server's, 4/255.
        carriers: :class:`DatasetCarriers` (None: the embedded train split, 32 clips, seed 0) or
            inline uint8 clips (N, T, H, W, 3).
        codecs: one or more :class:`Codec`; None (and no channels): one Codec() (libx264 CRF 28 medium).
        channels: one or more :class:`Channel` (evaluated after ``codecs``; a preset expands in place).
        scorer, scorer_params: detector name and parameters (``Client.info().scorers``); None: "blind".
        threshold / target_fpr: the decision rule (at most one); neither: target_fpr 1/64.
        per_clip_scores: also return every clip's clean and poisoned score.
        dtype: wire type of the signatures: float32, float16 or int8 (with a scale).
        racing: a :class:`Racing` (successive halving inside the request); None: every candidate
            on every clip.
        null_model: True (default operating points 1e-2, 1e-3, 1e-4, 1e-6) or a sequence of
            nominal FPRs: every clip's score also gets a p-value under the null model, and the
            statistics carry TPR at those FPRs per clip and per source video (docs/statistics.md).
            Correlation scorers only; costs a few FFTs per clip. False: not asked.
    """

    epsilon: float | None = None
    carriers: Carriers = None
    codecs: Codec | Sequence[Codec] | None = None
    channels: Channel | Sequence[Channel] | None = None
    scorer: str | None = None
    scorer_params: Mapping[str, float] | None = None
    threshold: float | None = None
    target_fpr: float | None = None
    per_clip_scores: bool = False
    dtype: str = "float32"
    racing: Racing | None = None
    null_model: bool | Sequence[float] = False

    def __post_init__(self) -> None:
        if self.threshold is not None and self.target_fpr is not None:
            raise CodecLoopValueError("threshold, target_fpr: give at most one decision rule")
        if self.dtype not in DTYPES:
            raise CodecLoopValueError(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        channels = [self.channels] if isinstance(self.channels, Channel) else list(self.channels or ())
        for i, c in enumerate(channels):
            if not isinstance(c, Channel):
                raise CodecLoopValueError(
                    f"channels[{i}]: a {type(c).__name__}, not a Channel; give Channel.parse('social') or Channel((Codec(...),)),"
                    " or put a codec setting in codecs="
                )

    def updated(self, **changes: Any) -> EvaluateOptions:
        """A copy with ``changes``; an unknown name is refused naming the allowed ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise CodecLoopValueError(f"{unknown[0]}: not an evaluation option; allowed: {sorted(names)}")
        return dataclasses.replace(self, **changes) if changes else self

    def to_proto(self) -> pb.EvaluateRequest:
        """The request without its candidates."""
        req = pb.EvaluateRequest(
            carriers=carriers_proto(self.carriers),
            codecs=[c.to_proto() for c in codec_list(self.codecs)],
            channels=[c.to_proto() for c in ([self.channels] if isinstance(self.channels, Channel) else list(self.channels or ()))],
            scorer=pb.Scorer(name=self.scorer, params=dict(self.scorer_params or {})),
            per_clip_scores=self.per_clip_scores,
        )
        if self.epsilon is not None:
            req.epsilon = self.epsilon
        if self.racing is not None:
            req.racing.CopyFrom(self.racing.to_proto())
        if self.null_model is not False:
            req.null_model.SetInParent()  # present: asked for, with the server's default FPRs when empty
            if self.null_model is not True:
                req.null_model.fprs.extend(float(f) for f in self.null_model)
        if self.threshold is not None:
            req.decision.threshold = self.threshold
        elif self.target_fpr is not None:
            req.decision.target_fpr = self.target_fpr
        return req


def as_batch(signatures: Any) -> list[np.ndarray]:
    """A population as a list of float32 (T or 1, H, W, 3) arrays.

    Accepts a (P, T, H, W, 3) array or torch tensor, or a sequence of (T, H, W, 3) arrays/tensors.
    A single 4-D array is refused rather than guessed: pass ``sig[None]``.
    """
    if hasattr(signatures, "detach"):  # torch.Tensor, without importing torch
        signatures = signatures.detach().cpu().numpy()
    if isinstance(signatures, np.ndarray):
        if signatures.ndim != 5:
            raise CodecLoopValueError(
                f"signatures: expected a batch (P, T, H, W, 3), got shape {signatures.shape}; wrap one signature as sig[None]"
            )
        batch = list(signatures)
    else:
        batch = [np.asarray(s.detach().cpu().numpy() if hasattr(s, "detach") else s) for s in signatures]
    for i, s in enumerate(batch):
        if s.ndim != 4:
            raise CodecLoopValueError(f"signatures[{i}]: expected (T, H, W, 3), got shape {s.shape}")
    return [np.ascontiguousarray(s, dtype=np.float32) for s in batch]


def carriers_proto(carriers: Carriers) -> pb.Carriers:
    if carriers is None:
        return pb.Carriers()  # the server's default carriers
    if isinstance(carriers, DatasetCarriers):
        return carriers.to_proto()
    clips = np.asarray(carriers)
    if clips.dtype != np.uint8:
        raise CodecLoopValueError(f"carriers: inline clips must be uint8 (N, T, H, W, 3), got {clips.dtype}")
    return pb.Carriers(clips=to_tensor(clips, "uint8"))


def codec_list(codecs: Codec | Sequence[Codec] | None) -> list[Codec]:
    if codecs is None:
        return []  # the server's default: one CodecSettings{}
    if isinstance(codecs, Codec):
        return [codecs]
    return list(codecs)
