"""Faults an outside red-team tester found (gRPC on loopback, one worker), each reproduced against a
real server: cancellation must free clean-cache pins, queued clean encodes and shared memory only
once nothing uses them; inline clips are shared once per request; a per-request memory charge is
enforced at admission and holds for the largest allowed request (RSS measured); a hung or stopped
worker is replaced and never blocks shutdown; a Transcode reply too large is refused before any
encode; negative seeds are INVALID_ARGUMENT.

Where a test needs work to be queued but not yet run, it stops the only worker with SIGSTOP (the
scheduler keeps queueing; nothing runs until SIGCONT), so nothing here depends on timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path

import grpc
import numpy as np
import pytest

import codecloop
from codecloop import Codec, DatasetCarriers
from codecloop_wire.tensors import to_tensor
from codecloop_wire.v1 import codecloop_pb2 as pb
from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc
from tests.conftest import _start_server, block_signature
from tests.test_faults import children

MIB = 1 << 20
CLEAN_ENTRY_BYTES = 16 * 112 * 112 * 3 * 2 + 112 * 112 * 3 * 8  # int16 features + int64 time sums


class Server:
    """A ``codecloop serve`` process with one worker, a raw stub and a few /proc readings."""

    def __init__(self, *extra: str) -> None:
        self.proc, self.target = _start_server(["--workers", "1", *extra])
        self.channel = grpc.insecure_channel(
            self.target, options=[("grpc.max_send_message_length", 256 * MIB), ("grpc.max_receive_message_length", 256 * MIB)]
        )
        self.stub = pb_grpc.CodecLoopStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)

    def load(self) -> dict[str, float]:
        return dict(self.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).load)

    def worker(self) -> int:
        pids = [p for p in children(self.proc.pid) if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(pids) == 1, pids
        return pids[0]

    def wait(self, condition, what: str, timeout: float = 120.0) -> dict[str, float]:
        """Poll GetServerInfo's load until ``condition(load)``."""
        deadline = time.monotonic() + timeout
        while not condition(load := self.load()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {load}"
            time.sleep(0.05)
        return load

    def idle(self) -> dict[str, float]:
        return self.wait(lambda x: x["queued_tasks"] == 0 and x["tasks_in_flight"] == 0, "an idle server")

    def shared_segments(self) -> int:
        """Shared-memory segments the server process has mapped (it maps every one it created until
        freed), not counting the clean cache's (two per 16x112x112 entry: features and time sums)."""
        mapped = {line.split()[-1] for line in Path(f"/proc/{self.proc.pid}/maps").read_text().splitlines() if "/psm_" in line}
        return len(mapped) - round(2 * self.load()["clean_cache_bytes"] / CLEAN_ENTRY_BYTES)

    def status_mib(self, field: str) -> float:
        line = next(x for x in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines() if x.startswith(field + ":"))
        return int(line.split()[1]) / 1024


def evaluate_request(crf: float = 28.0, num_clips: int = 8, preset: str = "ultrafast", seed: int = 0, **kw) -> pb.EvaluateRequest:
    kw.setdefault("carriers", pb.Carriers(dataset=pb.DatasetCarriers(num_clips=num_clips, seed=seed)))
    kw.setdefault("candidates", [to_tensor(block_signature(3))])
    return pb.EvaluateRequest(codecs=[pb.CodecSettings(crf=crf, preset=preset)], **kw)


@pytest.fixture()
def server(request):
    srv = Server(*request.param)
    yield srv
    srv.close()


# --- 1, 2: the clean cache's byte bound under cancellation ------------------------------------


@pytest.mark.parametrize("server", [("--clean-cache-mib", "8", "--result-cache-entries", "0")], indirect=True)
def test_clean_cache_bound_holds_under_cancellation(server):
    """Requests cancelled by their deadline while their clean entries (a new CRF each: new keys)
    are computed must leave no pinned entry and no cache over its bound, then or later."""
    bound = 8 * MIB
    for i in range(12):  # 12 x 8 new clean entries of 1.5 MiB each: 144 MiB if nothing were freed
        try:
            server.stub.EvaluateSignature(evaluate_request(crf=20 + i * 0.37), timeout=0.15)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
    load = server.idle()
    assert load["clean_cache_bytes"] <= bound, load
    assert load.get("clean_cache_held") == 0, load
    for i in range(10):  # requests that complete: every one leaves the cache within its bound
        server.stub.EvaluateSignature(evaluate_request(crf=40 + i * 0.37, num_clips=2), timeout=120)
        load = server.load()
        assert load["clean_cache_bytes"] <= bound and load.get("clean_cache_held") == 0, load


# --- 7: cancelled requests' clean encodes never run -------------------------------------------


@pytest.mark.parametrize("server", [("--result-cache-entries", "0", "--max-client-calls", "32")], indirect=True)
def test_cancelled_streams_run_none_of_their_clean_encodes(server):
    segments = server.shared_segments()
    before = server.load().get("clean_encodes", 0)
    worker = server.worker()
    os.kill(worker, signal.SIGSTOP)  # nothing runs: every clean task of the streams below stays queued
    try:
        calls = [server.stub.EvaluateSignatureStream(evaluate_request(crf=10 + i * 0.5), timeout=300) for i in range(20)]
        for call in calls:
            next(call)  # "started": the call is in progress
        # 160 clean tasks: one was handed to the stopped worker, one waits for it, the rest are queued
        server.wait(lambda x: x["queued_tasks"] == 20 * 8 - 2, "160 queued clean tasks")
        for call in calls:
            call.cancel()
        load = server.wait(lambda x: x["queued_tasks"] == 0, "the cancelled tasks to be dropped")
        assert load.get("clean_cache_held") == 0
    finally:
        os.kill(worker, signal.SIGCONT)
    load = server.idle()
    # only the task the worker had already received ran; the one waiting for it was withdrawn
    assert load.get("clean_encodes", 0) - before <= 1, load
    assert server.wait(lambda x: server.shared_segments() == segments, "the streams' shared memory to be freed")


# --- 3: an inline request resent right after its deadline ---------------------------------------


@pytest.mark.parametrize("server", [("--result-cache-entries", "0",)], indirect=True)
def test_inline_request_resent_after_deadline_and_joined_by_another(server):
    """A: inline clips, 1 s deadline; B: the same clips, sent while A waits (B shares A's clean
    work, which reads A's clips); C: A resent after A's deadline. Nothing may read freed memory."""
    segments = server.shared_segments()
    clips = np.random.default_rng(5).integers(0, 256, (6, 16, 112, 112, 3), dtype=np.uint8)
    req = evaluate_request(preset="medium", carriers=pb.Carriers(clips=to_tensor(clips, "uint8")))
    worker = server.worker()
    os.kill(worker, signal.SIGSTOP)
    results: dict[str, object] = {}

    def send(name: str, timeout: float) -> None:
        try:
            results[name] = server.stub.EvaluateSignature(req, timeout=timeout)
        except grpc.RpcError as err:
            results[name] = err

    try:
        a = threading.Thread(target=send, args=("A", 1.0))
        a.start()
        server.wait(lambda x: x["clean_cache_misses"] == 6, "A to ask for its 6 clean entries")
        b = threading.Thread(target=send, args=("B", 300))
        b.start()
        server.wait(lambda x: x["clean_cache_hits"] == 6, "B to join A's clean work")
        a.join()
        assert results["A"].code() == grpc.StatusCode.DEADLINE_EXCEEDED
        c = threading.Thread(target=send, args=("C", 300))
        c.start()
        server.wait(lambda x: x["clean_cache_hits"] == 12, "C to join the same clean work")
    finally:
        os.kill(worker, signal.SIGCONT)
    b.join()
    c.join()
    for name in "BC":
        assert isinstance(results[name], pb.EvaluateResponse), f"{name}: {results[name]}"
    assert results["B"].results[0].fitness == results["C"].results[0].fitness
    server.idle()
    assert server.wait(lambda x: server.shared_segments() == segments, "every request's shared memory to be freed")


# --- 4: inline clips are shared once per request, not copied per task ------------------------


def test_a_task_copies_only_its_own_inline_clip():
    """Reading clip i of a request's inline (N, T, H, W, 3) clips allocates one clip, not N."""
    from codecloop_server.shm import SharedArray
    from codecloop_server.tasks import ClipRef

    clips = np.random.default_rng(0).integers(0, 256, (64, 16, 48, 48, 3), dtype=np.uint8)
    shared = SharedArray(clips)
    try:
        tracemalloc.start()
        loaded = ClipRef(shared.ref, 37).load()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        np.testing.assert_array_equal(loaded, clips[37])
        assert peak < 2 * clips[0].nbytes, f"loading one clip allocated {peak} bytes; one clip is {clips[0].nbytes}"
    finally:
        shared.release()


# --- 5: the memory charged at admission holds ----------------------------------------------------


def int8_population(n: int, first: int = 0) -> list[pb.Tensor]:
    """``n`` distinct INT8 signatures (16, 112, 112, 3), numbered from ``first``."""
    base = block_signature(9, block=4, shape=(16, 112, 112))
    return [to_tensor(np.roll(base, i, axis=2), "int8") for i in range(first, first + n)]


@pytest.mark.parametrize("server", [("--max-request-memory-mib", "1024",)], indirect=True)
def test_memory_bound_holds_for_the_largest_allowed_request(server):
    """With --max-request-memory-mib 1024: the largest INT8 T=16 population the charge admits is
    served and raises the server's peak RSS by less than its charge; one more candidate, and the
    red team's 63 MiB request (111 candidates), are refused before anything is decoded; while the
    largest one is in progress, a second one is refused too."""
    from codecloop_server import memory
    from codecloop_server.channels import Channel
    from codecloop_server.codecs import CodecSettings

    # besides the message's charge, the request is charged its clip tasks' worker memory (docs/limits.md)
    worker = memory.worker_charge([memory.channel_footprint(Channel.of(CodecSettings(preset="ultrafast")), (16, 112, 112), "")], 1, 1).nbytes
    per_candidate = memory.evaluate_charge(evaluate_request(candidates=int8_population(1))).nbytes
    largest = (1024 * MIB - worker) // per_candidate
    req = evaluate_request(candidates=int8_population(largest), num_clips=1)
    charge = memory.evaluate_charge(req).nbytes + worker
    assert charge <= 1024 * MIB < memory.evaluate_charge(evaluate_request(candidates=int8_population(largest + 1))).nbytes + worker
    for n in (largest + 1, 111):
        with pytest.raises(grpc.RpcError) as info:
            server.stub.EvaluateSignature(evaluate_request(candidates=int8_population(n), num_clips=1), timeout=60)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_request_memory_bytes = 1073741824" in info.value.details() and "candidates" in info.value.details()
    server.stub.EvaluateSignature(evaluate_request(num_clips=1), timeout=120)  # its clean entry: cached before measuring
    server.idle()
    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS now
    rss = server.status_mib("VmRSS")
    reply = server.stub.EvaluateSignature(req, timeout=600)
    assert len(reply.results) == largest
    peak = server.status_mib("VmHWM")
    print(f"{largest} INT8 candidates, charge {charge / MIB:.0f} MiB: server RSS {rss:.0f} -> peak {peak:.0f} MiB")
    assert peak - rss <= charge / MIB

    worker = server.worker()
    os.kill(worker, signal.SIGSTOP)
    try:
        fresh = evaluate_request(candidates=int8_population(largest, first=100), num_clips=1)  # not in the result cache
        first = server.stub.EvaluateSignature.future(fresh, timeout=300)
        server.wait(lambda x: x["request_memory_bytes"] == charge, "the first request's charge")
        with pytest.raises(grpc.RpcError) as info:
            server.stub.EvaluateSignature(evaluate_request(candidates=int8_population(2), num_clips=1), timeout=60)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "requests in progress hold" in info.value.details() and "max_request_memory_bytes" in info.value.details()
    finally:
        os.kill(worker, signal.SIGCONT)
    assert len(first.result().results) == largest
    assert server.load()["request_memory_bytes"] == 0


# --- 8: a stopped or hung worker --------------------------------------------------------------


@pytest.mark.parametrize("server", [("--task-timeout-s", "3")], indirect=True)
def test_stopped_worker_is_replaced_and_health_follows(server):
    worker = server.worker()
    with codecloop.Client(server.target, timeout=120) as c:
        assert c.health() == "SERVING"
        os.kill(worker, signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while c.health() != "NOT_SERVING":
            assert time.monotonic() < deadline, "health stayed SERVING with the only worker stopped"
            time.sleep(0.1)
        # the task sent to the stopped worker times out; the worker is killed and replaced; the task is retried
        res = c.evaluate(block_signature(4)[None], carriers=DatasetCarriers(num_clips=2), codecs=Codec(preset="ultrafast"))
        assert len(res.candidates) == 1
        assert c.info().load["worker_restarts"] == 1
        assert not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]
        deadline = time.monotonic() + 30
        while c.health() != "SERVING":
            assert time.monotonic() < deadline, "health did not come back with the new worker"
            time.sleep(0.1)


@pytest.mark.parametrize("server", [("--task-timeout-s", "0")], indirect=True)
def test_sigterm_with_a_stopped_worker_exits(server):
    """No task timeout at all: shutdown still kills the stopped worker instead of waiting for it."""
    worker = server.worker()
    os.kill(worker, signal.SIGSTOP)
    call = server.stub.EvaluateSignature.future(evaluate_request(num_clips=2), timeout=300)
    server.wait(lambda x: x["tasks_in_flight"] > 0, "a task in the stopped worker")
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the server did not exit within 60 s of SIGTERM with its worker stopped")
    assert server.proc.returncode == 0
    assert not Path(f"/proc/{worker}").exists(), "the stopped worker outlived the server"
    with pytest.raises(grpc.RpcError):
        call.result()


# --- 9: a Transcode reply over the message limit ----------------------------------------------


def test_transcode_reply_too_large_is_refused_before_any_encode(server_target):
    with grpc.insecure_channel(server_target, options=[("grpc.max_receive_message_length", 64 * MIB)]) as channel:
        stub = pb_grpc.CodecLoopStub(channel)
        before = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).load.get("transcode_encodes", 0)
        req = pb.TranscodeRequest(carriers=pb.Carriers(dataset=pb.DatasetCarriers(num_clips=60)), include_input=True)
        with pytest.raises(grpc.RpcError) as info:
            stub.Transcode(req, timeout=60)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "carriers: the reply would be" in info.value.details()
        assert "max_message_bytes = 67108864; ask for at most 55 clips per call" in info.value.details()
        assert stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).load.get("transcode_encodes", 0) == before
        # what the message names is what fits
        req.carriers.dataset.num_clips = 55
        assert len(stub.Transcode(req, timeout=300).encoded_bytes) == 55


