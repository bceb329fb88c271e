"""What a request may cost in server memory, and the budget that admits requests against it.

Every Evaluate / Transcode request is charged, before anything in it is decoded, an upper bound of
the memory the server process allocates for it (the gRPC message itself included), from the sizes
in the message alone:

    Evaluate:  SIGNATURE_BYTES_PER_VALUE x (values of all candidates)
               + MESSAGE_FACTOR x (bytes of all tensors in the message)
    Transcode: SIGNATURE_BYTES_PER_VALUE x (values of the signature)
               + MESSAGE_FACTOR x (bytes of all tensors in the message)
               + REPLY_FACTOR x (bytes of the reply's clips: N x T x H x W x 3, twice with include_input)

    ScoreClips: MESSAGE_FACTOR x (bytes of all tensors in the message)
               + SIGNATURE_BYTES_PER_VALUE x (values of the key) + 4 x (1 + EMPIRICAL_SHIFTS) x (values of the key)
               + FORWARD_BYTES_PER_VALUE x (values of the clips one forward pass of the detector takes)
               + REPLY_BYTES_PER_CLIP x (clips)

Why these factors (per key value of ScoreClips: the float32 key and its moved copies for the empirical null; per
clip value of a forward pass: the batch's uint8 stack, its float32 copy and the keys' float32 stack,
the model's own activations being the operator's to size with ``--max-batch-size``; per float value of a signature: the float32 job copy 4 + its shared-memory copy
4 + the float64 template in shared memory 8, plus the transient float64 copies made while one
template is built; per message byte: the message, the copy that decoding a tensor makes, the shared
copy of inline clips; per reply byte: the decoded clips, their bytes, the reply message, its
serialized form) is in the README's "Memory bound"; the bound is tested in tests/test_faults_redteam.py
and its measurement is in docs/benchmarks.md. The sum of the charges of the requests in progress never
exceeds ``max_request_memory_bytes``: a request that would go over is refused at once with
RESOURCE_EXHAUSTED naming the limit.

Codec workers (docs/limits.md): one clip task's memory is estimated from the (T, H, W) each step of
its channel makes (:func:`channel_footprint`); a channel over the per-worker bound is refused naming
the step (:func:`check_worker_memory`), and once parsed a request is also charged what its tasks can
hold in the workers at once (:func:`worker_charge`), against the same budget.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

from codecloop_server.channels import Channel, Crop, FrameRate, Resize, step_name
from codecloop_server.codecs import CodecSettings
from codecloop_server.corpus import Dataset
from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopLimitError
from codecloop_wire.null import EMPIRICAL_SHIFTS
from codecloop_wire.v1 import codecloop_pb2 as pb

SIGNATURE_BYTES_PER_VALUE = 24
MESSAGE_FACTOR = 6
REPLY_FACTOR = 6
FORWARD_BYTES_PER_VALUE = 9
REPLY_BYTES_PER_CLIP = 32  # a score, a z and a p-value (doubles) and their tags
_ITEMSIZE = {pb.FLOAT32: 4, pb.FLOAT16: 2, pb.INT8: 1, pb.UINT8: 1}

# What one clip task costs a codec worker beyond its own base (docs/limits.md): per pixel (one
# frame position of T x H x W, three channels) of the carrier clip, of an encode step's frames, of
# an RGB array a step makes; plus a fixed amount per encoder. Upper bounds of peaks measured with
# every codec at its slowest preset (docs/limits.md has the measurements).
CARRIER_BYTES_PER_PIXEL = 64  # the clip, its poisoned copy, float poisoning temporaries, the output, scorer features
ENCODE_BYTES_PER_PIXEL = 8  # the decoded RGB output and one chunk of conversions (transcode.transcode_rgb streams)
ENCODER_FRAME_BYTES_PER_PIXEL = 16  # a frame the encoder or decoder holds (lookahead, references, reordering)
ENCODER_MAX_FRAMES = 128  # frames the codecs hold at most, whatever the clip's length (lookahead <= 60 at any preset)
ENCODE_FIXED_BYTES = 64 << 20  # an encoder's and decoder's own tables (SVT-AV1's are the largest)
RGB_BYTES_PER_PIXEL = 3
WORKER_BASE_BYTES = 192 << 20  # a warm worker before any task: 90 MiB measured, plus up to 64 MiB of kept shared copies (shm.py)
DEFAULT_MAX_WORKER_MEMORY_BYTES = 2 << 30


@dataclass(frozen=True)
class Footprint:
    """What one clip task of a channel costs: ``task_bytes`` of codec-worker memory at its peak (beyond
    the worker's base), ``work_pixels`` the largest frame count x H x W along the channel (carrier
    included), and ``where`` the step that makes the peak ("" when the carrier clip itself does)."""

    task_bytes: int
    work_pixels: int
    where: str
    shape: tuple[int, int, int]


def channel_footprint(channel: Channel, clip_shape: tuple[int, int, int], field: str) -> Footprint:
    """The task memory and work of ``channel`` on clips of (T, H, W), from the sizes each step makes
    (channels.Channel.stages): the carrier part, plus the largest step (its input held while it
    runs, and what it allocates)."""
    carrier = clip_shape[0] * clip_shape[1] * clip_shape[2]
    peak, work, where, shape = 0, carrier, "", clip_shape
    for i, step, before, after in channel.stages(clip_shape):
        px_in, px_out = before[0] * before[1] * before[2], after[0] * after[1] * after[2]
        if isinstance(step, CodecSettings):
            held = min(after[0], ENCODER_MAX_FRAMES) * after[1] * after[2]
            cost = ENCODE_BYTES_PER_PIXEL * px_out + ENCODER_FRAME_BYTES_PER_PIXEL * held + ENCODE_FIXED_BYTES
        elif isinstance(step, (Resize, FrameRate)):
            cost = RGB_BYTES_PER_PIXEL * px_out
        else:
            assert isinstance(step, Crop)  # a view of its input
            cost = 0
        step_bytes = RGB_BYTES_PER_PIXEL * px_in + cost
        if step_bytes > peak:
            peak, where, shape = step_bytes, f"{field}.steps[{i}].{step_name(step)}", after
        work = max(work, px_in, px_out)
    return Footprint(CARRIER_BYTES_PER_PIXEL * carrier + peak, work, where, shape)


@dataclass(frozen=True)
class Charge:
    """A request's memory charge in bytes, and a description of what it is made of (for errors)."""

    nbytes: int
    what: str


