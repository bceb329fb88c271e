"""The Python SDK: a batched real-codec fitness function over gRPC."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import grpc
import numpy as np

from codecloop.channel import DEFAULT_MAX_MESSAGE_BYTES, channel_target, error_from, open_channel
from codecloop.options import Carriers, EvaluateOptions, as_batch, carriers_proto
from codecloop.results import CandidateDone, CandidateResult, ClipScores, CodecStats, EvaluateResult, Progress, StreamEvent, TranscodeResult
from codecloop.serverinfo import ServerInfo
from codecloop.types import Channel, Codec
from codecloop_wire.errors import CodecLoopLimitError, CodecLoopServerError, CodecLoopUnavailableError, CodecLoopValueError
from codecloop_wire.tensors import from_tensor, to_tensor
from codecloop_wire.v1 import codecloop_pb2 as pb
from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc


class Client:
    """Connection to a codecloop server, or to several replicas of it.

    Args:
        target: gRPC target, e.g. ``"127.0.0.1:50051"``; a list of ``ip:port`` replicas; or
            ``"dns:///codecloop:50051"`` (every address the name resolves to is a replica).
            None (the default): start a private server for this client on a free loopback port
            (:class:`codecloop.local.LocalServer`, the codec extra must be installed), stopped by
            ``close()``.
        datasets: with ``target=None`` only: folders the private server serves, name -> folder
            (besides the built-in ``embedded`` and ``real``).
        carriers: with ``target=None`` only: how the private server cuts clips from videos
            (``serve --carriers``): ``resize`` (its default), ``native`` or ``native:L``.
        server_args: with ``target=None`` only: more ``codecloop serve`` flags for the private
            server, e.g. ``["--strict-datasets"]``.
            Calls are spread over replicas round-robin; a call that finds its replica gone is
            retried on another (UNAVAILABLE, retry policy below).
        timeout: default deadline of every call, seconds.
        max_message_bytes: send/receive limit; populations larger than this are split across calls.
        max_attempts: gRPC retry attempts on UNAVAILABLE (exponential backoff from 0.2 s to 5 s);
            a server whose queue is full answers UNAVAILABLE too.
        client_id: how the server's fair scheduler tells this client apart (default: its address).
        replicas: split every population into at least this many requests, sent at once, so that a
            generation is spread over the replicas (default: the number of addresses in a list, else 1).
        token: bearer token sent with every call (server ``--token-file``).
        root_certificates: PEM of the CA that signed the server's certificate: TLS on (``tls=True``
            alone uses the system roots).
        certificate_chain, private_key: PEM client certificate and key, for mutual TLS.
    """

    def __init__(
        self,
        target: str | Sequence[str] | None = None,
        *,
        datasets: Mapping[str, str] | None = None,
        carriers: str | None = None,
        server_args: Sequence[str] = (),
        timeout: float = 600.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_attempts: int = 5,
        client_id: str | None = None,
        replicas: int | None = None,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
    ) -> None:
        self.local = None
        if target is None:
            from codecloop.local import LocalServer

            self.local = LocalServer(datasets, args=[*(["--carriers", carriers] if carriers else []), *server_args])
            target = self.local.start()
        elif datasets or carriers or server_args:
            raise CodecLoopValueError("datasets, carriers, server_args: only a private server (target=None) takes them; a running server has its own")
        self.target = channel_target(target)
        self.replicas = replicas if replicas is not None else (1 if isinstance(target, str) else len(target))
        if self.replicas < 1:
            raise CodecLoopValueError(f"replicas: {self.replicas} must be >= 1")
        # the server queues each client's clip tasks separately and serves them round-robin
        self._metadata: tuple[tuple[str, str], ...] = (("client-id", client_id),) if client_id else ()
        if token:
            self._metadata += (("authorization", f"Bearer {token}"),)
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self._channel = open_channel(self.target, max_message_bytes, max_attempts, tls, root_certificates, certificate_chain, private_key)
        self._stub = pb_grpc.CodecLoopStub(self._channel)

    def close(self) -> None:
        """Close the channel; a private server (``target=None``) is stopped too."""
        self._channel.close()
        if self.local is not None:
            self.local.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the channel connects (the server is up), or raise CodecLoopUnavailableError."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise CodecLoopUnavailableError(f"no codecloop server at {self.target} after {timeout} s") from None

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        """The server's grpc.health.v1 status of ``service`` ("" = the whole server): SERVING,
        NOT_SERVING, ...; raises CodecLoopUnavailableError when it cannot be reached."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise error_from(err) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def _meta(self, priority: int = 0) -> tuple[tuple[str, str], ...]:
        return self._metadata + ((("priority", str(priority)),) if priority else ())

    def _call(self, method, request, timeout: float | None, priority: int = 0):
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._meta(priority))
        except grpc.RpcError as err:
            raise error_from(err) from None

    def info(self, timeout: float | None = None) -> ServerInfo:
        """Versions, datasets, codecs, presets, scorers and limits of the server, typed
        (:class:`codecloop.serverinfo.ServerInfo`; ``info.dataset(name)`` finds one dataset)."""
        return ServerInfo.from_proto(self._call(self._stub.GetServerInfo, pb.GetServerInfoRequest(), timeout))

    def evaluate(
        self,
        signatures: Any,
        options: EvaluateOptions | None = None,
        *,
        timeout: float | None = None,
        priority: int = 0,
        **option_fields: Any,
    ) -> EvaluateResult:
        """Evaluate a population of signatures on the real codec; one result per candidate, in order.

        Args:
            signatures: (P, T, H, W, 3) float array / torch tensor, or a sequence of (T, H, W, 3);
                RGB in [-1, 1]; T = 1 repeats over time.
            options: an :class:`EvaluateOptions` (epsilon, carriers, codecs, scorer, decision rule,
                per-clip scores, wire dtype); its fields may also be given as keyword arguments,
                which override those of ``options``: ``evaluate(x, epsilon=2/255)``.
            timeout: deadline in seconds for the whole call (default: the client's).
            priority: in [-100, 100]; higher runs first on a shared server (e.g. validation calls).
        """
        requests = self._evaluate_requests(signatures, (options or EvaluateOptions()).updated(**option_fields))
        futures: list[Future] = [self._stub.EvaluateSignature.future(req, timeout=timeout or self.timeout, metadata=self._meta(priority)) for req in requests]
        try:
            responses = [f.result() for f in futures]
        except grpc.RpcError as err:
            for f in futures:
                f.cancel()
            raise error_from(err) from None
        first = responses[0]
        candidates = tuple(_candidate(r) for resp in responses for r in resp.results)
        expected = sum(len(r.candidates) for r in requests)
        if len(candidates) != expected:
            raise CodecLoopServerError(f"server returned {len(candidates)} results for {expected} candidates")
        return EvaluateResult(
            candidates=candidates,
            scorer=first.scorer,
            epsilon=first.epsilon,
            num_clips=first.num_clips,
            clip_ids=tuple(first.clip_ids),
            clip_sources=tuple(first.clip_sources),
            source_names=tuple(first.source_names),
        )

    def evaluate_stream(
        self,
        signatures: Any,
        options: EvaluateOptions | None = None,
        *,
        timeout: float | None = None,
        priority: int = 0,
        **option_fields: Any,
    ) -> Iterator[StreamEvent]:
        """Like :meth:`evaluate` (same arguments), but yields events as the server produces them.

        Yields :class:`Progress` (clip tasks done / total, over the whole population) and
        :class:`CandidateDone` (``index`` in the population, its :class:`CandidateResult`) as soon as
        each candidate's clips are all done, in completion order. Leaving the loop early cancels
        the server-side work.
        """
        requests = self._evaluate_requests(signatures, (options or EvaluateOptions()).updated(**option_fields))
        population = sum(len(r.candidates) for r in requests)
        offset = 0  # candidates in earlier chunks
        done_before = 0  # clip tasks of earlier chunks
        for req in requests:
            call = self._stub.EvaluateSignatureStream(req, timeout=timeout or self.timeout, metadata=self._meta(priority))
            try:
                for event in call:
                    kind = event.WhichOneof("event")
                    if kind == "started":
                        chunk_tasks = event.started.clip_tasks
                        # several chunks (never a race): each candidate costs the same
                        total = chunk_tasks if len(requests) == 1 else chunk_tasks // event.started.num_candidates * population
                    elif kind == "progress":
                        yield Progress(done_before + event.progress.clip_tasks_done, total)
                    elif kind == "result":
                        yield CandidateDone(offset + event.result.index, _candidate(event.result.result))
            except grpc.RpcError as err:
                raise error_from(err) from None
            finally:
                call.cancel()  # a no-op once complete; stops the server's work when the caller left early
            offset += len(req.candidates)
            done_before += chunk_tasks

    def _evaluate_requests(self, signatures: Any, options: EvaluateOptions) -> list[pb.EvaluateRequest]:
        """One request per chunk of the population (under the message limit)."""
        batch = as_batch(signatures)
        if not batch:
            raise CodecLoopValueError("signatures: the population is empty")
        template = options.to_proto()
        requests = []
        for chunk in self._chunks(template, [to_tensor(s, options.dtype) for s in batch]):
            req = pb.EvaluateRequest()
            req.CopyFrom(template)
            req.candidates.extend(chunk)
            requests.append(req)
        if len(requests) > 1 and options.racing is not None:
            raise CodecLoopValueError(
                f"racing: a race must see the whole population in one request, and these {len(batch)} signatures need "
                f"{len(requests)} (message limit {self.max_message_bytes} bytes); send fewer or smaller (dtype='int8') signatures"
            )
        return requests

    def fitness(self, signatures: Any, options: EvaluateOptions | None = None, **kwargs: Any) -> np.ndarray:
        """Batched fitness: (P,) float64, one per candidate, in order. **Bigger is better.**

        fitness = poisoned mean score - clean mean score after the real codec, on the worst codec
        setting requested. pycma and nevergrad minimize, so tell them the negation::

            es.tell(X, list(-client.fitness(batch)))

        ``options`` and keyword arguments are those of :meth:`evaluate`. With ``racing`` the values
        are the race's order, ``P - 1 - race_rank`` (:attr:`EvaluateResult.race_fitness`): raced
        candidates rest on different clips, so only their order is comparable; a rank-based
        optimizer (CMA-ES) sees exactly what the race decided.
        """
        return self.evaluate(signatures, options, **kwargs).race_fitness

    def transcode(
        self,
        signature: Any = None,
        *,
        epsilon: float | None = None,
        carriers: Carriers = None,
        codec: Codec | None = None,
        include_input: bool = False,
        timeout: float | None = None,
        priority: int = 0,
        channel: Channel | None = None,
    ) -> TranscodeResult:
        """The carriers (poisoned with ``signature`` when given) after the real codec.

        Returns uint8 (N, T, H, W, 3) decoded RGB clips, the encoder's input when ``include_input``,
        and the encoded size of each clip in bytes. ``epsilon``, ``carriers``, ``codec``: as in
        :class:`EvaluateOptions` (None: the server's default); ``channel``: a :class:`Channel`
        instead of ``codec`` (a preset must expand to one channel).
        """
        req = pb.TranscodeRequest(
            carriers=carriers_proto(carriers),
            epsilon=epsilon,  # None: unset, the server's default
            codec=(codec or Codec()).to_proto(),
            include_input=include_input,
        )
        if channel is not None:
            req.channel.CopyFrom(channel.to_proto())
        if signature is not None:
            sig = as_batch([signature])[0]
            req.signature.CopyFrom(to_tensor(sig, "float32"))
        resp = self._call(self._stub.Transcode, req, timeout, priority)
        return TranscodeResult(
            decoded=from_tensor(resp.decoded, "decoded"),
            inputs=from_tensor(resp.input, "input") if include_input else None,
            encoded_bytes=np.array(resp.encoded_bytes, dtype=np.int64),
            clip_ids=tuple(resp.clip_ids),
            codec=Codec.from_proto(resp.codec),
            channel=Channel.from_proto(resp.channel) if resp.HasField("channel") else None,
        )

    def score_clips(
        self, detector: str, clips: np.ndarray, signature: Any = None, *, timeout: float | None = None, priority: int = 0
    ) -> ClipScores:
        """Score clips with a detector the server serves (no codec runs: the clips as they are).

        Args:
            detector: its name (``info().scorers`` with ``clip_shapes``).
            clips: uint8 (N, T, H, W, 3) RGB, (T, H, W) one of the detector's ``clip_shapes``; N at
                most the server's ``max_clips``, and the clips under its message limit (one call).
            signature: the key, (T or 1, H, W, 3) in [-1, 1], for a detector that takes one (its
                ``null_model`` is true); None for a keyless detector.

        Returns:
            :class:`ClipScores`: per clip the score and, for a keyed detector, its z and p-value in
            the empirical null (the key moved to 16 lattice shifts, docs/statistics.md).
        """
        req = pb.ScoreClipsRequest(detector=detector, clips=to_tensor(np.asarray(clips), "uint8"))
        if signature is not None:
            req.signature.CopyFrom(to_tensor(as_batch([signature])[0], "float32"))
        resp = self._call(self._stub.ScoreClips, req, timeout, priority)
        z = np.array(resp.z, np.float64) if resp.z else None
        return ClipScores(np.array(resp.scores, np.float64), z, np.array(resp.p_values, np.float64) if resp.z else None, resp.null_model)

    def _chunks(self, template: pb.EvaluateRequest, tensors: list[pb.Tensor]) -> list[list[pb.Tensor]]:
        """Split candidates so every request stays under the message limit (with 1 MiB headroom),
        and into at least ``replicas`` requests (contiguous, near-equal) when there are enough."""
        parts = min(self.replicas, len(tensors))
        if parts > 1:
            bounds = np.linspace(0, len(tensors), parts + 1).round().astype(int)
            return [c for lo, hi in zip(bounds[:-1], bounds[1:]) for c in self._chunks_by_size(template, tensors[lo:hi])]
        return self._chunks_by_size(template, tensors)

    def _chunks_by_size(self, template: pb.EvaluateRequest, tensors: list[pb.Tensor]) -> list[list[pb.Tensor]]:
        budget = self.max_message_bytes - template.ByteSize() - (1 << 20)
        chunks: list[list[pb.Tensor]] = [[]]
        used = 0
        for i, t in enumerate(tensors):
            size = t.ByteSize() + 16  # field tag and length prefix
            if size > budget:
                raise CodecLoopLimitError(f"signatures[{i}]: {size} bytes on the wire exceed the message limit {self.max_message_bytes} (try dtype='float16' or 'int8')")
            if used + size > budget:
                chunks.append([])
                used = 0
            chunks[-1].append(t)
            used += size
        return chunks


def _candidate(msg: pb.CandidateResult) -> CandidateResult:
    return CandidateResult(
        fitness=msg.fitness,
        codecs=tuple(CodecStats.from_proto(c) for c in msg.codecs),
        fitness_mean=msg.fitness_mean,
        num_clips=msg.num_clips,
        race_rank=msg.race_rank if msg.HasField("race_rank") else None,
    )
