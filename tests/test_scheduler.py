"""Fair scheduling of clip tasks across clients (round-robin, priority, cancellation, admission)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

import codecloop
from codecloop import Codec, DatasetCarriers
from codecloop_server.lifecycle import status_for
from codecloop_server.scheduler import FairScheduler
from codecloop_server.workers import WorkerPool
from codecloop_wire.errors import CodecLoopBusyError, CodecLoopLimitError, CodecLoopServerError
from tests.conftest import block_signature

ran: list[str] = []


def record(name: str) -> str:
    ran.append(name)
    time.sleep(0.005)
    return name


def run_schedule(submissions, max_queued=1000, cancel=()):
    """Submit (client, priority, name) in order onto one slot of a one-thread pool; return run order."""
    ran.clear()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            sched = FairScheduler(pool, slots=1, max_queued=max_queued)
            futs = {name: sched.submit(client, prio, record, name) for client, prio, name in submissions}
            for name in cancel:
                futs[name].cancel()
            await asyncio.gather(*futs.values(), return_exceptions=True)
            return sched

    sched = asyncio.run(main())
    return list(ran), sched


def test_short_queue_first_then_round_robin():
    subs = [("bulk", 0, f"a{i}") for i in range(8)] + [("val", 0, "b0"), ("val", 0, "b1")]
    order, sched = run_schedule(subs)
    # a0 was already running when b arrived; the short queue goes next, then the population resumes
    assert order == ["a0", "b0", "b1", "a1", "a2", "a3", "a4", "a5", "a6", "a7"]
    assert sched.dispatched == {"bulk": 8, "val": 2}
    tie = [("x", 0, "x0"), ("y", 0, "y0"), ("x", 0, "x1"), ("y", 0, "y1"), ("x", 0, "x2"), ("y", 0, "y2")]
    order, _ = run_schedule(tie)
    # x0 runs at once; x then has 2 queued and y 3: the shorter queue finishes first
    assert order == ["x0", "x1", "x2", "y0", "y1", "y2"]
    order, _ = run_schedule([("x", 0, "x0"), ("x", 0, "x1"), ("y", 0, "y0"), ("z", 0, "z0")])
    assert order == ["x0", "x1", "y0", "z0"]  # equal queue lengths: round-robin order (x first)


def test_priority_jumps_ahead_and_cancelled_tasks_never_run():
    subs = [("bulk", 0, f"a{i}") for i in range(5)] + [("ci", 10, "urgent")]
    order, _ = run_schedule(subs, cancel=("a3", "a4"))
    assert order == ["a0", "urgent", "a1", "a2"]


def test_admission_limit_and_status_mapping():
    sched = FairScheduler(ThreadPoolExecutor(1), slots=1, max_queued=10, max_client_queued=6)
    sched.admit("x", 6)
    with pytest.raises(CodecLoopLimitError, match="client 'x': 0 clip tasks queued, this request adds 7, per-client limit"):
        sched.admit("x", 7)
    sched.queued = 6  # as if other clients had 6 tasks queued
    with pytest.raises(CodecLoopBusyError, match="max_queued_tasks = 10; retry"):
        sched.admit("x", 5)
    assert status_for(CodecLoopBusyError("server busy"))[0] == grpc.StatusCode.UNAVAILABLE


def die_once(marker: str, value: int) -> int:
    """Kill the worker process running this (SIGKILL, as the OOM killer would) the first time.

    The marker is created atomically (O_EXCL): with two workers, a check-then-create let both see
    no marker and both die, once in CI."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return value
    os.kill(os.getpid(), signal.SIGKILL)
    return value


def always_die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_dead_worker_replaced_and_its_task_retried_once(tmp_path):
    async def main():
        sched = FairScheduler(WorkerPool(2), 3, 100)
        try:
            marker = str(tmp_path / "died")
            ok = [sched.submit("a", 0, die_once, marker, i) for i in range(6)]
            assert await asyncio.gather(*ok) == list(range(6))  # every task, the killed one included
            assert sched.restarts == 1  # only the worker that died was replaced
            with pytest.raises(CodecLoopServerError, match="worker died running this clip task 2 times"):
                await sched.submit("b", 0, always_die)
            # the replaced pool serves everyone else
            assert await asyncio.gather(*(sched.submit("c", 0, die_once, marker, i) for i in range(3))) == [0, 1, 2]
            assert sched.restarts == 3
        finally:
            sched.close()

    asyncio.run(main())


