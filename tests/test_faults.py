"""Faults: a codec worker killed with SIGKILL mid-request, and hypothesis fuzzing of whole requests
sent through real gRPC (random shapes, dtypes, byte lengths, NaNs, huge dims, garbage bytes)."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import codecloop
from codecloop import Codec, DatasetCarriers
from codecloop.v1 import codecloop_pb2 as pb
from codecloop.v1 import codecloop_pb2_grpc as pb_grpc
from tests.conftest import _start_server, block_signature

CLEAN_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_killed_worker_is_replaced_and_the_request_completes(client):
    proc, target = _start_server(["--workers", "2", "--result-cache-entries", "0"])
    sigs = np.stack([block_signature(s, block=4) for s in (71, 72, 73, 74)])
    kw = {"carriers": DatasetCarriers(num_clips=8, seed=2), "codecs": Codec(preset="medium"), "per_clip_scores": True}
    try:
        with codecloop.Client(target, timeout=300) as c:
            outcome = {}
            thread = threading.Thread(target=lambda: outcome.update(res=c.evaluate(sigs, **kw)))
            thread.start()
            while c.info().load.get("tasks_in_flight", 0) == 0:
                time.sleep(0.01)
            workers = [p for p in children(proc.pid) if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()]
            assert len(workers) >= 2
            os.kill(workers[0], signal.SIGKILL)
            thread.join(300)
            load = c.info().load
            assert load["worker_restarts"] == 1
            after = c.evaluate(block_signature(75)[None], **kw)  # the new pool serves the next request
        reference = client.evaluate(sigs, **kw)  # another server that lost no worker
        for got, want in zip(outcome["res"].candidates, reference.candidates):
            np.testing.assert_array_equal(got.codecs[0].poisoned_scores, want.codecs[0].poisoned_scores)
            np.testing.assert_array_equal(got.codecs[0].clean_scores, want.codecs[0].clean_scores)
        assert len(after.candidates) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


dims = st.lists(st.one_of(st.integers(-3, 130), st.sampled_from([2**31, 2**40, 2**62])), max_size=6)
tensors = st.builds(
    lambda shape, dtype, data, scale: pb.Tensor(shape=shape, dtype=dtype, data=data, scale=scale),
    dims,
    st.integers(0, 6),
    st.binary(max_size=4096) | st.sampled_from([np.full((1, 16, 16, 3), np.nan, np.float32).tobytes()]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)
requests = st.builds(
    lambda cands, eps, crf, preset, num, scorer, fpr, clips: pb.EvaluateRequest(
        candidates=cands,
        epsilon=eps,
        codecs=[pb.CodecSettings(crf=crf, preset=preset)],
        carriers=pb.Carriers(clips=clips) if clips is not None else pb.Carriers(dataset=pb.DatasetCarriers(dataset="tiny", num_clips=num)),
        scorer=pb.Scorer(name=scorer),
        decision=pb.DecisionRule(target_fpr=fpr),
    ),
    st.lists(tensors, max_size=3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-10, 70) | st.just(math.nan),
    st.sampled_from(["ultrafast", "medium", "nosuch", ""]),
    st.integers(-5, 10),
    st.sampled_from(["blind", "informed", "nosuch"]),
    st.floats(allow_nan=True),
    st.none() | tensors,
)


@pytest.fixture(scope="module")
def raw_channel(server_target):
    with grpc.insecure_channel(server_target) as channel:
        yield channel


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(req=requests)
def test_fuzzed_requests_get_clean_statuses(raw_channel, req):
    stub = pb_grpc.CodecLoopStub(raw_channel)
    for call in (stub.EvaluateSignature, stub.Transcode):
        msg = req if call is stub.EvaluateSignature else pb.TranscodeRequest(carriers=req.carriers, epsilon=req.epsilon,
                                                                          signature=req.candidates[0] if req.candidates else None)  # fmt: skip
        try:
            call(msg, timeout=120)
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()
            assert err.details(), "an error status without a message"
        assert code in CLEAN_CODES, f"{code}: {req}"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=2048))
def test_garbage_bytes_never_crash_the_server(raw_channel, garbage):
    call = raw_channel.unary_unary("/codecloop.v1.CodecLoop/EvaluateSignature")  # raw bytes, no serializer
    try:
        call(garbage, timeout=60)
    except grpc.RpcError as err:
        # bytes that are not an EvaluateRequest get INVALID_ARGUMENT naming the problem; bytes that
        # parse (unknown fields are legal protobuf) are validated as usual
        assert err.code() in CLEAN_CODES, err
        assert err.details()
    assert pb_grpc.CodecLoopStub(raw_channel).GetServerInfo(pb.GetServerInfoRequest(), timeout=30).workers == 2


def test_undecodable_request_is_invalid_argument(raw_channel):
    for method in ("EvaluateSignature", "Transcode", "GetServerInfo"):
        with pytest.raises(grpc.RpcError) as info:
            raw_channel.unary_unary(f"/codecloop.v1.CodecLoop/{method}")(b"\x00", timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"not a valid protobuf message for /codecloop.v1.CodecLoop/{method}" in info.value.details()
    stream = raw_channel.unary_stream("/codecloop.v1.CodecLoop/EvaluateSignatureStream")(b"\xff\xff", timeout=30)
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_per_client_call_limit():
    proc, target = _start_server(["--workers", "1", "--max-client-calls", "1"])
    small = {"carriers": DatasetCarriers(num_clips=2), "codecs": Codec(preset="ultrafast")}
    try:
        with codecloop.Client(target, client_id="greedy", timeout=120) as greedy, codecloop.Client(target, client_id="polite") as polite:
            assert greedy.info().limits.max_client_calls == 1
            stream = greedy.evaluate_stream(np.stack([block_signature(s) for s in range(80, 96)]), carriers=DatasetCarriers(num_clips=16))
            next(stream)  # the first call is in progress (its first progress event arrived)
            with pytest.raises(codecloop.CodecLoopLimitError, match="client 'greedy': 1 calls in progress, per-client limit max_client_calls = 1"):
                greedy.evaluate(block_signature(97)[None], **small)
            assert len(polite.evaluate(block_signature(98)[None], **small).candidates) == 1  # others are served
            stream.close()  # leaving the stream cancels it and frees the slot
            deadline = time.monotonic() + 60
            while True:
                try:
                    assert len(greedy.evaluate(block_signature(99)[None], **small).candidates) == 1
                    break
                except codecloop.CodecLoopLimitError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
