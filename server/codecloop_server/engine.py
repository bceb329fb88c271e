"""The scheduler: turns a validated job into clip-level tasks on a pool of codec worker processes.

Transport-free: the gRPC layer (service.py) parses requests into the job types here and maps the
errors. Frames never travel with a task: dataset clips live in shared memory for the server's
lifetime, a request's signatures and inline clips for the request's, and a task carries references.

Work is done once:
* clean work (each carrier clip through each codec setting, and the scorer's features of it) is
  cached in :class:`CleanCache` and shared by every candidate, request and client, so a warm
  generation of P candidates on N clips costs P x N encodes, not (P + 1) x N;
* every (signature, epsilon, clip, codec, scorer) result is kept in a bounded content-addressed
  cache, so a repeated evaluation is answered without encoding.

Tasks are queued in candidate order, so candidates finish (and stream out) roughly in order.
Cancelling a request (client cancel, deadline) cancels its queued tasks; only the tasks already
running in workers (at most one per worker, plus one queued each) finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Hashable

import numpy as np
from codecloop import stats

from codecloop_server import scorers, tasks
from codecloop_server.codec import CodecSettings
from codecloop_server.corpus import Dataset
from codecloop_server.scheduler import FairScheduler
from codecloop_server.shm import ArrayRef, SharedArray
from codecloop_server.tasks import CleanRef, ClipRef, PoisonedScore, ScorerKey
from codecloop_server.workers import WorkerPool

if TYPE_CHECKING:
    from codecloop_server.detector import DetectorScorer


@dataclass(frozen=True)
class CarrierSet:
    """Resolved carriers: either ``clip_ids`` of ``dataset`` or ``inline`` uint8 (N, T, H, W, 3)."""

    keys: tuple[Hashable, ...]  # a cache identity per clip
    clip_shape: tuple[int, int, int]  # (T, H, W)
    dataset: str | None = None
    clip_ids: tuple[int, ...] = ()
    inline: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)


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


@dataclass
class CleanEntry:
    """A clean clip after one codec setting. For a worker scorer: its features and their time sum
    in shared memory (``ref`` for tasks); for a detector: the decoded clip and, when the detector
    takes no key, its score (a keyed detector scores it per candidate)."""

    shared: tuple[SharedArray, ...]
    ref: CleanRef | None
    encoded_bytes: int
    decoded: np.ndarray | None = None  # uint8 (T, H, W, 3), detectors only
    score: float | None = None
    pins: int = 0

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shared) + (0 if self.decoded is None else self.decoded.nbytes)

    def release(self) -> None:
        for s in self.shared:
            s.release()


class CleanCache:
    """LRU of clean entries, bounded by bytes. Entries in use by a request are pinned (never
    evicted under it); concurrent requests for one key share one computation."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, asyncio.Future[CleanEntry]] = OrderedDict()
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0

    async def acquire(self, key: Hashable, compute: Callable[[], Awaitable[CleanEntry]]) -> CleanEntry:
        fut = self._entries.get(key)
        if fut is not None:
            self.hits += 1
            self._entries.move_to_end(key)
        else:
            self.misses += 1
            fut = self._entries[key] = asyncio.ensure_future(self._fill(key, compute))
        # shield: one waiter being cancelled must not cancel the computation others wait on
        entry = await asyncio.shield(fut)
        entry.pins += 1
        return entry

    async def _fill(self, key: Hashable, compute: Callable[[], Awaitable[CleanEntry]]) -> CleanEntry:
        try:
            entry = await compute()
        except BaseException:
            self._entries.pop(key, None)  # failed or cancelled: the next caller computes it again
            raise
        self.size_bytes += entry.nbytes
        return entry

    def release(self, entry: CleanEntry) -> None:
        entry.pins -= 1
        self._evict()

    def _evict(self) -> None:
        for key in list(self._entries):
            if self.size_bytes <= self.max_bytes:
                return
            fut = self._entries[key]
            if fut.done() and fut.result().pins == 0:
                del self._entries[key]
                self.size_bytes -= fut.result().nbytes
                fut.result().release()

    def clear(self) -> None:
        for fut in self._entries.values():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fut.result().release()
        self._entries.clear()
        self.size_bytes = 0