def test_small_request_is_not_starved_by_a_population(server_target):
    """A 1-candidate call from a second client finishes while another client's 16x16 population runs."""
    big_done = threading.Event()

    def bulk():
        with codecloop.Client(server_target, client_id="bulk") as c:
            pop = np.stack([block_signature(s, block=4) for s in range(500, 516)])
            c.fitness(pop, carriers=DatasetCarriers(num_clips=16, seed=9), codecs=Codec(preset="ultrafast"))
        big_done.set()

    thread = threading.Thread(target=bulk)
    thread.start()
    with codecloop.Client(server_target, client_id="validation") as c:
        while c.info().load.get("tasks_in_flight", 0) == 0:  # wait until the population is running
            time.sleep(0.05)
        res = c.evaluate(block_signature(600)[None], carriers=DatasetCarriers(num_clips=2, seed=9), codecs=Codec(preset="ultrafast"))
        small_finished_first = not big_done.is_set()
    thread.join(timeout=300)
    assert len(res.candidates) == 1 and big_done.is_set()
    assert small_finished_first, "the 2-clip request waited for the whole 256-task population"


def test_prometheus_metrics(client, metrics_url):
    import urllib.request

    client.evaluate(block_signature(700)[None], carriers=DatasetCarriers(num_clips=2))
    with pytest.raises(codecloop.CodecLoopValueError):
        client.evaluate(block_signature(701)[None], epsilon=5.0)
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}
    assert samples['codecloop_requests_total{code="OK",method="EvaluateSignature"}'] >= 1
    assert samples['codecloop_requests_total{code="INVALID_ARGUMENT",method="EvaluateSignature"}'] >= 1
    assert samples['codecloop_clips_encoded_total{kind="poisoned"}'] >= 2
    assert samples['codecloop_request_seconds_count{method="EvaluateSignature"}'] >= 2
    assert samples["codecloop_queue_wait_seconds_count"] >= 2
    assert samples["codecloop_workers"] == 2
    assert samples["codecloop_workers_responsive"] == 2
    assert 'codecloop_cache_hits_total{cache="clean_cache"}' in samples


def test_request_id_in_trailing_metadata(server_target):
    from codecloop_wire.v1 import codecloop_pb2 as pb
    from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server_target) as channel:
        stub = pb_grpc.CodecLoopStub(channel)
        req = pb.EvaluateRequest(epsilon=2.0)  # rejected: the id comes back on errors too
        with pytest.raises(grpc.RpcError) as info:
            stub.EvaluateSignature(req, timeout=30)
        ids = [v for k, v in info.value.trailing_metadata() if k == "request-id"]
        assert len(ids) == 1 and len(ids[0]) == 16


def test_busy_server_is_told_apart_by_metadata_not_message(tmp_path):
    """A full queue answers UNAVAILABLE with trailing metadata codecloop-error=busy: the SDK raises
    CodecLoopBusyError from that (retries off), an unreachable server is CodecLoopUnavailableError."""
    from codecloop_wire.errors import ERROR_METADATA_KEY
    from tests.conftest import _start_server

    proc, target = _start_server(["--max-queued-tasks", "4", "--max-client-queued-tasks", "1000"])
    try:
        with codecloop.Client(target, max_attempts=1, timeout=120) as c:
            sig = np.zeros((2, 1, 112, 112, 3), np.float32)
            with pytest.raises(CodecLoopBusyError, match="max_queued_tasks = 4"):
                c.fitness(sig, carriers=codecloop.DatasetCarriers(num_clips=8))
            raw = c._stub.EvaluateSignature.with_call
            request = c._evaluate_requests(sig, codecloop.EvaluateOptions(carriers=codecloop.DatasetCarriers(num_clips=8)))[0]
            with pytest.raises(grpc.RpcError) as info:
                raw(request, timeout=60)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert dict(info.value.trailing_metadata())[ERROR_METADATA_KEY] == "busy"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    with codecloop.Client(target, max_attempts=1, timeout=5) as gone:
        with pytest.raises(codecloop.CodecLoopUnavailableError):
            gone.info()