def _values(t: pb.Tensor) -> int:
    """Values a tensor decodes to, from its byte length (a malformed one is refused later anyway)."""
    return len(t.data) // _ITEMSIZE.get(t.dtype, 1)


def evaluate_charge(req: pb.EvaluateRequest) -> Charge:
    values = sum(_values(c) for c in req.candidates)
    tensor_bytes = sum(len(c.data) for c in req.candidates) + len(req.carriers.clips.data)
    nbytes = SIGNATURE_BYTES_PER_VALUE * values + MESSAGE_FACTOR * tensor_bytes
    return Charge(nbytes, f"candidates: {len(req.candidates)} signatures of {values} values in all, {tensor_bytes} tensor bytes")


def transcode_charge(req: pb.TranscodeRequest, datasets: dict[str, Dataset]) -> Charge:
    values = _values(req.signature) if req.HasField("signature") else 0
    clips = req.carriers.clips
    tensor_bytes = len(req.signature.data) + len(clips.data)
    if req.carriers.WhichOneof("source") == "clips":
        reply = len(clips.data)
    else:
        sel = req.carriers.dataset
        ds = datasets.get(sel.dataset if sel.HasField("dataset") else defaults.DATASET)
        t, h, w = ds.clip_shape if ds is not None else (0, 0, 0)
        reply = max(0, sel.num_clips if sel.HasField("num_clips") else defaults.NUM_CLIPS) * t * h * w * 3
    reply *= 2 if req.include_input else 1
    nbytes = SIGNATURE_BYTES_PER_VALUE * values + MESSAGE_FACTOR * tensor_bytes + REPLY_FACTOR * reply
    return Charge(nbytes, f"carriers: a reply of {reply} clip bytes, {tensor_bytes} tensor bytes in the request")


