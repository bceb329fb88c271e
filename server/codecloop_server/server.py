"""Building, starting and stopping the gRPC server (health checking and reflection included)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from codecloop_server import corpus, x264_asm
from codecloop_server.detector import DetectorConfig, DetectorScorer
from codecloop_server.engine import Engine
from codecloop_server.folder_dataset import folder_dataset
from codecloop_server.lifecycle import LenientDecodingInterceptor, deny
from codecloop_server.metrics import Metrics
from codecloop_server.parse import Limits
from codecloop_server.scorers import ScorerRegistry
from codecloop_server.security import Authenticator, SecurityConfig, TokenInterceptor, add_port
from codecloop_server.service import CodecLoopServicer
from codecloop_server.versions import versions as codec_versions
from codecloop_server.video_source import CarrierPolicy
from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.v1 import codecloop_pb2 as pb
from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc

log = logging.getLogger("codecloop.server")
T = TypeVar("T")
R = TypeVar("R")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CodecLoop"].full_name


@dataclass
class ServerConfig:
    """Everything ``codecloop serve`` configures.

    Attributes:
        host, port: where to listen; port 0 picks a free port (see ``RunningServer.port``).
        workers: codec worker processes; None = one per CPU core.
        datasets: extra folder datasets, name -> folder (the embedded and real corpora are always present).
        clip_shape: (T, H, W) of the embedded/real corpora's and the folder datasets' clips; None: (16, 112, 112)
            for the corpora, and for a folder the shape of its first (N, T, H, W, 3) .npy.
        max_clips_per_source: clips taken from one video (or frame array), spread over its length (corpus.py).
        carriers: how the real corpus's and the folder datasets' video frames become clip frames:
            ``resize``, ``native`` or ``native:L`` (video_source.CarrierPolicy).
        strict_datasets: a folder file that gives no clip (unreadable, no video stream, too short) is an
            error instead of a skipped file with a warning.
        clean_cache_bytes: bound of the clean-clip cache in bytes.
        result_cache_entries: bound of the content-addressed result cache (0: off).
        max_queued_tasks: clip tasks queued over all clients before new requests get UNAVAILABLE.
        max_client_queued_tasks: clip tasks one client may have queued (RESOURCE_EXHAUSTED past it).
        max_concurrent_rpcs: Evaluate/Transcode calls in progress at once, over all clients
            (RESOURCE_EXHAUSTED past it).
        max_request_memory_bytes: the memory charged to the requests in progress (memory.py), in
            all; a request that would go over gets RESOURCE_EXHAUSTED before anything is decoded.
        task_timeout_s: a clip task running longer in a worker means the worker hangs: it is
            killed and replaced (workers.py); None = no limit.
        security: TLS, mutual TLS, bearer token, plaintext policy (security.py).
        metrics_port: Prometheus endpoint port on ``host`` (0 picks a free one); None = no endpoint.
        detectors: learned detectors (torch.export .pt2, or legacy TorchScript) to serve as scorers (detector.py); needs torch.
        x264_asm: x264's SIMD level (x264_asm.py): "auto" = the fastest deterministic level this
            CPU has; a level the CPU lacks is refused at start.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    workers: int | None = None
    datasets: dict[str, str] = field(default_factory=dict)
    clip_shape: tuple[int, int, int] | None = None
    max_clips_per_source: int = corpus.DEFAULT_MAX_CLIPS_PER_SOURCE
    carriers: str = "resize"
    strict_datasets: bool = False
    clean_cache_bytes: int = 2 << 30
    result_cache_entries: int = 200_000
    max_queued_tasks: int = 100_000
    max_client_queued_tasks: int = 20_000
    max_concurrent_rpcs: int = 64
    max_request_memory_bytes: int = 4 << 30
    task_timeout_s: float | None = 600.0
    security: SecurityConfig = field(default_factory=SecurityConfig)
    metrics_port: int | None = None
    detectors: tuple[DetectorConfig, ...] = ()
    limits: Limits = field(default_factory=Limits)
    x264_asm: str = "auto"


