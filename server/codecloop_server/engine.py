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
Cancelling a request (client cancel, deadline) drops its queued tasks, clean ones included unless
another request still waits for the same clean entry; only the tasks already running in workers (at
most one per worker) finish, and their results are discarded.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from codecloop_server import scorers, tasks
from codecloop_server.codec import CodecSettings
from codecloop_server.corpus import Dataset
from codecloop_server.scheduler import FairScheduler
from codecloop_server.shm import SharedArray
from codecloop_server.tasks import CleanRef, ClipRef, PoisonedScore, ScorerKey
from codecloop_server.workers import WorkerPool
from codecloop_wire import stats

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
    inputs: np.ndarray | None  # uint8 (N, T, H, W, 3), when asked for
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

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shared) + (0 if self.decoded is None else self.decoded.nbytes)

    def release(self) -> None:
        """The cache lets go of its shared memory (tasks still reading it hold their own reference)."""
        for s in self.shared:
            s.release()


class _Slot:
    """One key of the clean cache: the work computing its entry, the entry once done, and how many
    requests hold it (wait for it or use it)."""

    __slots__ = ("key", "work", "entry", "holders")

    def __init__(self, key: Hashable, work: asyncio.Future[CleanEntry]) -> None:
        self.key = key
        self.work = work
        self.entry: CleanEntry | None = None
        self.holders = 0


