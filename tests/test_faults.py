"""Faults: a codec worker killed with SIGKILL mid-request, and hypothesis fuzzing of whole calls
sent through real gRPC (every method and field, random shapes, dtypes, byte lengths, NaNs, huge
dims, int64 seeds, CRFs as any double, deadlines down to 1 ms, client cancellations, garbage bytes)."""

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
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import codecloop
from codecloop import Codec, DatasetCarriers
from codecloop_wire.tensors import to_tensor
from codecloop_wire.v1 import codecloop_pb2 as pb
from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc
from tests.conftest import _start_server, block_signature

CLEAN_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
FUZZ_CODES = CLEAN_CODES | {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


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
doubles = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 51.0, 28.5, 1e-300, -1e-300, 51.000001])
int32s = st.integers(-(2**31), 2**31 - 1) | st.integers(-2, 300)
int64s = st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 3)


class Fields:
    """Draws each field of one call either from its valid values only, or (in one call of three)
    from valid or arbitrary values: enough calls pass validation to exercise the engine, the
    scheduler and cancellation, and every field is still fuzzed."""

    def __init__(self, draw) -> None:
        self.draw = draw
        self.valid_only = draw(st.sampled_from([True, True, False]))

    def __call__(self, valid: st.SearchStrategy, anything: st.SearchStrategy):
        return self.draw(valid if self.valid_only else valid | anything)


def signature_tensor(pick: Fields, shape: tuple[int, int, int]) -> pb.Tensor:
    """A signature for carriers of ``shape`` (T, H, W), or a tensor of any shape, dtype and length."""
    if not pick(st.just(True), st.just(False)):
        return pick.draw(tensors)
    t = pick.draw(st.sampled_from([1, shape[0]]))
    value = pick(st.floats(-1, 1), st.sampled_from([1.5, -7.0, math.nan, math.inf]))
    dtype = pick.draw(st.sampled_from(["float32", "float16", "int8"]))
    with np.errstate(invalid="ignore"):  # int8 of NaN: whatever it packs, the server must refuse or serve it
        return to_tensor(np.full((t, *shape[1:], 3), value, np.float32), dtype)


def carriers(pick: Fields) -> tuple[pb.Carriers, tuple[int, int, int]]:
    """Dataset carriers (every field present or absent; any split, count, int64 seed) or inline
    clips (small ones, odd or tiny frames, or any tensor), and the (T, H, W) signatures must match."""
    kind = pick(st.sampled_from(["tiny", "tiny", "embedded", "inline"]), st.sampled_from(["nosuch", "garbage"]))
    if kind == "inline":
        n, t = pick.draw(st.integers(1, 3)), pick.draw(st.integers(1, 4))
        h, w = pick(st.sampled_from([16, 18, 32]), st.sampled_from([14, 17])), pick(st.sampled_from([16, 32, 48]), st.just(15))
        clips = np.random.default_rng(pick.draw(st.integers(0, 3))).integers(0, 256, (n, t, h, w, 3), dtype=np.uint8)
        return pb.Carriers(clips=to_tensor(clips, "uint8")), (t, h, w)
    if kind == "garbage":
        return pb.Carriers(clips=pick.draw(tensors)), (1, 16, 16)
    fields = {
        "dataset": kind,
        "num_clips": pick(st.integers(1, 3), st.integers(-3, 5) | st.sampled_from([600, 2**31 - 1])),
        "seed": pick(st.integers(0, 2**63 - 1), int64s),
        "split": pick(st.just("train"), st.sampled_from(["holdout", "test", ""])),
    }
    shown = {k: v for k, v in fields.items() if pick.draw(st.booleans())}  # every field may also be absent
    return pb.Carriers(dataset=pb.DatasetCarriers(**shown)), ((8, 32, 48) if kind == "tiny" else (16, 112, 112))


def codec_settings(pick: Fields) -> pb.CodecSettings:
    fields = {
        "crf": pick(st.floats(0, 51), doubles),
        "preset": pick(st.sampled_from(["ultrafast", "veryfast", "medium", "slow"]), st.sampled_from(["nosuch", "", "placebo"])),
        "gop": pick(st.integers(1, 1000), int32s),
        "fps": pick(st.integers(1, 240), int32s),
        "pix_fmt": pick(st.just("yuv420p"), st.just("yuv444p")),
        "codec": pick(st.just("libx264"), st.just("libx265")),
    }
    return pb.CodecSettings(**{k: v for k, v in fields.items() if pick.draw(st.booleans())})


