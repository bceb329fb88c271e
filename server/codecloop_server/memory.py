"""What a request may cost in server memory, and the budget that admits requests against it.

Every Evaluate / Transcode request is charged, before anything in it is decoded, an upper bound of
the memory the server process allocates for it (the gRPC message itself included), from the sizes
in the message alone:

    Evaluate:  SIGNATURE_BYTES_PER_VALUE x (values of all candidates)
               + MESSAGE_FACTOR x (bytes of all tensors in the message)
    Transcode: SIGNATURE_BYTES_PER_VALUE x (values of the signature)
               + MESSAGE_FACTOR x (bytes of all tensors in the message)
               + REPLY_FACTOR x (bytes of the reply's clips: N x T x H x W x 3, twice with include_input)

Why these factors (per float value of a signature: the float32 job copy 4 + its shared-memory copy
4 + the float64 template in shared memory 8, plus the transient float64 copies made while one
template is built; per message byte: the message, the copy that decoding a tensor makes, the shared
copy of inline clips; per reply byte: the decoded clips, their bytes, the reply message, its
serialized form) is in the README's "Memory bound"; the bound is tested in tests/test_faults_redteam.py
and its measurement is in docs/benchmarks.md. The sum of the charges of the requests in progress never
exceeds ``max_request_memory_bytes``: a request that would go over is refused at once with
RESOURCE_EXHAUSTED naming the limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from codecloop_server.corpus import Dataset
from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopLimitError
from codecloop_wire.v1 import codecloop_pb2 as pb

SIGNATURE_BYTES_PER_VALUE = 24
MESSAGE_FACTOR = 6
REPLY_FACTOR = 6
_ITEMSIZE = {pb.FLOAT32: 4, pb.FLOAT16: 2, pb.INT8: 1, pb.UINT8: 1}


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


class MemoryBudget:
    """The memory charged to the requests in progress, at most ``limit_bytes`` in all."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0

    @contextlib.contextmanager
    def reserve(self, charge: Charge) -> Iterator[None]:
        """Hold ``charge`` for the duration of the block, or refuse (CodecLoopLimitError) at once."""
        mib = charge.nbytes / (1 << 20)
        if charge.nbytes > self.limit_bytes:
            raise CodecLoopLimitError(
                f"{charge.what}: this request needs {mib:.1f} MiB of server memory, over the server limit "
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