def score_clips_charge(req: pb.ScoreClipsRequest, max_batch_size: int) -> Charge:
    """ScoreClips's charge (module docstring), from the message's sizes; ``max_batch_size``: the clips
    of one forward pass of the named detector (a name it does not serve is refused after admission)."""
    clip_bytes = len(req.clips.data)
    key_values = _values(req.signature) if req.HasField("signature") else 0
    tensor_bytes = clip_bytes + len(req.signature.data)
    shape = list(req.clips.shape)
    # a shape that does not match the bytes is refused when the tensor is decoded: bound by the bytes
    per_clip = min(clip_bytes, math.prod(shape[1:])) if len(shape) == 5 and min(shape) > 0 else clip_bytes
    clips = clip_bytes // max(per_clip, 1)
    forward = min(clip_bytes, max_batch_size * per_clip)
    keys = SIGNATURE_BYTES_PER_VALUE * key_values + 4 * (1 + EMPIRICAL_SHIFTS) * key_values
    nbytes = MESSAGE_FACTOR * tensor_bytes + keys + FORWARD_BYTES_PER_VALUE * forward + REPLY_BYTES_PER_CLIP * clips
    return Charge(nbytes, f"clips: {clip_bytes} clip bytes, a key of {key_values} values, forward passes of {forward} clip values")


def check_worker_memory(fp: Footprint, limit_bytes: int) -> None:
    """Refuse (CodecLoopLimitError naming the step) a channel whose task would take a worker past
    ``limit_bytes`` (its base included)."""
    need = WORKER_BASE_BYTES + fp.task_bytes
    if need > limit_bytes:
        t, h, w = fp.shape
        raise CodecLoopLimitError(
            f"{fp.where}: {t} frames of {w}x{h} here; one clip task of this channel needs about {need / (1 << 20):.0f} MiB "
            f"in a codec worker, over the per-worker bound max_worker_memory_bytes = {limit_bytes} (docs/limits.md); "
            "use fewer or smaller frames"
        )


def worker_charge(footprints: list[Footprint], tasks: int, workers: int) -> Charge:
    """The codec-worker memory a request can hold at once: its largest task on every worker it can
    occupy (``min(workers, tasks)``), charged against the same budget as the request's own memory."""
    largest = max(footprints, key=lambda f: f.task_bytes)
    busy = max(1, min(workers, tasks))
    return Charge(busy * largest.task_bytes, f"{largest.where or 'carriers'}: {busy} codec workers x {largest.task_bytes} bytes per clip task")


class MemoryBudget:
    """The memory charged to the requests in progress, at most ``limit_bytes`` in all."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0

    @contextlib.contextmanager
    def reserve(self, charge: Charge, own: Charge | None = None) -> Iterator[None]:
        """Hold ``charge`` for the duration of the block, or refuse (CodecLoopLimitError) at once.
        ``own``: what the same request already holds (its message's charge, when ``charge`` is its
        worker charge): the two together are the request's need."""
        need = charge.nbytes + (own.nbytes if own is not None else 0)
        mib = need / (1 << 20)
        if need > self.limit_bytes:
            what = charge.what if own is None else f"{own.what}; {charge.what}"
            raise CodecLoopLimitError(
                f"{what}: this request needs {mib:.1f} MiB of server memory, over the server limit "
                f"max_request_memory_bytes = {self.limit_bytes}; send fewer or smaller tensors per call"
            )
        if self.held_bytes + charge.nbytes > self.limit_bytes:
            raise CodecLoopLimitError(
                f"server memory: requests in progress hold {self.held_bytes / (1 << 20):.1f} MiB, this request needs "
                f"{mib:.1f} MiB, limit max_request_memory_bytes = {self.limit_bytes}; retry later"
            )
        self.held_bytes += charge.nbytes
        try:
            yield
        finally:
            self.held_bytes -= charge.nbytes