@st.composite
def calls(draw) -> tuple[str, object, float, float | None, tuple[tuple[str, str], ...]]:
    """(method, request, deadline s, cancel after s or None, metadata) over the whole request surface."""
    pick = Fields(draw)
    carrier, shape = carriers(pick)
    method = draw(st.sampled_from(["EvaluateSignature", "EvaluateSignatureStream", "Transcode"]))
    epsilon = {"epsilon": pick(st.floats(0, 1, exclude_min=True), doubles)} if draw(st.booleans()) else {}
    if method == "Transcode":
        sig = {"signature": signature_tensor(pick, shape)} if draw(st.booleans()) else {}
        req = pb.TranscodeRequest(carriers=carrier, codec=codec_settings(pick), include_input=draw(st.booleans()), **sig, **epsilon)
    else:
        rule = draw(st.sampled_from(["target_fpr", "threshold", None]))
        req = pb.EvaluateRequest(
            candidates=[signature_tensor(pick, shape) for _ in range(pick(st.integers(1, 3), st.just(0)))],
            codecs=[codec_settings(pick) for _ in range(pick(st.integers(0, 2), st.integers(3, 9)))],
            carriers=carrier,
            scorer=pb.Scorer(
                name=pick(st.sampled_from(["blind", "informed", "example", "keyless"]), st.just("nosuch")),
                params=pick(st.just({}), st.dictionaries(st.sampled_from(["kernel", "sigma"]), doubles, max_size=2)),
            ),
            decision=pb.DecisionRule(**({rule: pick(st.floats(0, 0.99), doubles)} if rule else {})),
            per_clip_scores=draw(st.booleans()),
            **epsilon,
        )
    deadline = draw(st.sampled_from([0.001, 0.05, 0.3, 2.0, 30.0]))
    cancel_after = draw(st.none() | st.sampled_from([0.0, 0.02, 0.2]))
    entries = st.lists(st.tuples(st.sampled_from(["priority", "client-id"]), st.sampled_from(["0", "100", "-7", "fuzz", "101", "x"])), max_size=2)
    metadata = tuple(pick(st.just([]) | st.just([("client-id", "fuzz"), ("priority", "-7")]), entries))
    return method, req, deadline, cancel_after, metadata


@pytest.fixture(scope="module")
def raw_channel(server_target):
    with grpc.insecure_channel(server_target) as channel:
        yield channel


def _status(method, call, cancel_after: float | None) -> tuple[grpc.StatusCode, str]:
    """Run a started call to its end, cancelling it after ``cancel_after`` s; (code, details)."""
    try:
        if cancel_after is not None:
            time.sleep(cancel_after)
            call.cancel()
        if method == "EvaluateSignatureStream":
            list(call)
        else:
            call.result()
        return grpc.StatusCode.OK, "ok"
    except grpc.RpcError as err:
        return err.code(), err.details()
    except grpc.FutureCancelledError:
        return grpc.StatusCode.CANCELLED, "cancelled by the test"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(call=calls())
def test_fuzzed_calls_get_clean_statuses(raw_channel, call):
    """Every method, every field (seeds, CRFs as arbitrary doubles, presets, shapes, epsilons,
    scorers, metadata), with deadlines down to 1 ms and client cancellations: only OK,
    INVALID_ARGUMENT, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED or CANCELLED, always with a message."""
    method, req, deadline, cancel_after, metadata = call
    stub = pb_grpc.CodecLoopStub(raw_channel)
    rpc = getattr(stub, method)
    started = rpc(req, timeout=deadline, metadata=metadata) if method == "EvaluateSignatureStream" else rpc.future(req, timeout=deadline, metadata=metadata)
    code, details = _status(method, started, cancel_after)
    assert code in FUZZ_CODES, f"{code} {details!r}: {method} {req}"
    assert details, f"{code} without a message"


def test_fuzzing_left_nothing_held(raw_channel):
    """Run after the fuzz: once idle, no request holds a call slot, memory charge or clean entry."""
    stub = pb_grpc.CodecLoopStub(raw_channel)
    deadline = time.monotonic() + 120
    while True:
        load = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).load
        if load["queued_tasks"] == 0 and load["tasks_in_flight"] == 0 and load["calls_in_progress"] == 0:
            break
        assert time.monotonic() < deadline, dict(load)
        time.sleep(0.1)
    assert load["clean_cache_held"] == 0 and load["request_memory_bytes"] == 0, dict(load)


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


# --- channels: steps, sizes, rates, codecs and rate modes, against the per-worker memory bound -----

FUZZ_WORKER_MIB = 768  # a small bound: both sides of it are reached in a few examples
CHANNEL_CODECS = {  # fast presets only: the fuzz is about sizes and rates, not encoder speed
    "libx264": ["ultrafast", "superfast"],
    "libx265": ["ultrafast"],
    "libvpx-vp9": ["8"],
    "libsvtav1": ["12", "13"],
}


