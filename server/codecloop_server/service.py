"""The thin gRPC servicer: parse -> engine -> response. Errors map to status codes in one place."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError

from codecloop_server import memory, parse, render, scorers
from codecloop_server.channels import FILTERS, Channel
from codecloop_server.channels import PRESETS as channel_presets
from codecloop_server.codecs import CODECS, MIN_SIZE, PIX_FMTS, PRESETS
from codecloop_server.corpus import Dataset
from codecloop_server.engine import Engine
from codecloop_server.jobs import CandidateOutcome, EvaluateJob
from codecloop_server.metrics import Metrics
from codecloop_server.registry import SHOWN_CHARS, shown
from codecloop_server.security import Authenticator, _one
from codecloop_server.versions import encoder_version
from codecloop_wire import __version__
from codecloop_wire.errors import (
    ERROR_METADATA_KEY,
    CodecLoopAuthError,
    CodecLoopBusyError,
    CodecLoopLimitError,
    CodecLoopValueError,
    kind_of,
)
from codecloop_wire.tensors import to_tensor
from codecloop_wire.v1 import codecloop_pb2 as pb
from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc

log = logging.getLogger("codecloop.server")
ReplyT = TypeVar("ReplyT", pb.EvaluateResponse, pb.EvaluateEvent)
SERVICE = pb.DESCRIPTOR.services_by_name["CodecLoop"].full_name


MAX_DETAILS = 2048  # characters of a status message: metadata past 16 KiB would fail the call itself


def _status_for(err: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one mapping from exceptions to gRPC status codes, with the message cut to MAX_DETAILS
    characters (every echo of a request's strings is bounded where it is made; this is the backstop)."""
    code, message = _code_for(err)
    if len(message) > MAX_DETAILS:
        message = f"{message[:MAX_DETAILS]}... ({len(message)} characters)"
    return code, message


