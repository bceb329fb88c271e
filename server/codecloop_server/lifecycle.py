"""One request's lifecycle on the server, the same for every RPC: decoding, admission, errors.

The servicer's methods (service.py) are each parse -> engine -> render; the decorators here wrap
every one of them:

* :func:`rpc` (every RPC): a request id, the one mapping from errors to gRPC status codes
  (:func:`status_for`), the RPC's log line and metrics, and lenient decoding (bytes that do not
  parse are INVALID_ARGUMENT, via :class:`LenientDecodingInterceptor` and :class:`Undecodable`).
* :func:`job_rpc` / :func:`job_stream` (the RPCs that run clip tasks): also a call slot of the
  client and of the server (:class:`CallSlots`), the request's memory charge before it is parsed,
  the job's codec-worker charge once it is (memory.py), and a bound on each reply's size.
* :func:`slot_rpc` (ScoreClips: no clip task, a detector's forward passes): the call slot, the
  request's whole memory charge before it is parsed, and the bound on the reply's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from codecloop_server import memory
from codecloop_server.channels import Channel
from codecloop_server.jobs import CarrierSet
from codecloop_server.metrics import Metrics
from codecloop_server.parse import Limits
from codecloop_server.registry import SHOWN_CHARS, shown
from codecloop_server.security import Authenticator, _one
from codecloop_wire.errors import (
    ERROR_METADATA_KEY,
    CodecLoopAuthError,
    CodecLoopBusyError,
    CodecLoopLimitError,
    CodecLoopValueError,
    kind_of,
)
from codecloop_wire.v1 import codecloop_pb2 as pb

log = logging.getLogger("codecloop.server")
SERVICE = pb.DESCRIPTOR.services_by_name["CodecLoop"].full_name
MAX_DETAILS = 2048  # characters of a status message: metadata past 16 KiB would fail the call itself

Context: TypeAlias = grpc.aio.ServicerContext  # grpc has no type stubs: Any


def status_for(err: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one mapping from exceptions to gRPC status codes, with the message cut to MAX_DETAILS
    characters (every echo of a request's strings is bounded where it is made; this is the backstop)."""
    code, message = _code_for(err)
    if len(message) > MAX_DETAILS:
        message = f"{message[:MAX_DETAILS]}... ({len(message)} characters)"
    return code, message


_STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (CodecLoopValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (CodecLoopLimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (CodecLoopBusyError, grpc.StatusCode.UNAVAILABLE),  # the SDK's retry policy backs off and retries
    (CodecLoopAuthError, grpc.StatusCode.UNAUTHENTICATED),
)
_REFUSALS = tuple(kind for kind, _ in _STATUS)  # a request's fault or the server's load, never its bug


def _code_for(err: BaseException) -> tuple[grpc.StatusCode, str]:
    for kind, code in _STATUS:
        if isinstance(err, kind):
            return code, str(err)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}"


@contextlib.asynccontextmanager
async def _errors(context: Context, method: str, metrics: Metrics | None) -> AsyncIterator[None]:
    """Map errors to status codes (via status_for); record code and latency; log one JSON line per
    call with a request id, which the client also gets as trailing metadata ``request-id``."""
    start, status = time.monotonic(), "OK"
    request_id = uuid.uuid4().hex[:16]
    context.set_trailing_metadata((("request-id", request_id),))
    # read now: context.peer() on a call that the client has already cancelled can crash grpc's core
    client = dict(context.invocation_metadata() or ()).get("client-id") or context.peer()
    try:
        yield
    except _REFUSALS as err:
        code, message = status_for(err)
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
        code, message = status_for(err)
        status = code.name
        log.exception(json.dumps({"event": "failed", "request_id": request_id, "method": method}))
        await context.abort(code, message)
    finally:
        seconds = time.monotonic() - start
        if metrics is not None:
            metrics.observe(method, status, seconds)
        log.info(json.dumps({"event": "rpc", "request_id": request_id, "method": method, "code": status,
                             "seconds": round(seconds, 4), "client": client[:SHOWN_CHARS]}))  # fmt: skip


async def deny(err: BaseException, context: Context) -> None:
    """Abort a call that never reached a servicer (the token interceptor) with the status
    status_for maps its error to."""
    code, message = status_for(err)
    log.info(json.dumps({"event": "rejected", "method": "(interceptor)", "code": code.name, "peer": context.peer()}))
    await context.abort(code, message)


class Undecodable:
    """What the lenient deserializer hands the servicer instead of a message it could not parse."""

    def __init__(self, method: str, error: Exception) -> None:
        self.message = f"request: not a valid protobuf message for {method}: {error}"