# --- 6: negative seeds --------------------------------------------------------------------------


def test_negative_seed_is_invalid_argument_in_both_methods(server_target):
    with grpc.insecure_channel(server_target) as channel:
        stub = pb_grpc.CodecLoopStub(channel)
        carriers = pb.Carriers(dataset=pb.DatasetCarriers(num_clips=2, seed=-1))
        for call, req in ((stub.EvaluateSignature, evaluate_request(carriers=carriers)), (stub.Transcode, pb.TranscodeRequest(carriers=carriers))):
            with pytest.raises(grpc.RpcError) as info:
                call(req, timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "carriers.dataset.seed: -1 is outside the allowed range [0, 9223372036854775807]" in info.value.details()


# --- found by the extended fuzz: cancelled streams crashed the server ---------------------------


@pytest.mark.parametrize("server", [("--max-client-calls", "64",)], indirect=True)
def test_cancelling_streams_at_once_never_crashes_the_server(server):
    """Reading the peer of a call the client had already cancelled segfaulted grpc's core (the old
    servicer did it when logging the call's end): 300 streams cancelled at once or after their
    first event must leave the server serving."""
    req = evaluate_request(num_clips=4)
    for i in range(300):
        call = server.stub.EvaluateSignatureStream(req, timeout=30)
        if i % 2:
            next(call)
        call.cancel()
        assert server.proc.poll() is None, f"the server died (exit code {server.proc.returncode}) after {i + 1} cancelled streams"
    server.idle()
    assert server.proc.poll() is None
    assert server.load()["calls_in_progress"] == 0