class CleanCache:
    """LRU of clean entries, bounded by bytes.

    A request holds every key it uses in a :class:`CleanLease` from the moment it asks for it until
    the request ends, however it ends (done, failed, cancelled). One key is computed once however
    many requests wait for it. Held entries are never evicted; when the last holder of a key still
    being computed lets go, its work is cancelled (its queued clip task is dropped, never run).
    Eviction runs whenever an entry is completed or let go, so at every moment
    ``size_bytes <= max_bytes + bytes of the entries held by requests in progress``.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._slots: OrderedDict[Hashable, _Slot] = OrderedDict()
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0

    def lease(self) -> CleanLease:
        return CleanLease(self)

    def _hold(self, key: Hashable, start: Callable[[], asyncio.Future[CleanEntry]], held: list[_Slot]) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            self.misses += 1
            slot = self._slots[key] = _Slot(key, start())
            slot.work.add_done_callback(lambda _, s=slot: self._filled(s))
        else:
            self.hits += 1
            self._slots.move_to_end(key)
        slot.holders += 1
        held.append(slot)
        return slot

    def _filled(self, slot: _Slot) -> None:
        work = slot.work
        failed = work.cancelled() or work.exception() is not None  # exception() also marks it retrieved
        if self._slots.get(slot.key) is not slot:  # dropped while its result was on the way
            if not failed:
                work.result().release()
            return
        if failed:  # the next request for this key computes it again
            del self._slots[slot.key]
            return
        slot.entry = work.result()
        self.size_bytes += slot.entry.nbytes
        self._evict()

    def _let_go(self, slots: list[_Slot]) -> None:
        for slot in slots:
            slot.holders -= 1
            if slot.holders == 0 and not slot.work.done():
                # nobody waits for it any more: stop computing it
                if self._slots.get(slot.key) is slot:
                    del self._slots[slot.key]
                slot.work.cancel()
        self._evict()

    def _evict(self) -> None:
        for key, slot in list(self._slots.items()):
            if self.size_bytes <= self.max_bytes:
                return
            if slot.entry is not None and slot.holders == 0:
                del self._slots[key]
                self.size_bytes -= slot.entry.nbytes
                slot.entry.release()

    @property
    def held(self) -> int:
        """Keys held by requests in progress (waiting for or using them)."""
        return sum(1 for s in self._slots.values() if s.holders)

    def clear(self) -> None:
        for slot in self._slots.values():
            if slot.entry is not None:
                slot.entry.release()
            else:
                slot.work.cancel()
        self._slots.clear()
        self.size_bytes = 0


class CleanLease:
    """The clean-cache keys one request holds; :meth:`release` (once, when the request ends) lets
    go of all of them, including those whose computation it was still waiting for."""

    def __init__(self, cache: CleanCache) -> None:
        self._cache = cache
        self._held: list[_Slot] = []
        self._released = False

    async def acquire(self, key: Hashable, start: Callable[[], asyncio.Future[CleanEntry]]) -> CleanEntry:
        """The entry for ``key``; on a miss ``start()`` begins computing it (called synchronously).

        The key is held from this call on, before any await, so no cancellation can lose it.
        """
        if self._released:
            raise RuntimeError("clean lease used after its request ended")
        slot = self._cache._hold(key, start, self._held)
        # shield: one holder being cancelled must not cancel the computation others wait on
        return await asyncio.shield(slot.work)

    def release(self) -> None:
        held, self._held, self._released = self._held, [], True
        self._cache._let_go(held)


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

    Shared memory: the clips of a request's inline carriers, its signatures (and templates) and the
    clean cache's features are segments that every clip task reading them holds until it has
    stopped (``_run``'s ``uses``), so cancelling a request frees nothing a queued or running task
    still reads. Memory bound: README "Memory bound" (memory.py charges each request at admission).
    """

    def __init__(
        self,
        workers: int | None = None,
        clean_cache_bytes: int = 2 << 30,
        result_cache_entries: int = 200_000,
        max_queued_tasks: int = 100_000,
        max_client_queued_tasks: int | None = None,
        task_timeout_s: float | None = None,
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        # One thread per worker: parallelism is across clips. Spawned workers inherit these before
        # numpy loads, so no BLAS/OpenMP thread pool oversubscribes the cores.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
        self.pool = WorkerPool(self.workers, task_timeout_s)
        # workers + 1 in flight: no worker idles between tasks, and the rest stays in fair queues
        self.scheduler = FairScheduler(self.pool, self.workers + 1, max_queued_tasks, max_client_queued_tasks)
        self.clean_cache = CleanCache(clean_cache_bytes)
        self.result_cache = ResultCache(result_cache_entries)
        self._datasets: dict[str, tuple[Dataset, SharedArray]] = {}

    @property
    def counters(self) -> Counter[str]:
        """Clips through the codec in a worker, by kind (clean_encodes, poisoned_encodes,
        transcode_encodes): every task that ran, also one whose request was gone when it ended."""
        return Counter({f"{label}_encodes": n for label, n in self.scheduler.ran.items()})

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
            pids.update(f.result() for f in [self.pool.submit(tasks.warm_task) for _ in range(self.workers)])

    def close(self) -> None:
        self.scheduler.close()
        self.clean_cache.clear()
        for _, shared in self._datasets.values():
            shared.release()
        self._datasets.clear()

    def _run(self, who: tuple[str, int], label: str, fn: Callable[..., Any], *args: Any, uses: Iterable[SharedArray | None] = ()) -> asyncio.Future[Any]:
        """Queue a clip task for client ``who[0]`` at priority ``who[1]``, counted as ``label`` once it
        ran. ``uses``: the shared arrays it reads, held from now until the task has stopped (ran, or
        was dropped from the queue)."""
        held = [s.retain() for s in uses if s is not None]

        def let_go() -> None:
            for s in held:
                s.release()

        return self.scheduler.submit(who[0], who[1], fn, *args, label=label, on_finish=let_go)

    def _clip_source(self, carriers: CarrierSet) -> tuple[SharedArray | None, list[ClipRef]]:
        """The carriers' clips as task references, and the segment the caller must release: None for
        a dataset (its segment lives as long as the server), else one new segment holding the
        request's inline clips once (each task copies only its own clip out of it)."""
        if carriers.inline is None:
            source = self._datasets[carriers.dataset][1].ref
            return None, [ClipRef(source, i) for i in carriers.clip_ids]
        shared = SharedArray(carriers.inline)
        return shared, [ClipRef(shared.ref, i) for i in range(len(carriers))]

    def _start_clean(self, who: tuple[str, int], source: SharedArray | None, ref: ClipRef, codec: CodecSettings, scorer: ScorerKey) -> asyncio.Future[CleanEntry]:
        """Queue the clean task now (while the caller still holds ``source``) and return the work that
        turns its result into a cache entry. Cancelling the work drops the task."""
        impl = scorers.get(scorer[0])
        if impl.runs_in_workers:
            pending = self._run(who, "clean", tasks.clean_task, ref, codec, scorer, uses=(source,))
        else:  # a detector: the worker encodes and decodes, this process keeps the decoded clip
            pending = self._run(who, "clean", tasks.decoded_task, ref, None, 0.0, codec, uses=(source,))
        work = asyncio.ensure_future(self._finish_clean(impl, pending))
        work.add_done_callback(lambda _: pending.cancel())  # also when cancelled before it ever awaited
        return work

    @staticmethod
    async def _finish_clean(impl: scorers.Scorer, pending: asyncio.Future[Any]) -> CleanEntry:
        if not impl.runs_in_workers:
            decoded, nbytes, _ = await pending
            score = None if impl.uses_key else await impl.batcher.score(decoded, None)
            return CleanEntry((), None, nbytes, decoded=decoded, score=score)
        features, clip_stats, nbytes = await pending
        shared, time_sum = SharedArray(features), SharedArray(clip_stats.time_sum)
        clean_ref = CleanRef(shared.ref, time_sum.ref, clip_stats.total, clip_stats.squares)
        return CleanEntry((shared, time_sum), clean_ref, nbytes)

    async def _detector_score(
        self,
        who: tuple[str, int],
        impl: DetectorScorer,
        source: SharedArray | None,
        ref: ClipRef,
        entry: CleanEntry,
        sig: np.ndarray,
        sig_shared: SharedArray,
        epsilon: float,
        codec: CodecSettings,
    ) -> PoisonedScore:
        """One candidate on one clip with a detector: the worker encodes and decodes, the batcher scores."""
        decoded, nbytes, squared_error = await self._run(
            who, "poisoned", tasks.decoded_task, ref, sig_shared.ref, epsilon, codec, uses=(source, sig_shared)
        )
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
        """One outcome per candidate, in order. Cancelling this coroutine drops its queued tasks,
        clean ones included (unless another request still waits for the same clean entry).

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

        lease = self.clean_cache.lease()
        source, refs = self._clip_source(job.carriers)
        signatures: list[tuple[SharedArray, ...]] = []  # per candidate: signature (and template)
        pending: list[asyncio.Future[CandidateOutcome]] = []
        try:
            clean: list[list[CleanEntry]] = []
            for codec in job.codecs:
                starts = [functools.partial(self._start_clean, who, source, ref, codec, job.scorer) for ref in refs]
                keys = [(key, codec, job.scorer) for key in job.carriers.keys]
                clean.append(list(await asyncio.gather(*map(lease.acquire, keys, starts))))

            t_sqs = []
            for sig in job.candidates:
                if impl.runs_in_workers:
                    tmpl = impl.template(sig, job.scorer[1])
                    signatures.append((SharedArray(sig), SharedArray(tmpl)))
                    t_sqs.append(scorers.template_sq(tmpl))
                else:
                    signatures.append((SharedArray(sig),))

            def clip_task(index: int, ref: ClipRef, entry: CleanEntry, codec: CodecSettings) -> Awaitable[PoisonedScore]:
                sig = signatures[index]
                if not impl.runs_in_workers:
                    return self._detector_score(who, impl, source, ref, entry, job.candidates[index], sig[0], job.epsilon, codec)
                return self._run(
                    who, "poisoned", tasks.poisoned_task, ref, entry.ref, sig[0].ref, sig[1].ref, t_sqs[index], job.epsilon, codec,
                    job.scorer, uses=(source, *entry.shared, *sig),
                )  # fmt: skip

            async def candidate(index: int) -> CandidateOutcome:
                digest = signature_digest(job.candidates[index])
                futures = []
                for codec, entries in zip(job.codecs, clean):
                    for key, ref, entry in zip(job.carriers.keys, refs, entries):
                        fut = asyncio.ensure_future(
                            self._score(
                                (digest, job.epsilon, key, codec, job.scorer),
                                lambda i=index, r=ref, e=entry, c=codec: clip_task(i, r, e, c),
                            )
                        )
                        fut.add_done_callback(tick)
                        futures.append(fut)
                try:
                    flat = await asyncio.gather(*futures)
                finally:
                    for fut in futures:  # one failed: the rest of this candidate is not needed
                        fut.cancel()
                n = len(refs)
                results = [flat[i * n : (i + 1) * n] for i in range(len(job.codecs))]
                outcome = _candidate_outcome(job, results, clean)
                if on_candidate is not None:
                    on_candidate(index, outcome)
                return outcome

            pending = [asyncio.ensure_future(candidate(i)) for i in range(len(job.candidates))]
            return list(await asyncio.gather(*pending))
        finally:
            for p in pending:
                p.cancel()
            # released at once: tasks still queued or running hold their own references
            lease.release()
            for arrays in signatures:
                for a in arrays:
                    a.release()
            if source is not None:
                source.release()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def transcode(
        self,
        carriers: CarrierSet,
        signature: np.ndarray | None,
        epsilon: float,
        codec: CodecSettings,
        include_input: bool = False,
        client: str = "anonymous",
        priority: int = 0,
    ) -> TranscodeOutcome:
        """The carriers through the codec (poisoned with ``signature`` when given). Outputs are filled
        clip by clip as tasks finish, so the server holds each decoded clip about once."""
        self.scheduler.admit(client, len(carriers))
        who = (client, priority)
        source, refs = self._clip_source(carriers)
        sig = SharedArray(signature) if signature is not None else None
        futures: list[asyncio.Future[Any]] = []
        try:
            futures = [
                self._run(who, "transcode", tasks.transcode_task, ref, sig.ref if sig else None, epsilon, codec, include_input, uses=(source, sig))
                for ref in refs
            ]
        finally:
            for owned in (sig, source):  # the tasks hold their own references from here
                if owned is not None:
                    owned.release()
        shape = (len(carriers), *carriers.clip_shape, 3)
        decoded = np.empty(shape, np.uint8)
        inputs = np.empty(shape, np.uint8) if include_input else None
        sizes = []
        try:
            for i, fut in enumerate(futures):
                marked, decoded[i], nbytes = await fut
                if inputs is not None:
                    inputs[i] = marked
                sizes.append(nbytes)
        finally:
            for fut in futures:  # cancelled or failed: drop what is still queued
                fut.cancel()
        return TranscodeOutcome(inputs=inputs, decoded=decoded, encoded_bytes=tuple(sizes))

    def load(self) -> dict[str, float]:
        """Counters and cache state for GetServerInfo."""
        return {
            **{k: float(v) for k, v in self.counters.items()},
            "clean_cache_bytes": float(self.clean_cache.size_bytes),
            "clean_cache_held": float(self.clean_cache.held),
            "clean_cache_hits": float(self.clean_cache.hits),
            "clean_cache_misses": float(self.clean_cache.misses),
            "result_cache_hits": float(self.result_cache.hits),
            "result_cache_misses": float(self.result_cache.misses),
            "queued_tasks": float(self.scheduler.queued),
            "tasks_in_flight": float(self.scheduler.in_flight),
            "worker_restarts": float(self.scheduler.restarts),
            "workers_responsive": float(self.pool.responsive()),
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