class ResultCache:
    """Content-addressed results: (signature digest, epsilon, clip, codec, scorer) -> PoisonedScore."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, PoisonedScore] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> PoisonedScore | None:
        hit = self._entries.get(key)
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
            self._entries.move_to_end(key)
        return hit

    def put(self, key: Hashable, value: PoisonedScore) -> None:
        self._entries[key] = value
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def signature_digest(sig: np.ndarray) -> str:
    """Content address of a float32 signature (shape and bytes)."""
    h = hashlib.sha256(repr(sig.shape).encode())
    h.update(np.ascontiguousarray(sig, dtype=np.float32).tobytes())
    return h.hexdigest()


ProgressFn = Callable[[int, int], None]  # (clip tasks done, total)
CandidateFn = Callable[[int, CandidateOutcome], None]


class Engine:
    """Runs jobs on ``workers`` codec processes (spawned: no forked gRPC threads).

    Memory bound (resident): dataset clips (N x T x H x W x 3 bytes each, once, shared) +
    ``clean_cache_bytes`` (+ the clean entries pinned by running requests) + per request its
    signatures (twice: float32 and the float64 template) and inline clips + per worker one clip's
    working set (about 30 x T x H x W x 3 bytes) + ``result_cache_entries`` x ~300 bytes.
    """

    def __init__(
        self,
        workers: int | None = None,
        clean_cache_bytes: int = 2 << 30,
        result_cache_entries: int = 200_000,
        max_queued_tasks: int = 100_000,
        max_client_queued_tasks: int | None = None,
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        # One thread per worker: parallelism is across clips. Spawned workers inherit these before
        # numpy loads, so no BLAS/OpenMP thread pool oversubscribes the cores.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
        # workers + 1 in flight: no worker idles between tasks, and the rest stays in fair queues
        self.scheduler = FairScheduler(WorkerPool(self.workers), self.workers + 1, max_queued_tasks, max_client_queued_tasks)
        self.clean_cache = CleanCache(clean_cache_bytes)
        self.result_cache = ResultCache(result_cache_entries)
        self.counters: Counter[str] = Counter()  # clean_encodes, poisoned_encodes, transcode_encodes
        self._datasets: dict[str, tuple[Dataset, SharedArray]] = {}

    def add_dataset(self, ds: Dataset) -> Dataset:
        """Move the dataset's clips into shared memory (``ds.clips`` becomes a view of it)."""
        shared = SharedArray(ds.clips, persistent=True)
        ds.clips = shared.array
        self._datasets[ds.name] = (ds, shared)
        return ds

    def warm_up(self) -> None:
        """Start every worker and run one real encode in each, so the first request pays no imports."""
        pids: set[int] = set()
        for _ in range(10):
            if len(pids) == self.workers:
                break
            pool = self.scheduler.pool
            pids.update(f.result() for f in [pool.submit(tasks.warm_task) for _ in range(self.workers)])

    def close(self) -> None:
        self.scheduler.close()
        self.clean_cache.clear()
        for _, shared in self._datasets.values():
            shared.release()
        self._datasets.clear()

    def _run(self, who: tuple[str, int], fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue a clip task for client ``who[0]`` at priority ``who[1]``."""
        return self.scheduler.submit(who[0], who[1], fn, *args)

    @contextlib.asynccontextmanager
    async def _clip_refs(self, carriers: CarrierSet) -> AsyncIterator[list[ClipRef]]:
        if carriers.inline is None:
            source = self._datasets[carriers.dataset][1].ref
            yield [ClipRef(source, i) for i in carriers.clip_ids]
            return
        shared = SharedArray(carriers.inline)
        try:
            yield [ClipRef(shared.ref, i) for i in range(len(carriers))]
        finally:
            shared.release()

    async def _clean_entry(self, who: tuple[str, int], ref: ClipRef, codec: CodecSettings, scorer: ScorerKey) -> CleanEntry:
        impl = scorers.get(scorer[0])
        if not impl.runs_in_workers:  # a detector: keep the decoded clip in this process
            decoded, nbytes, _ = await self._run(who, tasks.decoded_task, ref, None, 0.0, codec)
            self.counters["clean_encodes"] += 1
            score = None if impl.uses_key else await impl.batcher.score(decoded, None)
            return CleanEntry((), None, nbytes, decoded=decoded, score=score)
        features, clip_stats, nbytes = await self._run(who, tasks.clean_task, ref, codec, scorer)
        self.counters["clean_encodes"] += 1
        shared, time_sum = SharedArray(features), SharedArray(clip_stats.time_sum)
        clean_ref = CleanRef(shared.ref, time_sum.ref, clip_stats.total, clip_stats.squares)
        return CleanEntry((shared, time_sum), clean_ref, nbytes)

    async def _detector_score(
        self,
        who: tuple[str, int],
        impl: DetectorScorer,
        ref: ClipRef,
        entry: CleanEntry,
        sig: np.ndarray,
        sig_ref: ArrayRef,
        epsilon: float,
        codec: CodecSettings,
    ) -> PoisonedScore:
        """One candidate on one clip with a detector: the worker encodes and decodes, the batcher scores."""
        decoded, nbytes, squared_error = await self._run(who, tasks.decoded_task, ref, sig_ref, epsilon, codec)
        key = sig if impl.uses_key else None
        if entry.score is not None:
            poisoned, clean = await impl.batcher.score(decoded, key), entry.score
        else:  # poisoned and clean go to the batcher together: one forward pass when it has room
            poisoned, clean = await asyncio.gather(impl.batcher.score(decoded, key), impl.batcher.score(entry.decoded, key))
        return PoisonedScore(poisoned, clean, nbytes, squared_error)

    async def _score(self, key: Hashable, run: Callable[[], Awaitable[PoisonedScore]]) -> PoisonedScore:
        hit = self.result_cache.get(key)
        if hit is not None:
            return hit
        value = await run()
        self.counters["poisoned_encodes"] += 1
        self.result_cache.put(key, value)
        return value

    async def evaluate(
        self,
        job: EvaluateJob,
        on_candidate: CandidateFn | None = None,
        on_progress: ProgressFn | None = None,
        client: str = "anonymous",
        priority: int = 0,
    ) -> list[CandidateOutcome]:
        """One outcome per candidate, in order. Cancelling this coroutine drops its queued tasks.

        ``client`` and ``priority`` place its tasks in the fair scheduler (scheduler.py).
        """
        impl = scorers.get(job.scorer[0])
        total = len(job.candidates) * len(job.codecs) * len(job.carriers)
        self.scheduler.admit(client, total)
        who = (client, priority)
        done = 0

        def tick(fut: asyncio.Future[PoisonedScore]) -> None:
            nonlocal done
            if fut.cancelled():
                return
            done += 1
            if on_progress is not None:
                on_progress(done, total)

        pinned: list[CleanEntry] = []
        shared: list[tuple[SharedArray, ...]] = []  # per candidate: signature (and template)
        pending: list[asyncio.Future[CandidateOutcome]] = []
        async with self._clip_refs(job.carriers) as refs:
            try:
                for codec in job.codecs:
                    acquired = await asyncio.gather(
                        *(
                            self.clean_cache.acquire((key, codec, job.scorer), lambda r=ref, c=codec: self._clean_entry(who, r, c, job.scorer))
                            for key, ref in zip(job.carriers.keys, refs)
                        ),
                        return_exceptions=True,
                    )
                    pinned.extend(e for e in acquired if isinstance(e, CleanEntry))
                    for e in acquired:
                        if isinstance(e, BaseException):
                            raise e
                n = len(refs)
                clean = [pinned[i * n : (i + 1) * n] for i in range(len(job.codecs))]

                t_sqs = []
                for sig in job.candidates:
                    if impl.runs_in_workers:
                        tmpl = impl.template(sig, job.scorer[1])
                        shared.append((SharedArray(sig), SharedArray(tmpl)))
                        t_sqs.append(scorers.template_sq(tmpl))
                    else:
                        shared.append((SharedArray(sig),))

                def clip_task(index: int, ref: ClipRef, entry: CleanEntry, codec: CodecSettings) -> Awaitable[PoisonedScore]:
                    sig_ref = shared[index][0].ref
                    if not impl.runs_in_workers:
                        return self._detector_score(who, impl, ref, entry, job.candidates[index], sig_ref, job.epsilon, codec)
                    tmpl, t_sq = shared[index][1], t_sqs[index]
                    return self._run(who, tasks.poisoned_task, ref, entry.ref, sig_ref, tmpl.ref, t_sq, job.epsilon, codec, job.scorer)

                async def candidate(index: int) -> CandidateOutcome:
                    digest = signature_digest(job.candidates[index])
                    per_codec = []
                    for codec, entries in zip(job.codecs, clean):
                        futures = []
                        for key, ref, entry in zip(job.carriers.keys, refs, entries):
                            fut = asyncio.ensure_future(
                                self._score(
                                    (digest, job.epsilon, key, codec, job.scorer),
                                    lambda i=index, r=ref, e=entry, c=codec: clip_task(i, r, e, c),
                                )
                            )
                            fut.add_done_callback(tick)
                            futures.append(fut)
                        per_codec.append(futures)
                    results = [await asyncio.gather(*f) for f in per_codec]
                    outcome = _candidate_outcome(job, results, clean)
                    if on_candidate is not None:
                        on_candidate(index, outcome)
                    return outcome

                pending = [asyncio.ensure_future(candidate(i)) for i in range(len(job.candidates))]
                return list(await asyncio.gather(*pending))
            finally:
                for p in pending:
                    p.cancel()
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
                for entry in pinned:
                    self.clean_cache.release(entry)
                for arrays in shared:
                    for a in arrays:
                        a.release()

    async def transcode(
        self,
        carriers: CarrierSet,
        signature: np.ndarray | None,
        epsilon: float,
        codec: CodecSettings,
        client: str = "anonymous",
        priority: int = 0,
    ) -> TranscodeOutcome:
        self.scheduler.admit(client, len(carriers))
        sig = SharedArray(signature) if signature is not None else None
        try:
            async with self._clip_refs(carriers) as refs:
                results = await asyncio.gather(
                    *(self._run((client, priority), tasks.transcode_task, ref, sig.ref if sig else None, epsilon, codec) for ref in refs)
                )
        finally:
            if sig is not None:
                sig.release()
        self.counters["transcode_encodes"] += len(results)
        return TranscodeOutcome(
            inputs=np.stack([r[0] for r in results]),
            decoded=np.stack([r[1] for r in results]),
            encoded_bytes=tuple(r[2] for r in results),
        )

    def load(self) -> dict[str, float]:
        """Counters and cache state for GetServerInfo."""
        return {
            **{k: float(v) for k, v in self.counters.items()},
            "clean_cache_bytes": float(self.clean_cache.size_bytes),
            "clean_cache_hits": float(self.clean_cache.hits),
            "clean_cache_misses": float(self.clean_cache.misses),
            "result_cache_hits": float(self.result_cache.hits),
            "result_cache_misses": float(self.result_cache.misses),
            "queued_tasks": float(self.scheduler.queued),
            "tasks_in_flight": float(self.scheduler.in_flight),
            "worker_restarts": float(self.scheduler.restarts),
            **{f"queued_tasks{{client={c}}}": float(n) for c, n in self.scheduler.queued_by_client().items()},
            **{f"dispatched_tasks{{client={c}}}": float(n) for c, n in self.scheduler.dispatched.items()},
        }


def _candidate_outcome(
    job: EvaluateJob, results: list[list[PoisonedScore]], clean: list[list[CleanEntry]]
) -> CandidateOutcome:
    values_per_clip = int(np.prod(job.carriers.clip_shape)) * 3
    codecs = []
    for codec, per_clip, entries in zip(job.codecs, results, clean):
        poisoned = np.array([r.poisoned for r in per_clip])
        clean_scores = np.array([r.clean for r in per_clip])
        codecs.append(
            CodecOutcome(
                codec=codec,
                stats=stats.detection_stats(clean_scores, poisoned, job.decision),
                psnr_db=stats.psnr_db(sum(r.squared_error for r in per_clip), values_per_clip * len(per_clip)),
                clean_bytes_mean=float(np.mean([e.encoded_bytes for e in entries])),
                poisoned_bytes_mean=float(np.mean([r.encoded_bytes for r in per_clip])),
                clean_scores=clean_scores,
                poisoned_scores=poisoned,
            )
        )
    return CandidateOutcome(fitness=min(c.stats["separation"] for c in codecs), codecs=tuple(codecs))