@dataclass
class RunningServer:
    server: grpc.aio.Server
    engine: Engine
    health: health.aio.HealthServicer
    port: int
    detectors: tuple[DetectorScorer, ...] = ()
    health_watch: asyncio.Task | None = None

    async def stop(self, grace: float | None = 5.0) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, let in-flight ones finish for ``grace`` s.
        Never waits on a hung or stopped worker for more than a few seconds (workers.py)."""
        if self.health_watch is not None:
            self.health_watch.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for det in self.detectors:
            await det.batcher.close()
        await asyncio.get_running_loop().run_in_executor(None, self.engine.close)


def load_datasets(config: ServerConfig) -> dict[str, corpus.Dataset]:
    shape = config.clip_shape or corpus.DEFAULT_CLIP_SHAPE
    corpus.check_max_clips_per_source(config.max_clips_per_source)
    policy = CarrierPolicy.parse(config.carriers)
    datasets = {corpus.EMBEDDED_NAME: corpus.embedded_corpus(shape)}
    try:
        datasets[corpus.REAL_NAME] = corpus.real_corpus(shape, config.max_clips_per_source, policy)
    except CodecLoopValueError as err:  # e.g. clips longer than 2 of its videos: serve the rest, say why
        log.warning("dataset %s not served: %s", corpus.REAL_NAME, err)
    for name, folder in config.datasets.items():
        corpus.check_dataset_name(name)
        if name in datasets:
            raise ValueError(f"dataset name {name!r} is already taken")
        datasets[name] = folder_dataset(name, folder, config.clip_shape, config.max_clips_per_source, policy, config.strict_datasets)
    return datasets


def load_detectors(
    config: ServerConfig, clip_shapes: set[tuple[int, int, int]], metrics: Metrics, registry: ScorerRegistry
) -> tuple[DetectorScorer, ...]:
    """Load, warm up and add to ``registry`` (the engine's: this server's alone) every configured
    detector (blocking; before health turns SERVING). A name already taken is registry.NameTaken."""
    from codecloop_server import detector

    loaded = []
    for cfg in config.detectors:
        det = detector.load(cfg, on_batch=metrics.detector_batch.observe)
        for shape in sorted(clip_shapes):
            det.batcher.warm_up(shape)
        det.clip_shapes = tuple(sorted(clip_shapes))
        registry.register(det)
        loaded.append(det)
        log.info("detector %s: %s", det.name, det.description)
    return tuple(loaded)


async def start(config: ServerConfig) -> RunningServer:
    """Load datasets, start and warm the workers, then serve; health turns SERVING last."""
    loop = asyncio.get_running_loop()
    level = x264_asm.configure(config.x264_asm)  # before any CodecSettings is made; refuses bad levels
    log.info("x264 runs at SIMD level %s", level)
    options = [
        ("grpc.max_receive_message_length", config.limits.max_message_bytes),
        ("grpc.max_send_message_length", config.limits.max_message_bytes),
        # HTTP/2 streams per connection (C core): bounds the requests one connection can have in
        # memory before the servicer's own per-client and total call limits see them
        ("grpc.max_concurrent_streams", config.max_concurrent_rpcs),
    ]
    auth = Authenticator(config.security.tokens(), mutual_tls=config.security.tls_client_ca is not None)
    interceptors = [LenientDecodingInterceptor()] + ([TokenInterceptor(auth, deny)] if config.security.token_file else [])
    # no grpc maximum_concurrent_rpcs: its aio limiter has had bugs; the servicer counts calls itself
    server = grpc.aio.server(options=options, interceptors=interceptors)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = add_port(server, config.host, config.port, config.security)
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}")
    try:
        datasets = await _in_daemon_thread(load_datasets, config)
    except BaseException:  # cancelled (a signal, the parent gone) or refused: release the port
        await server.stop(None)
        raise
    engine = Engine(
        config.workers, config.clean_cache_bytes, config.result_cache_entries, config.max_queued_tasks, config.max_client_queued_tasks,
        config.task_timeout_s,
    )  # fmt: skip
    try:
        for ds in datasets.values():
            engine.add_dataset(ds)
        await loop.run_in_executor(None, engine.warm_up)
        versions = await loop.run_in_executor(None, codec_versions)
        metrics = Metrics(engine)
        detectors = await loop.run_in_executor(None, load_detectors, config, {d.clip_shape for d in datasets.values()}, metrics, engine.scorers)
        if config.metrics_port is not None:
            metrics_port = metrics.serve(config.host, config.metrics_port)
            print(f"codecloop metrics on http://{config.host}:{metrics_port}/metrics", flush=True)
        servicer = CodecLoopServicer(
            engine, datasets, config.limits, versions, metrics, config.max_concurrent_rpcs, config.max_request_memory_bytes, auth
        )
        pb_grpc.add_CodecLoopServicer_to_server(servicer, server)
        await server.start()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    except BaseException:  # cancelled while warming up, or a refused detector file: stop the workers and free their shared memory
        await server.stop(None)
        await loop.run_in_executor(None, engine.close)
        raise
    watch = asyncio.ensure_future(_watch_workers(engine, health_servicer))
    log.info("codecloop serving on %s:%d with %d workers", config.host, port, engine.workers)
    return RunningServer(server=server, engine=engine, health=health_servicer, port=port, detectors=detectors, health_watch=watch)


async def _in_daemon_thread(fn: Callable[[T], R], arg: T) -> R:
    """``fn(arg)`` in a daemon thread. Loading datasets can take minutes (a large video, the first
    build of a corpus) or block in a read: awaiting it here can be cancelled, and a daemon thread,
    unlike the default executor's, does not keep the process from exiting once ``serve`` returns."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[R] = loop.create_future()

    def settle(result: R | None, err: BaseException | None) -> None:
        if done.cancelled():  # start-up was stopped: nobody waits for this any more
            return
        if err is not None:
            done.set_exception(err)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn(arg)
        except BaseException as err:  # handed to the awaiting coroutine, which raises it
            loop.call_soon_threadsafe(settle, None, err)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="codecloop-load", daemon=True).start()
    return await done