def _code_for(err: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(err, CodecLoopValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(err)
    if isinstance(err, CodecLoopLimitError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(err)
    if isinstance(err, CodecLoopBusyError):
        return grpc.StatusCode.UNAVAILABLE, str(err)  # the SDK's retry policy backs off and retries
    if isinstance(err, CodecLoopAuthError):
        return grpc.StatusCode.UNAUTHENTICATED, str(err)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}"


@contextlib.asynccontextmanager
async def _errors(context: grpc.aio.ServicerContext, method: str, metrics: Metrics | None) -> AsyncIterator[None]:
    """Map errors to status codes (via _status_for); record code and latency; log one JSON line per
    call with a request id, which the client also gets as trailing metadata ``request-id``."""
    start, status = time.monotonic(), "OK"
    request_id = uuid.uuid4().hex[:16]
    context.set_trailing_metadata((("request-id", request_id),))
    # read now: context.peer() on a call that the client has already cancelled can crash grpc's core
    client = dict(context.invocation_metadata() or ()).get("client-id") or context.peer()
    try:
        yield
    except (CodecLoopValueError, CodecLoopLimitError, CodecLoopBusyError, CodecLoopAuthError) as err:
        code, message = _status_for(err)
        status = code.name
        log.info(json.dumps({"event": "rejected", "request_id": request_id, "method": method, "message": message}))
        # the error's kind travels as data, so that no client has to parse the message
        context.set_trailing_metadata((("request-id", request_id), (ERROR_METADATA_KEY, kind_of(err) or "")))
        await context.abort(code, message)
    except (asyncio.CancelledError, GeneratorExit):
        # the client cancelled or its deadline passed; a cancelled stream's generator is closed
        # (GeneratorExit at its yield), which no except Exception sees
        status = "CANCELLED"
        raise
    except Exception as err:  # anything else is our bug: report it, keep serving
        code, message = _status_for(err)
        status = code.name
        log.exception(json.dumps({"event": "failed", "request_id": request_id, "method": method}))
        await context.abort(code, message)
    finally:
        seconds = time.monotonic() - start
        if metrics is not None:
            metrics.observe(method, status, seconds)
        log.info(json.dumps({"event": "rpc", "request_id": request_id, "method": method, "code": status,
                             "seconds": round(seconds, 4), "client": client[:SHOWN_CHARS]}))  # fmt: skip


async def deny(err: BaseException, context: grpc.aio.ServicerContext) -> None:
    """Abort a call that never reached a servicer (the interceptors: token, undecodable bytes) with
    the status _status_for maps its error to."""
    code, message = _status_for(err)
    log.info(json.dumps({"event": "rejected", "method": "(interceptor)", "code": code.name, "peer": context.peer()}))
    await context.abort(code, message)


class Undecodable:
    """What the lenient deserializer hands the servicer instead of a message it could not parse."""

    def __init__(self, method: str, error: Exception) -> None:
        self.message = f"request: not a valid protobuf message for {method}: {error}"


def _decoded(request):
    """The request, or CodecLoopValueError (-> INVALID_ARGUMENT) when its bytes did not parse."""
    if isinstance(request, Undecodable):
        raise CodecLoopValueError(request.message)
    return request


class LenientDecodingInterceptor(grpc.aio.ServerInterceptor):
    """Swaps each method's request deserializer for one that returns an :class:`Undecodable`
    instead of raising, so that bad bytes reach the servicer and get INVALID_ARGUMENT from
    _status_for rather than gRPC's UNKNOWN "Unexpected DecodeError". The behaviours are untouched."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None or not details.method.startswith(f"/{SERVICE}/"):
            return handler
        parse, method = handler.request_deserializer, details.method

        def lenient(data: bytes):
            try:
                return parse(data)
            except DecodeError as err:
                return Undecodable(method, err)

        return handler._replace(request_deserializer=lenient)


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    """The single value of metadata ``key``; a repeated key is INVALID_ARGUMENT, not "last one wins"."""
    try:
        return _one(context.invocation_metadata(), key)
    except CodecLoopAuthError as err:
        raise CodecLoopValueError(str(err)) from None


def _caller(context: grpc.aio.ServicerContext, auth: Authenticator | None) -> tuple[str, int]:
    """(client, priority): the client is the authenticated identity when authentication is on (so
    that nobody can take another's quota or dodge their own), else the metadata ``client-id``, else
    the peer address; ``priority`` from the metadata of that name."""
    text = _metadata(context, "priority")
    try:
        priority = int(text or 0)
    except ValueError:
        raise CodecLoopValueError(f"metadata priority: {shown(text)} is not an integer") from None
    if not -100 <= priority <= 100:
        raise CodecLoopValueError(f"metadata priority: {priority} is outside the allowed range [-100, 100]")
    identity = auth.identity(context) if auth is not None and auth.enabled else None
    return identity or _metadata(context, "client-id") or context.peer(), priority


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
    ):
        self.engine = engine
        self.metrics = metrics
        self.datasets = datasets
        self.limits = limits
        self.versions = {"codecloop": __version__, **versions}
        self._calls: Counter[str] = Counter()  # calls in progress per client
        self._total_calls = 0
        self.max_calls = max_calls  # Evaluate/Transcode calls in progress, all clients together
        self.memory = memory.MemoryBudget(max_request_memory_bytes)  # charged by the calls in progress
        self.auth = auth

    @contextlib.asynccontextmanager
    async def _slot(self, context: grpc.aio.ServicerContext, charge: memory.Charge) -> AsyncIterator[tuple[str, int]]:
        """(client, priority) of the call, holding one of the client's ``max_client_calls`` slots (one
        client cannot hold every call slot) and the request's memory ``charge`` (memory.py), or
        RESOURCE_EXHAUSTED at once."""
        client, priority = _caller(context, self.auth)
        if self._total_calls >= self.max_calls:
            raise CodecLoopLimitError(f"server: {self._total_calls} calls in progress, limit max_concurrent_rpcs = {self.max_calls}; retry later")
        if self._calls[client] >= self.limits.max_client_calls:
            raise CodecLoopLimitError(
                f"client {shown(client)}: {self._calls[client]} calls in progress, per-client limit max_client_calls = "
                f"{self.limits.max_client_calls}; wait for one to finish"
            )
        with self.memory.reserve(charge):
            self._calls[client] += 1
            self._total_calls += 1
            try:
                yield client, priority
            finally:
                self._total_calls -= 1
                self._calls[client] -= 1
                if not self._calls[client]:
                    del self._calls[client]

    async def EvaluateSignature(self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext) -> pb.EvaluateResponse:
        async with _errors(context, "EvaluateSignature", self.metrics):
            request = _decoded(request)
            own = memory.evaluate_charge(request)
            async with self._slot(context, own) as (client, priority):
                job = parse.evaluate_job(request, self.datasets, self.limits)
                with self.memory.reserve(self._worker_charge(job.channels, job.carriers.clip_shape, job.clip_tasks()), own):
                    outcomes = await self.engine.evaluate(job, client=client, priority=priority)
                return self._sized(
                    pb.EvaluateResponse(
                        results=[render.candidate_proto(o, job) for o in outcomes],
                        scorer=job.scorer[0],
                        epsilon=job.epsilon,
                        num_clips=len(job.carriers),
                        clip_ids=job.carriers.clip_ids,
                        clip_sources=job.carriers.clip_sources(),
                        source_names=job.carriers.source_names,
                    )
                )

    async def EvaluateSignatureStream(
        self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EvaluateEvent]:
        async with _errors(context, "EvaluateSignatureStream", self.metrics):
            request = _decoded(request)
            own = memory.evaluate_charge(request)
            async with self._slot(context, own) as (client, priority):
                job = parse.evaluate_job(request, self.datasets, self.limits)
                with self.memory.reserve(self._worker_charge(job.channels, job.carriers.clip_shape, job.clip_tasks()), own):
                    async for event in self._stream(job, client, priority):
                        yield self._sized(event)

    async def _stream(self, job: EvaluateJob, client: str, priority: int) -> AsyncIterator[pb.EvaluateEvent]:
        """Started, then progress and per-candidate results as they happen."""
        total = job.clip_tasks()
        yield pb.EvaluateEvent(
            started=pb.EvaluateEvent.Started(
                num_candidates=len(job.candidates),
                scorer=job.scorer[0],
                epsilon=job.epsilon,
                num_clips=len(job.carriers),
                clip_ids=job.carriers.clip_ids,
                clip_tasks=total,
                clip_sources=job.carriers.clip_sources(),
                source_names=job.carriers.source_names,
            )
        )
        queue: asyncio.Queue[pb.EvaluateEvent | None] = asyncio.Queue()
        every = max(1, total // 100)  # at most ~100 progress events per request

        def on_progress(done: int, total: int) -> None:
            if done % every == 0 or done == total:
                queue.put_nowait(pb.EvaluateEvent(progress=pb.EvaluateEvent.Progress(clip_tasks_done=done, clip_tasks=total)))

        def on_candidate(index: int, outcome: CandidateOutcome) -> None:
            queue.put_nowait(pb.EvaluateEvent(result=pb.EvaluateEvent.Result(index=index, result=render.candidate_proto(outcome, job))))

        task = asyncio.ensure_future(self.engine.evaluate(job, on_candidate, on_progress, client, priority))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (event := await queue.get()) is not None:
                yield event
            await task  # raises the job's error, if any
        finally:
            task.cancel()

    async def Transcode(self, request: pb.TranscodeRequest, context: grpc.aio.ServicerContext) -> pb.TranscodeResponse:
        async with _errors(context, "Transcode", self.metrics):
            request = _decoded(request)
            own = memory.transcode_charge(request, self.datasets)
            async with self._slot(context, own) as caller:
                carriers = parse.carriers(request.carriers, self.datasets, self.limits)
                parse.check_transcode_reply(carriers, request.include_input, self.limits)  # before any encode
                if request.HasField("channel"):
                    found = parse.channel_list(request.channel, "channel", carriers.clip_shape)
                    if len(found) != 1:
                        raise CodecLoopValueError(f"channel.preset: {shown(request.channel.preset)} has {len(found)} channels; Transcode takes one")
                    channel, field = found[0], "channel"
                else:
                    channel, field = parse.codec_channel(request.codec, "codec", carriers.clip_shape), "codec"
                parse.admit([channel], [field], len(carriers), carriers.clip_shape, self.limits)
                eps = parse.epsilon(request)
                sig = None
                if request.HasField("signature"):
                    sig = parse.signature(request.signature, "signature", carriers.clip_shape)
                with self.memory.reserve(self._worker_charge((channel,), carriers.clip_shape, len(carriers)), own):
                    out = await self.engine.transcode(carriers, sig, eps, channel, request.include_input, *caller)
                return pb.TranscodeResponse(
                    decoded=to_tensor(out.decoded, "uint8"),
                    input=to_tensor(out.inputs, "uint8") if out.inputs is not None else None,
                    encoded_bytes=out.encoded_bytes,
                    clip_ids=carriers.clip_ids,
                    codec=parse.codec_to_proto(channel.final_codec),
                    channel=parse.channel_to_proto(channel) if request.HasField("channel") else None,
                )

    def _worker_charge(self, found: tuple[Channel, ...], clip_shape: tuple[int, int, int], tasks: int) -> memory.Charge:
        """What the request's clip tasks can hold in the codec workers at once (memory.worker_charge)."""
        return memory.worker_charge([memory.channel_footprint(c, clip_shape, "channel") for c in found], tasks, self.engine.workers)

    def _sized(self, reply: ReplyT) -> ReplyT:
        """``reply``, or RESOURCE_EXHAUSTED when it is over max_message_bytes: gRPC would fail to send
        it after the handler returned, outside the status mapping and the RPC log."""
        size = reply.ByteSize()
        if size > self.limits.max_message_bytes:
            raise CodecLoopLimitError(
                f"reply: {size} bytes, over the server limit max_message_bytes = {self.limits.max_message_bytes}; "
                "ask for fewer candidates, clips or channels per call, or no per-clip scores"
            )
        return reply

    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext) -> pb.ServerInfo:
        async with _errors(context, "GetServerInfo", self.metrics):
            _decoded(request)
            return self._info()

    def _info(self) -> pb.ServerInfo:
        return pb.ServerInfo(
            versions=self.versions,
            datasets=[
                pb.DatasetInfo(
                    name=d.name,
                    split_clips={k: len(v) for k, v in d.splits.items()},
                    clip_shape=d.clip_shape,
                    digest=d.digest,
                    description=d.description,
                    split_policy=d.split_policy,
                    carrier_policy=d.carrier_policy,
                    split_sources={k: pb.SourceNames(names=v) for k, v in d.split_sources().items()},
                    sources=[pb.SourceClips(name=n, split_clips=c) for n, c in d.source_split_clips()],
                    skipped=[pb.SkippedFile(name=n, reason=r) for n, r in d.skipped],
                    folder=d.folder,
                )
                for d in self.datasets.values()
            ],
            codecs=list(CODECS),
            presets=PRESETS,
            pix_fmts=PIX_FMTS,
            codec_info=[
                pb.CodecInfo(
                    codec=spec.codec, decoder=spec.decoder, crf_range=spec.crf_range, qp_range=spec.qp_range or (), bitrate=True,
                    presets=spec.presets, default_preset=spec.default_preset, min_size=MIN_SIZE, version=encoder_version(spec.codec),
                )
                for spec in CODECS.values()
            ],
            channel_presets=[
                pb.ChannelPreset(name=p.name, description=p.description, channels=[parse.channel_to_proto(c) for c in p.channels])
                for p in channel_presets.values()
            ],
            resize_filters=list(FILTERS),
            scorers=[
                pb.ScorerInfo(
                    name=s.name, description=s.description, default_params={k: v[0] for k, v in s.param_ranges.items()},
                    null_model=scorers.offers_null(s),
                )
                for s in scorers.SCORERS.values()
            ],
            limits=self.limits.to_proto(),
            workers=self.engine.workers,
            load={
                **self.engine.load(),
                "request_memory_bytes": float(self.memory.held_bytes),
                "request_memory_limit_bytes": float(self.memory.limit_bytes),
                "worker_memory_limit_bytes": float(self.limits.max_worker_memory_bytes),
                "calls_in_progress": float(self._total_calls),
            },
        )
