"""Every malformed request gets INVALID_ARGUMENT / RESOURCE_EXHAUSTED naming the field and range,
sent straight through gRPC (no SDK-side checks), and the server keeps serving afterwards."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from codecloop_wire.tensors import to_tensor
from codecloop_wire.v1 import codecloop_pb2 as pb
from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def sig(shape=(1, 112, 112, 3), value=0.5, dtype="float32") -> pb.Tensor:
    return to_tensor(np.full(shape, value, np.float32), dtype)


def request(**kw) -> pb.EvaluateRequest:
    kw.setdefault("candidates", [sig()])
    kw.setdefault("carriers", pb.Carriers(dataset=pb.DatasetCarriers(num_clips=2)))
    return pb.EvaluateRequest(**kw)


def truncated() -> pb.Tensor:
    t = sig()
    t.data = t.data[:-3]
    return t


def zero_scale() -> pb.Tensor:
    t = sig(dtype="int8")
    t.scale = 0.0
    return t


def ds(**kw) -> pb.Carriers:
    return pb.Carriers(dataset=pb.DatasetCarriers(**kw))


CASES = {
    "wrong shape": (request(candidates=[sig((1, 64, 64, 3))]), INVALID, r"candidates\[0\]\.shape.*\(16 or 1, 112, 112, 3\)"),
    "wrong T": (request(candidates=[sig((5, 112, 112, 3))]), INVALID, r"candidates\[0\]\.shape"),
    "wrong dtype": (request(candidates=[to_tensor(np.zeros((1, 112, 112, 3), np.uint8), "uint8")]), INVALID, r"candidates\[0\]\.dtype.*FLOAT32"),
    "unspecified dtype": (request(candidates=[pb.Tensor(shape=[1, 112, 112, 3], data=b"\0" * 150528)]), INVALID, r"candidates\[0\]\.dtype"),
    "byte length": (request(candidates=[truncated()]), INVALID, r"candidates\[0\]\.data: 150525 bytes.*needs exactly 150528"),
    "negative dim": (request(candidates=[pb.Tensor(shape=[1, -112, 112, 3], dtype=pb.FLOAT32)]), INVALID, r"candidates\[0\]\.shape"),
    "huge dims": (request(candidates=[pb.Tensor(shape=[1 << 40, 1 << 40, 3], dtype=pb.FLOAT32, data=b"x")]), INVALID, r"candidates\[0\]\.data"),
    "NaN": (request(candidates=[sig(), sig(value=np.nan)]), INVALID, r"candidates\[1\]: contains NaN or Inf"),
    "Inf": (request(candidates=[sig(value=np.inf)]), INVALID, r"candidates\[0\]: contains NaN or Inf"),
    "above 1": (request(candidates=[sig(value=1.5)]), INVALID, r"candidates\[0\]: values span \[1.5, 1.5\].*\[-1, 1\]"),
    "int8 scale 0": (request(candidates=[zero_scale()]), INVALID, r"candidates\[0\]\.scale"),
    "epsilon 0": (request(epsilon=0.0), INVALID, r"epsilon: 0.0 is outside the allowed range \(0, 1\]"),
    "epsilon negative": (request(epsilon=-0.1), INVALID, r"epsilon.*\(0, 1\]"),
    "epsilon > 1": (request(epsilon=1.5), INVALID, r"epsilon.*\(0, 1\]"),
    "epsilon NaN": (request(epsilon=float("nan")), INVALID, r"epsilon"),
    "unknown dataset": (request(carriers=ds(dataset="kinetics")), INVALID, r"carriers\.dataset: unknown dataset 'kinetics'.*embedded"),
    "unknown split": (request(carriers=ds(split="test", num_clips=2)), INVALID, r"carriers\.split: unknown split 'test'.*holdout"),
    "too many clips for split": (request(carriers=ds(split="holdout", num_clips=100)), INVALID, r"carriers\.num_clips: 100.*\[0, 72\].*\(0 = all 72\)"),
    "negative clips": (request(carriers=ds(num_clips=-1)), INVALID, r"carriers\.num_clips: -1.*\[0, 168\]"),
    "negative seed": (request(carriers=ds(num_clips=2, seed=-1)), INVALID, r"carriers\.dataset\.seed: -1 is outside the allowed range \[0, 9223372036854775807\]"),
    "unknown scorer": (request(scorer=pb.Scorer(name="oracle")), INVALID, r"scorer\.name: unknown scorer 'oracle'.*blind"),
    "unknown scorer param": (request(scorer=pb.Scorer(name="blind", params={"sigma": 1})), INVALID, r"scorer\.params: unknown parameter 'sigma'.*kernel"),
    "even kernel": (request(scorer=pb.Scorer(params={"kernel": 4})), INVALID, r"scorer\.params\['kernel'\]: 4.0 must be an odd integer"),
    "kernel range": (request(scorer=pb.Scorer(params={"kernel": 99})), INVALID, r"scorer\.params\['kernel'\]: 99.0 is outside the allowed range \[3, 15\]"),
    "unknown codec": (request(codecs=[pb.CodecSettings(codec="h266")]), INVALID, r"codecs\[0\]\.codec: unknown codec 'h266'"),
    "unknown preset": (request(codecs=[pb.CodecSettings(), pb.CodecSettings(preset="warp")]), INVALID, r"codecs\[1\]\.preset: unknown preset 'warp'"),
    "crf 52": (request(codecs=[pb.CodecSettings(crf=52)]), INVALID, r"codecs\[0\]\.crf: 52.*\[0, 51\]"),
    "crf -1": (request(codecs=[pb.CodecSettings(crf=-1)]), INVALID, r"codecs\[0\]\.crf: -1.*\[0, 51\]"),
    "pix_fmt": (request(codecs=[pb.CodecSettings(pix_fmt="yuv444p")]), INVALID, r"codecs\[0\]\.pix_fmt"),
    "gop 0": (request(codecs=[pb.CodecSettings(gop=0)]), INVALID, r"codecs\[0\]\.gop: 0.*\[1, 1000\]"),
    "duplicate codecs": (request(codecs=[pb.CodecSettings(), pb.CodecSettings(crf=28)]), INVALID, r"codecs, channels: the same codec settings"),
    "target_fpr 1.5": (request(decision=pb.DecisionRule(target_fpr=1.5)), INVALID, r"decision\.target_fpr: 1.5.*\[0, 1\)"),
    "threshold NaN": (request(decision=pb.DecisionRule(threshold=float("nan"))), INVALID, r"decision\.threshold"),
    "empty population": (request(candidates=[]), INVALID, r"candidates: the population is empty; send 1 to 256"),
    "inline clips float": (request(carriers=pb.Carriers(clips=sig((1, 2, 32, 32, 3)))), INVALID, r"carriers\.clips\.dtype.*UINT8"),
    "inline clips odd": (
        request(carriers=pb.Carriers(clips=to_tensor(np.zeros((1, 2, 33, 32, 3), np.uint8), "uint8"))),
        INVALID,
        r"carriers\.clips\.shape: H x W = 33x32 must be even",
    ),
    "too many candidates": (request(candidates=[sig(dtype="int8")] * 257), EXHAUSTED, r"candidates: 257 exceeds the server limit max_candidates = 256"),
    "too many clips": (request(carriers=ds(num_clips=600)), EXHAUSTED, r"carriers\.num_clips: 600 exceeds the server limit max_clips = 512"),
    "too much work": (
        request(candidates=[sig(dtype="int8")] * 200, carriers=ds(num_clips=168)),
        EXHAUSTED,
        r"max_work_pixels = 2147483648",
    ),
    "too many codecs": (request(codecs=[pb.CodecSettings(crf=c) for c in range(9)]), EXHAUSTED, r"codecs: 9 settings exceed the server limit max_codecs = 8"),
}


@pytest.fixture(scope="module")
def stub(server_target):
    channel = grpc.insecure_channel(server_target, options=[("grpc.max_send_message_length", 256 << 20)])
    yield pb_grpc.CodecLoopStub(channel)
    channel.close()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_rejected_with_field_and_range(stub, name):
    req, code, pattern = CASES[name]
    with pytest.raises(grpc.RpcError) as info:
        stub.EvaluateSignature(req, timeout=60)
    assert info.value.code() == code, info.value.details()
    assert info.value.details() is not None
    import re

    assert re.search(pattern, info.value.details()), info.value.details()


def test_clip_pixel_limit(stub):
    big = np.zeros((1, 64, 512, 514, 3), np.uint8)  # 64*512*514 > 64*512*512 pixels, 50 MiB
    req = request(carriers=pb.Carriers(clips=to_tensor(big, "uint8")))
    with pytest.raises(grpc.RpcError) as info:
        stub.EvaluateSignature(req, timeout=60)
    assert info.value.code() == EXHAUSTED
    assert "max_clip_pixels = 16777216" in info.value.details()


def test_message_over_size_limit(stub):
    req = request(candidates=[sig((16, 112, 112, 3))] * 30)  # 69 MiB > 64 MiB
    with pytest.raises(grpc.RpcError) as info:
        stub.EvaluateSignature(req, timeout=60)
    assert info.value.code() == EXHAUSTED
    assert "larger than max" in info.value.details()


def test_transcode_bad_signature(stub):
    req = pb.TranscodeRequest(carriers=ds(num_clips=1), signature=sig((1, 8, 8, 3)))
    with pytest.raises(grpc.RpcError) as info:
        stub.Transcode(req, timeout=60)
    assert info.value.code() == INVALID and "signature.shape" in info.value.details()


def test_server_still_serves_after_bad_input(stub):
    """Run last in this module: every rejection above left the server healthy."""
    from tests.conftest import block_signature

    reply = stub.EvaluateSignature(request(candidates=[to_tensor(block_signature(0))]), timeout=120)
    assert len(reply.results) == 1 and reply.results[0].fitness > 0


def test_sdk_raises_typed_errors(client):
    import codecloop

    with pytest.raises(codecloop.CodecLoopValueError, match="epsilon"):
        client.fitness(np.zeros((1, 1, 112, 112, 3), np.float32), epsilon=2.0)
    with pytest.raises(codecloop.CodecLoopLimitError, match="max_clips"):
        client.fitness(np.zeros((1, 1, 112, 112, 3), np.float32), carriers=codecloop.DatasetCarriers(num_clips=1000))
    with pytest.raises(codecloop.CodecLoopValueError, match=r"sig\[None\]"):
        client.fitness(np.zeros((1, 112, 112, 3), np.float32))
