"""The thin gRPC servicer: each RPC is parse (parse.py) -> engine -> render (render.py).

Decoding, call slots, memory charges, the reply size bound and the mapping of errors to status
codes are the same for every RPC and live in lifecycle.py, whose decorators wrap these methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from codecloop_server import memory, parse, render, scoring
from codecloop_server.corpus import Dataset
from codecloop_server.engine import Engine
from codecloop_server.jobs import CandidateOutcome, EvaluateJob, ScoreClipsJob, TranscodeJob
from codecloop_server.lifecycle import Call, CallSlots, job_rpc, job_stream, rpc, slot_rpc
from codecloop_server.metrics import Metrics
from codecloop_server.security import Authenticator
from codecloop_wire import __version__
from codecloop_wire.v1 import codecloop_pb2 as pb
from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc


def _evaluate_charge(servicer: CodecLoopServicer, request: pb.EvaluateRequest) -> memory.Charge:
    return memory.evaluate_charge(request)


def _evaluate_job(servicer: CodecLoopServicer, request: pb.EvaluateRequest) -> EvaluateJob:
    return parse.evaluate_job(request, servicer.datasets, servicer.limits, servicer.engine.scorers)


def _transcode_charge(servicer: CodecLoopServicer, request: pb.TranscodeRequest) -> memory.Charge:
    return memory.transcode_charge(request, servicer.datasets)


def _transcode_job(servicer: CodecLoopServicer, request: pb.TranscodeRequest) -> TranscodeJob:
    return parse.transcode_job(request, servicer.datasets, servicer.limits)


def _score_clips_charge(servicer: CodecLoopServicer, request: pb.ScoreClipsRequest) -> memory.Charge:
    return memory.score_clips_charge(request, scoring.forward_clips(servicer.engine.scorers, request.detector))


def _score_clips_job(servicer: CodecLoopServicer, request: pb.ScoreClipsRequest) -> ScoreClipsJob:
    return parse.score_clips_job(request, servicer.limits, servicer.engine.scorers)


class CodecLoopServicer(pb_grpc.CodecLoopServicer):
    def __init__(
        self,
        engine: Engine,
        datasets: dict[str, Dataset],
        limits: parse.Limits,
        versions: dict[str, str],
        metrics: Metrics | None = None,
        max_calls: int = 64,
        max_request_memory_bytes: int = 4 << 30,
        auth: Authenticator | None = None,
    ) -> None:
        """``max_calls``: Evaluate/Transcode/ScoreClips calls in progress, all clients together;
        ``max_request_memory_bytes``: the memory charged to the calls in progress (memory.py)."""
        self.engine = engine
        self.metrics = metrics
        self.datasets = datasets
        self.limits = limits
        self.versions = {"codecloop": __version__, **versions}
        self.slots = CallSlots(limits, engine.workers, max_calls, max_request_memory_bytes)
        self.auth = auth

    @job_rpc(_evaluate_charge, _evaluate_job)
    async def EvaluateSignature(self, job: EvaluateJob, call: Call) -> pb.EvaluateResponse:
        outcomes = await self.engine.evaluate(job, client=call.client, priority=call.priority)
        return render.evaluate_response(outcomes, job, self.engine.scorers)

    @job_stream(_evaluate_charge, _evaluate_job)
    async def EvaluateSignatureStream(self, job: EvaluateJob, call: Call) -> AsyncIterator[pb.EvaluateEvent]:
        """Started, then progress and per-candidate results as they happen."""
        yield render.started_event(job)
        queue: asyncio.Queue[pb.EvaluateEvent | None] = asyncio.Queue()
        every = max(1, job.clip_tasks() // 100)  # at most ~100 progress events per request

        def on_progress(done: int, total: int) -> None:
            if done % every == 0 or done == total:
                queue.put_nowait(render.progress_event(done, total))

        def on_candidate(index: int, outcome: CandidateOutcome) -> None:
            queue.put_nowait(render.result_event(index, outcome, job, self.engine.scorers))

        task = asyncio.ensure_future(self.engine.evaluate(job, on_candidate, on_progress, call.client, call.priority))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (event := await queue.get()) is not None:
                yield event
            await task  # raises the job's error, if any
        finally:
            task.cancel()

    @job_rpc(_transcode_charge, _transcode_job)
    async def Transcode(self, job: TranscodeJob, call: Call) -> pb.TranscodeResponse:
        out = await self.engine.transcode(job, call.client, call.priority)
        return render.transcode_response(out, job)

    @slot_rpc(_score_clips_charge, _score_clips_job)
    async def ScoreClips(self, job: ScoreClipsJob, call: Call) -> pb.ScoreClipsResponse:
        return render.score_clips_response(await self.engine.score_clips(job))

    @rpc
    async def GetServerInfo(self, request: pb.GetServerInfoRequest) -> pb.ServerInfo:
        server = {
            "request_memory_bytes": float(self.slots.memory.held_bytes),
            "request_memory_limit_bytes": float(self.slots.memory.limit_bytes),
            "worker_memory_limit_bytes": float(self.limits.max_worker_memory_bytes),
            "calls_in_progress": float(self.slots.total),
        }
        load = render.load(self.engine.stats(), server)
        return render.server_info(self.versions, self.datasets.values(), self.engine.scorers, self.limits, load, self.engine.workers)