@st.composite
def channel_steps(draw) -> pb.Channel:
    """A channel of 1 to 4 steps: resizes (any legal side, or a scale), crops, frame rates, encodes of
    the four codecs in crf / qp / bitrate mode (qp for vp9 and bitrate under 64 px included: both are
    refused), with an input frame rate; sides up to 8192 and rates up to 240 make work of any size."""
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["resize", "scale", "crop", "fps", "encode", "encode"]))
        if kind == "resize":
            side = st.sampled_from([2, 16, 18, 48, 62, 64, 112, 496, 1024, 2048, 4096, 8192]) | st.integers(8, 400).map(lambda v: 2 * v)
            steps.append(pb.ChannelStep(resize=pb.ResizeStep(width=draw(side), height=draw(side))))
        elif kind == "scale":
            steps.append(pb.ChannelStep(resize=pb.ResizeStep(scale=draw(st.sampled_from([0.5, 0.75, 2.0, 4.0]) | st.floats(0.05, 4)))))
        elif kind == "crop":
            x, y = draw(st.sampled_from([0, 2, 8])), draw(st.sampled_from([0, 2, 8]))
            w, h = draw(st.sampled_from([16, 24, 1, 120])), draw(st.sampled_from([16, 24, 3]))
            steps.append(pb.ChannelStep(crop=pb.CropStep(x=x, y=y, width=w, height=h)))
        elif kind == "fps":
            steps.append(pb.ChannelStep(frame_rate=pb.FrameRateStep(fps=draw(st.sampled_from([1, 5, 15, 30, 60, 240])))))
        else:
            codec = draw(st.sampled_from(sorted(CHANNEL_CODECS)))
            mode = draw(st.sampled_from(["crf", "qp", "bitrate_kbps", None]))
            rate = {"crf": {"crf": 35.0}, "qp": {"qp": 30}, "bitrate_kbps": {"bitrate_kbps": draw(st.sampled_from([50, 400]))}, None: {}}[mode]
            steps.append(pb.ChannelStep(encode=pb.CodecSettings(codec=codec, preset=draw(st.sampled_from(CHANNEL_CODECS[codec])), **rate)))
    if not any(s.HasField("encode") for s in steps):
        steps.append(pb.ChannelStep(encode=pb.CodecSettings(preset="ultrafast")))
    return pb.Channel(steps=steps, input_fps=draw(st.sampled_from([1, 15, 25, 60])))


@pytest.fixture(scope="module")
def small_worker_server():
    proc, target = _start_server(["--workers", "1", "--max-worker-memory-mib", str(FUZZ_WORKER_MIB), "--result-cache-entries", "0"])
    try:
        with grpc.insecure_channel(target) as channel:
            yield proc, pb_grpc.CodecLoopStub(channel)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(channel=channel_steps(), transcode=st.booleans())
@example(  # over the worker bound: RESOURCE_EXHAUSTED naming the step
    channel=pb.Channel(steps=[pb.ChannelStep(resize=pb.ResizeStep(width=4096, height=4096)), pb.ChannelStep(encode=pb.CodecSettings(preset="ultrafast"))]),
    transcode=False,
)
@example(  # 1920 frames of 496 x 16: once past FFmpeg's image limit in one conversion
    channel=pb.Channel(
        steps=[pb.ChannelStep(frame_rate=pb.FrameRateStep(fps=240)), pb.ChannelStep(resize=pb.ResizeStep(width=496, height=16)),
               pb.ChannelStep(encode=pb.CodecSettings(preset="ultrafast"))],
        input_fps=1,
    ),
    transcode=True,
)  # fmt: skip
@example(  # SVT-AV1 bitrate mode under 64 px: INVALID_ARGUMENT
    channel=pb.Channel(steps=[pb.ChannelStep(resize=pb.ResizeStep(scale=0.5)), pb.ChannelStep(encode=pb.CodecSettings(codec="libsvtav1", bitrate_kbps=150))]),
    transcode=False,
)
@example(  # close to the bound, admitted: the worker's peak is measured
    channel=pb.Channel(
        steps=[pb.ChannelStep(resize=pb.ResizeStep(width=1200, height=1200)), pb.ChannelStep(encode=pb.CodecSettings(codec="libx265", preset="ultrafast"))]
    ),
    transcode=True,
)
def test_fuzzed_channels_get_clean_statuses_within_the_worker_bound(small_worker_server, channel, transcode):
    """Every channel is answered OK, INVALID_ARGUMENT or RESOURCE_EXHAUSTED (never INTERNAL: no
    library limit reached, no encoder refusing its settings), and the worker's peak RSS stays under
    the server's --max-worker-memory-mib."""
    proc, stub = small_worker_server
    clips = np.random.default_rng(0).integers(0, 256, (1, 8, 32, 32, 3), dtype=np.uint8)
    carriers = pb.Carriers(clips=to_tensor(clips, "uint8"))
    try:
        if transcode:
            stub.Transcode(pb.TranscodeRequest(carriers=carriers, channel=channel), timeout=300)
        else:
            sig = to_tensor(np.zeros((1, 32, 32, 3), np.float32))
            stub.EvaluateSignature(pb.EvaluateRequest(candidates=[sig], channels=[channel], carriers=carriers), timeout=300)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        code, details = err.code(), err.details()
    assert code in CLEAN_CODES, f"{code} {details!r}: {channel}"
    workers = [p for p in children(proc.pid) if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()]
    for pid in workers:
        peak = int(next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:")).split()[1]) * 1024
        assert peak <= FUZZ_WORKER_MIB << 20, f"worker peak {peak >> 20} MiB after {channel}"
