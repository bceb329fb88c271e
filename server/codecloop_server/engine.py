"""The scheduler: turns a validated job into clip-level tasks on a pool of codec worker processes.

Transport-free: the gRPC layer (service.py) parses requests into the job types here and maps the
errors. Clean work (the carrier through the codec, and the scorer's features of it) is computed
once per (clip, codec settings, scorer) and shared by every candidate, request and client through
:class:`CleanCache`; a population of P candidates on N clips costs P x N encodes once warm.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections import OrderedDict
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import numpy as np

from codecloop_server import stats, tasks
from codecloop_server.codec import CodecSettings
from codecloop_server.tasks import CleanClip, PoisonedScore, ScorerKey


@dataclass(frozen=True)
class CarrierSet:
    """Resolved carriers: uint8 clips (N, T, H, W, 3), a cache identity per clip, dataset indices."""

    clips: np.ndarray
    keys: tuple[Hashable, ...]
    clip_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class EvaluateJob:
    candidates: tuple[np.ndarray, ...]  # float32 (T or 1, H, W, 3) in [-1, 1]
    epsilon: float
    carriers: CarrierSet
    codecs: tuple[CodecSettings, ...]
    scorer: ScorerKey
    decision: stats.Decision
    per_clip: bool = False


@dataclass(frozen=True)
class CodecOutcome:
    codec: CodecSettings
    stats: dict[str, Any]
    psnr_db: float
    clean_bytes_mean: float
    poisoned_bytes_mean: float
    clean_scores: np.ndarray
    poisoned_scores: np.ndarray


@dataclass(frozen=True)
class CandidateOutcome:
    fitness: float  # min over codecs of separation
    codecs: tuple[CodecOutcome, ...]


@dataclass(frozen=True)
class TranscodeOutcome:
    inputs: np.ndarray  # uint8 (N, T, H, W, 3)
    decoded: np.ndarray  # uint8 (N, T, H, W, 3)
    encoded_bytes: tuple[int, ...]


class CleanCache:
    """LRU of clean clips by bytes; concurrent requests for one key share one computation."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, asyncio.Future[CleanClip]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    async def get(self, key: Hashable, compute: Callable[[], asyncio.Future[CleanClip]]) -> CleanClip:
        fut = self._entries.get(key)
        if fut is not None and not (fut.done() and (fut.cancelled() or fut.exception())):
            self.hits += 1
            self._entries.move_to_end(key)
            # shield: one waiter being cancelled must not cancel the computation others wait on
            return await asyncio.shield(fut)
        self.misses += 1
        fut = compute()
        self._entries[key] = fut
        try:
            value = await asyncio.shield(fut)
        except BaseException:
            if self._entries.get(key) is fut and fut.done():
                del self._entries[key]  # failed or cancelled: the next caller computes it again
            raise
        self._bytes += value.nbytes
        self._evict()
        return value

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            key, fut = next(iter(self._entries.items()))
            if not fut.done():
                break
            del self._entries[key]
            if not fut.cancelled() and fut.exception() is None:
                self._bytes -= fut.result().nbytes

    @property
    def size_bytes(self) -> int:
        return self._bytes


class Engine:
    """Runs jobs on ``workers`` codec processes (spawned: no forked gRPC threads)."""

    def __init__(self, workers: int | None = None, clean_cache_bytes: int = 2 << 30) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool: Executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        self.clean_cache = CleanCache(clean_cache_bytes)

    def warm_up(self) -> None:
        """Start every worker and run one real encode in each, so the first request pays no imports."""
        clip = np.zeros((2, 16, 16, 3), np.uint8)
        futures = [self._pool.submit(tasks.transcode_task, clip, None, 0.0, CodecSettings()) for _ in range(self.workers)]
        for f in futures:
            f.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _clean(self, carriers: CarrierSet, codec: CodecSettings, scorer: ScorerKey) -> list[CleanClip]:
        return await asyncio.gather(
            *(
                self.clean_cache.get((key, codec, scorer), lambda c=clip: self._run(tasks.clean_task, c, codec, scorer))
                for key, clip in zip(carriers.keys, carriers.clips)
            )
        )

    async def evaluate(self, job: EvaluateJob) -> list[CandidateOutcome]:
        """One outcome per candidate, in order. Cancelling this coroutine drops its queued tasks."""
        clean = await asyncio.gather(*(self._clean(job.carriers, c, job.scorer) for c in job.codecs))
        pending = [
            [
                asyncio.gather(
                    *(
                        self._run(tasks.poisoned_task, clip, cc, sig, job.epsilon, codec, job.scorer)
                        for clip, cc in zip(job.carriers.clips, clean_clips)
                    )
                )
                for codec, clean_clips in zip(job.codecs, clean)
            ]
            for sig in job.candidates
        ]
        scores: list[list[list[PoisonedScore]]] = []
        try:
            for per_codec in pending:
                scores.append([await g for g in per_codec])
        finally:
            for per_codec in pending:
                for g in per_codec:
                    g.cancel()
        values_per_clip = job.carriers.clips[0].size
        outcomes = []
        for per_codec in scores:
            codecs = tuple(
                _codec_outcome(codec, results, [c.encoded_bytes for c in clean_clips], job.decision, values_per_clip)
                for codec, results, clean_clips in zip(job.codecs, per_codec, clean)
            )
            outcomes.append(CandidateOutcome(fitness=min(c.stats["separation"] for c in codecs), codecs=codecs))
        return outcomes

    async def transcode(
        self, carriers: CarrierSet, signature: np.ndarray | None, epsilon: float, codec: CodecSettings
    ) -> TranscodeOutcome:
        results = await asyncio.gather(
            *(self._run(tasks.transcode_task, clip, signature, epsilon, codec) for clip in carriers.clips)
        )
        return TranscodeOutcome(
            inputs=np.stack([r[0] for r in results]),
            decoded=np.stack([r[1] for r in results]),
            encoded_bytes=tuple(r[2] for r in results),
        )


def _codec_outcome(
    codec: CodecSettings,
    results: list[PoisonedScore],
    clean_bytes: list[int],
    decision: stats.Decision,
    values_per_clip: int,
) -> CodecOutcome:
    poisoned = np.array([r.poisoned for r in results])
    clean = np.array([r.clean for r in results])
    return CodecOutcome(
        codec=codec,
        stats=stats.detection_stats(clean, poisoned, decision),
        psnr_db=stats.psnr_db(sum(r.squared_error for r in results), values_per_clip * len(results)),
        clean_bytes_mean=float(np.mean(clean_bytes)),
        poisoned_bytes_mean=float(np.mean([r.encoded_bytes for r in results])),
        clean_scores=clean,
        poisoned_scores=poisoned,
    )
