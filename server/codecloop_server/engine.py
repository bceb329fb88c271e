"""The engine: turns a validated job into clip-level tasks on a pool of codec worker processes.

Transport-free: the gRPC layer (service.py, lifecycle.py) parses requests into jobs (jobs.py, parse.py) and maps
the errors. Frames never travel with a task: dataset clips live in shared memory for the server's
lifetime, a request's signatures and inline clips for the request's, and a task carries references.

Work is done once (caches.py): clean work per (clip, channel, scorer) is shared by every candidate,
request and client; every (signature, epsilon, clip, channel, scorer) result is kept. How a clip is
scored is the job's scoring strategy (scoring.py: in the codec workers, or by a detector here).

Tasks are queued in candidate order, so candidates finish (and stream out) roughly in order.
Cancelling a request (client cancel, deadline) drops its queued tasks, clean ones included unless
another request still waits for the same clean entry; only the tasks already running in workers (at
most one per worker) finish, and their results are discarded.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from codecloop_server import scoring, tasks
from codecloop_server.caches import CleanCache, ResultCache
from codecloop_server.corpus import Dataset
from codecloop_server.evaluation import Evaluation
from codecloop_server.jobs import (
    CandidateFn,
    CandidateOutcome,
    CarrierSet,
    ClipScores,
    EngineStats,
    EvaluateJob,
    ProgressFn,
    ScoreClipsJob,
    TranscodeJob,
    TranscodeOutcome,
)
from codecloop_server.scheduler import FairScheduler
from codecloop_server.scorers import ScorerRegistry
from codecloop_server.scoring import Who
from codecloop_server.shm import SharedArray
from codecloop_server.tasks import ClipRef
from codecloop_server.workers import WorkerPool

MAX_CLIPS_PER_TASK = 4  # poisoned clips of one candidate in one worker task


class Engine:
    """Runs jobs on ``workers`` codec processes (spawned: no forked gRPC threads).

    Shared memory: the clips of a request's inline carriers, its signatures (and templates) and the
    clean cache's features are segments that every clip task reading them holds until it has
    stopped (``submit``'s ``uses``), so cancelling a request frees nothing a queued or running task
    still reads. Memory bound: docs/operations.md "Memory bound" (memory.py charges each request at admission).
    """

    def __init__(
        self,
        workers: int | None = None,
        clean_cache_bytes: int = 2 << 30,
        result_cache_entries: int = 200_000,
        max_queued_tasks: int = 100_000,
        max_client_queued_tasks: int | None = None,
        task_timeout_s: float | None = None,
        scorers: ScorerRegistry | None = None,
    ) -> None:
        """``scorers``: the scorers this engine offers (default: the built-ins); the server adds its
        detectors to it, so that no other engine in the process sees them."""
        self.scorers = scorers if scorers is not None else ScorerRegistry.builtins()
        self.workers = workers or os.cpu_count() or 1
        # One thread per worker: parallelism is across clips. Spawned workers inherit these before
        # numpy loads, so no BLAS/OpenMP thread pool oversubscribes the cores.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
        # SVT-AV1 prints its whole configuration to stderr on every encoder open; errors only
        os.environ.setdefault("SVT_LOG", "1")
        self.pool = WorkerPool(self.workers, task_timeout_s)
        # workers + 1 in flight: no worker idles between tasks, and the rest stays in fair queues
        self.scheduler = FairScheduler(self.pool, self.workers + 1, max_queued_tasks, max_client_queued_tasks)
        self.clean_cache = CleanCache(clean_cache_bytes)
        self.result_cache = ResultCache(result_cache_entries)
        self._datasets: dict[str, SharedArray] = {}  # dataset name -> its clips in shared memory
        self._source_side: dict[str, Callable[[int], int | None]] = {}  # dataset name -> Dataset.source_side

    @property
    def counters(self) -> Counter[str]:
        """Clips through the codec in a worker, by kind (clean_encodes, poisoned_encodes,
        transcode_encodes): every task that ran, also one whose request was gone when it ended."""
        return Counter({f"{label}_encodes": n for label, n in self.scheduler.ran.items()})

    def add_dataset(self, ds: Dataset) -> Dataset:
        """Move the dataset's clips into shared memory (``ds.clips`` becomes a view of it)."""
        shared = SharedArray(ds.clips, persistent=True)
        ds.clips = shared.array
        self._datasets[ds.name] = shared
        self._source_side[ds.name] = ds.source_side
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
        for shared in self._datasets.values():
            shared.release()
        self._datasets.clear()

    def submit(
        self, who: Who, label: str, fn: Callable[..., Any], *args: Any, uses: Iterable[SharedArray | None] = (), weight: int = 1
    ) -> asyncio.Future[Any]:
        """Queue a clip task (``weight`` clips) for client ``who[0]`` at priority ``who[1]``, counted as
        ``label`` once it ran. ``uses``: the shared arrays it reads, held from now until the task has
        stopped (ran, or was dropped from the queue)."""
        held = [s.retain() for s in uses if s is not None]

        def let_go() -> None:
            for s in held:
                s.release()

        return self.scheduler.submit(who[0], who[1], fn, *args, label=label, on_finish=let_go, weight=weight)

    def clip_source(self, carriers: CarrierSet) -> tuple[SharedArray | None, list[ClipRef]]:
        """The carriers' clips as task references, and the segment the caller must release: None for
        a dataset (its segment lives as long as the server), else one new segment holding the
        request's inline clips once (each task copies only its own clip out of it)."""
        if carriers.inline is None:
            assert carriers.dataset is not None, "carriers are inline clips or a dataset"
            source, side = self._datasets[carriers.dataset].ref, self._source_side[carriers.dataset]
            return None, [ClipRef(source, i, side(i)) for i in carriers.clip_ids]
        shared = SharedArray(carriers.inline)
        return shared, [ClipRef(shared.ref, i) for i in range(len(carriers))]

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

        ``client`` and ``priority`` place its tasks in the fair scheduler (scheduler.py). A race
        (``job.racing``) runs its rounds here; without one there is a single round of every
        candidate on every clip. The request's state lives in one evaluation.Evaluation.
        """
        return await Evaluation(self, job, (client, priority), on_candidate, on_progress).run()

    def clips_per_task(self, clips: int) -> int:
        """Clips per poisoned task for a round of ``clips`` candidate-clips: up to MAX_CLIPS_PER_TASK
        (each task costs the server process a wake-up and some bookkeeping between the workers'
        encodes), but small enough that every worker gets at least 8 tasks (no worker idles long
        at the end of a round while another finishes a big task)."""
        return max(1, min(MAX_CLIPS_PER_TASK, clips // (8 * self.workers)))

    async def score_clips(self, job: ScoreClipsJob) -> ClipScores:
        """The clips of ``job`` scored by its detector (scoring.score_clips): no codec worker runs;
        the detector's dynamic batches are shared with every evaluation and client."""
        scores, z = await scoring.score_clips(self.scorers, job.detector, job.clips, job.signature)
        return ClipScores(scores, z)

    async def transcode(self, job: TranscodeJob, client: str = "anonymous", priority: int = 0) -> TranscodeOutcome:
        """The carriers through the channel (poisoned with ``job.signature`` when given). Outputs are
        filled clip by clip as tasks finish, so the server holds each decoded clip about once."""
        carriers = job.carriers
        self.scheduler.admit(client, len(carriers))
        who: Who = (client, priority)
        source, refs = self.clip_source(carriers)
        sig = SharedArray(job.signature) if job.signature is not None else None
        futures: list[asyncio.Future[Any]] = []
        try:
            futures = [
                self.submit(
                    who, "transcode", tasks.transcode_task, ref, sig.ref if sig else None, job.epsilon, job.channel, job.include_input,
                    uses=(source, sig),
                )
                for ref in refs
            ]  # fmt: skip
        finally:
            for owned in (sig, source):  # the tasks hold their own references from here
                if owned is not None:
                    owned.release()
        shape = (len(carriers), *carriers.clip_shape, 3)
        decoded = np.empty(shape, np.uint8)
        inputs = np.empty(shape, np.uint8) if job.include_input else None
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

    def stats(self) -> EngineStats:
        """Counters and cache state now (GetServerInfo's load, the Prometheus metrics)."""
        return EngineStats(
            workers=self.workers,
            encodes=dict(self.scheduler.ran),
            clean_cache_bytes=self.clean_cache.size_bytes,
            clean_cache_held=self.clean_cache.held,
            clean_cache_hits=self.clean_cache.hits,
            clean_cache_misses=self.clean_cache.misses,
            result_cache_hits=self.result_cache.hits,
            result_cache_misses=self.result_cache.misses,
            queued_tasks=self.scheduler.queued,
            tasks_in_flight=self.scheduler.in_flight,
            worker_restarts=self.scheduler.restarts,
            workers_responsive=self.pool.responsive(),
            queued_by_client=self.scheduler.queued_by_client(),
            dispatched_by_client=dict(self.scheduler.dispatched),
        )