async def _watch_workers(engine: Engine, health_servicer: health.aio.HealthServicer, every_s: float = 0.5) -> None:
    """Health follows the workers: SERVING while at least one can make progress, else NOT_SERVING
    (all dead, stopped, or hung past the task timeout; workers.py replaces hung and dead ones)."""
    serving = True  # start() set SERVING after warming every worker up
    while True:
        alive = engine.pool.responsive() > 0
        if alive != serving:
            status = health_pb2.HealthCheckResponse.SERVING if alive else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, status)
            log.warning("codec workers: %s; health %s", "responsive again" if alive else "none responsive", health_pb2.HealthCheckResponse.ServingStatus.Name(status))
            serving = alive
        await asyncio.sleep(every_s)


async def serve(config: ServerConfig, exit_with_parent: bool = False, parent_pid: int | None = None) -> None:
    """Run until cancelled (Ctrl-C / SIGTERM), then stop gracefully.

    ``exit_with_parent``: also stop when the process that started this one dies (a private server
    of one client, ``codecloop.local``: no orphan servers even when the client is SIGKILLed), also
    while datasets load; ``parent_pid`` names that process (default: the parent now), so that a
    parent that died before this process got here is noticed too."""
    import os
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.ensure_future(_watch_parent(parent_pid or os.getppid(), stop)) if exit_with_parent else None
    starting = asyncio.ensure_future(start(config))
    stopping = asyncio.ensure_future(stop.wait())
    # a signal or the parent's death while datasets load ends start-up at once (start() releases the port)
    await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        log.warning("stopped while starting up")
    else:
        running = starting.result()  # raises start-up's error
        print(f"codecloop listening on {config.host}:{running.port}", flush=True)
        await stopping
        await running.stop()
    if watcher is not None:
        watcher.cancel()


async def _watch_parent(parent: int, stop: asyncio.Event, every_s: float = 0.5) -> None:
    """Set ``stop`` once this process's parent is no longer ``parent`` (it died; we were re-parented)."""
    import os

    while os.getppid() == parent:
        await asyncio.sleep(every_s)
    log.warning("parent process %d is gone: stopping", parent)
    stop.set()