RequestT = TypeVar("RequestT", bound=Message)


def _decoded(request: RequestT | Undecodable) -> RequestT:
    """The request, or CodecLoopValueError (-> INVALID_ARGUMENT) when its bytes did not parse."""
    if isinstance(request, Undecodable):
        raise CodecLoopValueError(request.message)
    return request


class LenientDecodingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no type stubs
    """Swaps each method's request deserializer for one that returns an :class:`Undecodable`
    instead of raising, so that bad bytes reach the servicer and get INVALID_ARGUMENT from
    status_for rather than gRPC's UNKNOWN "Unexpected DecodeError". The behaviours are untouched."""

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None or not details.method.startswith(f"/{SERVICE}/"):
            return handler
        parse, method = handler.request_deserializer, details.method

        def lenient(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError as err:
                return Undecodable(method, err)

        return handler._replace(request_deserializer=lenient)


def _metadata(context: Context, key: str) -> str | None:
    """The single value of metadata ``key``; a repeated key is INVALID_ARGUMENT, not "last one wins"."""
    try:
        return _one(context.invocation_metadata(), key)
    except CodecLoopAuthError as err:
        raise CodecLoopValueError(str(err)) from None


def _caller(context: Context, auth: Authenticator | None) -> tuple[str, int]:
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
    client: str = identity or _metadata(context, "client-id") or context.peer()
    return client, priority


@dataclass(frozen=True)
class Call:
    """What a servicer method knows of its call: who it is for, in the fair scheduler's terms."""

    client: str
    priority: int


class Job(Protocol):
    """What admission reads of a job (jobs.EvaluateJob, jobs.TranscodeJob)."""

    @property
    def carriers(self) -> CarrierSet: ...

    @property
    def channels(self) -> tuple[Channel, ...]: ...

    def clip_tasks(self) -> int: ...


class CallSlots:
    """The calls in progress (Evaluate / Transcode / ScoreClips): at most ``max_calls`` over all clients and
    ``limits.max_client_calls`` per client, and their memory, at most ``max_request_memory_bytes``
    charged in all (memory.py). A call past any of them gets RESOURCE_EXHAUSTED at once."""

    def __init__(self, limits: Limits, workers: int, max_calls: int = 64, max_request_memory_bytes: int = 4 << 30) -> None:
        self.limits, self.workers, self.max_calls = limits, workers, max_calls
        self.memory = memory.MemoryBudget(max_request_memory_bytes)
        self.total = 0  # calls in progress, all clients together
        self._calls: Counter[str] = Counter()  # calls in progress per client

    @contextlib.asynccontextmanager
    async def hold(self, context: Context, auth: Authenticator | None, charge: memory.Charge) -> AsyncIterator[Call]:
        """The call, holding one of its client's slots and one of the server's, and the request's
        memory ``charge``."""
        client, priority = _caller(context, auth)
        if self.total >= self.max_calls:
            raise CodecLoopLimitError(f"server: {self.total} calls in progress, limit max_concurrent_rpcs = {self.max_calls}; retry later")
        if self._calls[client] >= self.limits.max_client_calls:
            raise CodecLoopLimitError(
                f"client {shown(client)}: {self._calls[client]} calls in progress, per-client limit max_client_calls = "
                f"{self.limits.max_client_calls}; wait for one to finish"
            )
        with self.memory.reserve(charge):
            self._calls[client] += 1
            self.total += 1
            try:
                yield Call(client, priority)
            finally:
                self.total -= 1
                self._calls[client] -= 1
                if not self._calls[client]:
                    del self._calls[client]

    def worker_charge(self, job: Job) -> memory.Charge:
        """What the job's clip tasks can hold in the codec workers at once (memory.worker_charge)."""
        shape = job.carriers.clip_shape
        return memory.worker_charge([memory.channel_footprint(c, shape, "channel") for c in job.channels], job.clip_tasks(), self.workers)

    def sized(self, reply: ReplyT) -> ReplyT:
        """``reply``, or RESOURCE_EXHAUSTED when it is over max_message_bytes: gRPC would fail to send
        it after the handler returned, outside the status mapping and the RPC log."""
        size = reply.ByteSize()
        if size > self.limits.max_message_bytes:
            raise CodecLoopLimitError(
                f"reply: {size} bytes, over the server limit max_message_bytes = {self.limits.max_message_bytes}; "
                "ask for fewer candidates, clips or channels per call, or no per-clip scores"
            )
        return reply


class Servicer(Protocol):
    """What the lifecycle reads of the servicer it wraps."""

    metrics: Metrics | None
    auth: Authenticator | None
    slots: CallSlots


S = TypeVar("S", bound=Servicer)
JobT = TypeVar("JobT", bound=Job)
T = TypeVar("T")
ReplyT = TypeVar("ReplyT", bound=Message)


def rpc(fn: Callable[[S, RequestT], Awaitable[ReplyT]]) -> Callable[[S, RequestT | Undecodable, Context], Awaitable[ReplyT]]:
    """A unary RPC that runs no clip task: ``fn(servicer, request)`` inside the error mapping."""

    @functools.wraps(fn)
    async def handler(self: S, request: RequestT | Undecodable, context: Context) -> ReplyT:
        async with _errors(context, fn.__name__, self.metrics):
            return await fn(self, _decoded(request))
        raise AssertionError("unreachable: _errors aborts the call")  # context.abort raises

    return handler


def job_rpc(
    charge: Callable[[S, RequestT], memory.Charge], parse: Callable[[S, RequestT], JobT]
) -> Callable[[Callable[[S, JobT, Call], Awaitable[ReplyT]]], Callable[[S, RequestT | Undecodable, Context], Awaitable[ReplyT]]]:
    """A unary RPC that runs clip tasks: the request is charged (``charge``) and given a call slot,
    then parsed into a job (``parse``), whose worker charge is held while ``fn(servicer, job, call)``
    runs the engine and renders the reply."""

    def wrap(fn: Callable[[S, JobT, Call], Awaitable[ReplyT]]) -> Callable[[S, RequestT | Undecodable, Context], Awaitable[ReplyT]]:
        @functools.wraps(fn)
        async def handler(self: S, request: RequestT | Undecodable, context: Context) -> ReplyT:
            async with _errors(context, fn.__name__, self.metrics):
                decoded: RequestT = _decoded(request)
                own = charge(self, decoded)
                async with self.slots.hold(context, self.auth, own) as call:
                    job = parse(self, decoded)
                    with self.slots.memory.reserve(self.slots.worker_charge(job), own):
                        reply = await fn(self, job, call)
                    return self.slots.sized(reply)
            raise AssertionError("unreachable: _errors aborts the call")

        return handler

    return wrap


def slot_rpc(
    charge: Callable[[S, RequestT], memory.Charge], parse: Callable[[S, RequestT], T]
) -> Callable[[Callable[[S, T, Call], Awaitable[ReplyT]]], Callable[[S, RequestT | Undecodable, Context], Awaitable[ReplyT]]]:
    """A unary RPC that runs no clip task but holds server memory (ScoreClips: a detector's forward
    passes): :func:`job_rpc` without the codec-worker charge. The request is charged (``charge``, all
    that it will make) and given a call slot, then parsed (``parse``) and run (``fn``)."""

    def wrap(fn: Callable[[S, T, Call], Awaitable[ReplyT]]) -> Callable[[S, RequestT | Undecodable, Context], Awaitable[ReplyT]]:
        @functools.wraps(fn)
        async def handler(self: S, request: RequestT | Undecodable, context: Context) -> ReplyT:
            async with _errors(context, fn.__name__, self.metrics):
                decoded: RequestT = _decoded(request)
                async with self.slots.hold(context, self.auth, charge(self, decoded)) as call:
                    reply = await fn(self, parse(self, decoded), call)
                    return self.slots.sized(reply)
            raise AssertionError("unreachable: _errors aborts the call")

        return handler

    return wrap


def job_stream(
    charge: Callable[[S, RequestT], memory.Charge], parse: Callable[[S, RequestT], JobT]
) -> Callable[[Callable[[S, JobT, Call], AsyncIterator[ReplyT]]], Callable[[S, RequestT | Undecodable, Context], AsyncIterator[ReplyT]]]:
    """:func:`job_rpc` for a server-streaming RPC: each event is sized as it goes out."""

    def wrap(fn: Callable[[S, JobT, Call], AsyncIterator[ReplyT]]) -> Callable[[S, RequestT | Undecodable, Context], AsyncIterator[ReplyT]]:
        @functools.wraps(fn)
        async def handler(self: S, request: RequestT | Undecodable, context: Context) -> AsyncIterator[ReplyT]:
            async with _errors(context, fn.__name__, self.metrics):
                decoded: RequestT = _decoded(request)
                own = charge(self, decoded)
                async with self.slots.hold(context, self.auth, own) as call:
                    job = parse(self, decoded)
                    with self.slots.memory.reserve(self.slots.worker_charge(job), own):
                        async for event in fn(self, job, call):
                            yield self.slots.sized(event)

        return handler

    return wrap
