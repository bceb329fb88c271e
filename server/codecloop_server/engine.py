"""The engine: turns a validated job into clip-level tasks on a pool of codec worker processes.

Transport-free: the gRPC layer (service.py) parses requests into jobs (jobs.py, parse.py) and maps
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
import functools
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import replace
from typing import Any

import numpy as np

from codecloop_server import tasks
from codecloop_server.caches import CleanCache, CleanEntry, ResultCache
from codecloop_server.channels import Channel
from codecloop_server.corpus import Dataset
from codecloop_server.jobs import CandidateFn, CandidateOutcome, CarrierSet, EvaluateJob, ProgressFn, TranscodeOutcome, candidate_outcome
from codecloop_server.scheduler import FairScheduler
from codecloop_server.scoring import Candidate, Scoring, Who, scoring_for
from codecloop_server.shm import SharedArray
from codecloop_server.tasks import ClipRef, PoisonedScore
from codecloop_server.workers import WorkerPool

MAX_CLIPS_PER_TASK = 4  # poisoned clips of one candidate in one worker task


class Engine:
    """Runs jobs on ``workers`` codec processes (spawned: no forked gRPC threads).

    Shared memory: the clips of a request's inline carriers, its signatures (and templates) and the
    clean cache's features are segments that every clip task reading them holds until it has
    stopped (``_run``'s ``uses``), so cancelling a request frees nothing a queued or running task
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
    ) -> None:
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

    def _run(
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

    def _clip_source(self, carriers: CarrierSet) -> tuple[SharedArray | None, list[ClipRef]]:
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
        candidate on every clip.
        """
        scoring = scoring_for(job.scorer, self._run, job.null_fprs is not None)
        total = job.clip_tasks()
        self.scheduler.admit(client, total)
        who: Who = (client, priority)
        done = 0

        def tick(clips: int) -> None:
            nonlocal done
            for _ in range(clips):
                done += 1
                if on_progress is not None:
                    on_progress(done, total)

        lease = self.clean_cache.lease()
        source, refs = self._clip_source(job.carriers)
        candidates: list[Candidate] = []
        pending: list[asyncio.Future[None]] = []
        try:
            acquiring = []
            for channel in job.channels:
                starts = [functools.partial(scoring.start_clean, who, source, ref, channel) for ref in refs]
                keys = [(key, channel, job.scorer) for key in job.carriers.keys]
                acquiring.append(asyncio.gather(*map(lease.acquire, keys, starts)))
            try:
                await asyncio.sleep(0)  # each acquire runs to its first await: the clean tasks are queued
                for sig in job.candidates:  # the templates are made while the workers run those clean tasks
                    candidates.append(scoring.prepare(sig))  # one by one: a failure releases those made
            except BaseException:
                for waiting in acquiring:
                    waiting.cancel()
                raise
            clean: list[list[CleanEntry]] = [list(entries) for entries in await asyncio.gather(*acquiring)]
            race = _Race(job, clean, on_candidate)
            before = 0
            for alive, clips in job.rounds():
                per_task = self._clips_per_task(alive * (clips - before) * len(job.channels))

                def add(index: int, lo: int = before, hi: int = clips, k: int = per_task) -> Awaitable[None]:
                    return self._clips(job, scoring, who, source, refs, clean, candidates[index], lo, hi, k, tick, race.scores[index])

                running = race.start_round(alive)
                pending = [asyncio.ensure_future(race.finish_when_done(i, add(i))) for i in running]
                await asyncio.gather(*pending)
                race.end_round(clips)
                before = clips
            return race.outcomes()
        finally:
            for p in pending:
                p.cancel()
            # released at once: tasks still queued or running hold their own references
            lease.release()
            for c in candidates:
                c.release()
            if source is not None:
                source.release()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def _clips_per_task(self, clips: int) -> int:
        """Clips per poisoned task for a round of ``clips`` candidate-clips: up to MAX_CLIPS_PER_TASK
        (each task costs the server process a wake-up and some bookkeeping between the workers'
        encodes), but small enough that every worker gets at least 8 tasks (no worker idles long
        at the end of a round while another finishes a big task)."""
        return max(1, min(MAX_CLIPS_PER_TASK, clips // (8 * self.workers)))

    async def _clips(
        self,
        job: EvaluateJob,
        scoring: Scoring,
        who: Who,
        source: SharedArray | None,
        refs: list[ClipRef],
        clean: list[list[CleanEntry]],
        candidate: Candidate,
        lo: int,
        hi: int,
        per_task: int,
        tick: Callable[[int], None],
        scores: list[list[PoisonedScore]],
    ) -> None:
        """Score ``candidate`` on carriers ``lo:hi`` through every channel, ``per_task`` clips per
        task, and append the results to ``scores[channel]``. Every (signature, epsilon, clip,
        channel, scorer) result is cached: only the misses are encoded."""
        digest = candidate.digest
        found: list[list[PoisonedScore | None]] = []
        futures: list[asyncio.Future[list[PoisonedScore]]] = []
        null = job.null_fprs is not None  # a result without z-scores cannot answer a request for them
        for c, (channel, entries) in enumerate(zip(job.channels, clean)):
            keys: list[Hashable] = [(digest, job.epsilon, key, channel, job.scorer, null) for key in job.carriers.keys[lo:hi]]
            row = [self.result_cache.get(k) for k in keys]
            found.append(row)
            tick(sum(r is not None for r in row))
            missing = [i for i, r in enumerate(row) if r is None]
            for start in range(0, len(missing), per_task):
                part = missing[start : start + per_task]

                def store(fut: asyncio.Future[list[PoisonedScore]], c: int = c, part: list[int] = part, keys: list[Hashable] = keys) -> None:
                    if fut.cancelled() or fut.exception() is not None:
                        return
                    for i, value in zip(part, fut.result()):
                        found[c][i] = value
                        self.result_cache.put(keys[i], value)
                    tick(len(part))

                fut = asyncio.ensure_future(
                    scoring.score(who, source, [refs[lo + i] for i in part], [entries[lo + i] for i in part], candidate, job.epsilon, channel)
                )
                fut.add_done_callback(store)
                futures.append(fut)
        try:
            await asyncio.gather(*futures)
        finally:
            for f in futures:  # one failed: the rest of this candidate is not needed
                f.cancel()
        for c, row in enumerate(found):
            scores[c].extend(r for r in row if r is not None)
            assert len(scores[c]) == hi, "every clip of the round has its result"

    async def transcode(
        self,
        carriers: CarrierSet,
        signature: np.ndarray | None,
        epsilon: float,
        channel: Channel,
        include_input: bool = False,
        client: str = "anonymous",
        priority: int = 0,
    ) -> TranscodeOutcome:
        """The carriers through the channel (poisoned with ``signature`` when given). Outputs are filled
        clip by clip as tasks finish, so the server holds each decoded clip about once."""
        self.scheduler.admit(client, len(carriers))
        who: Who = (client, priority)
        source, refs = self._clip_source(carriers)
        sig = SharedArray(signature) if signature is not None else None
        futures: list[asyncio.Future[Any]] = []
        try:
            futures = [
                self._run(who, "transcode", tasks.transcode_task, ref, sig.ref if sig else None, epsilon, channel, include_input, uses=(source, sig))
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


class _Race:
    """The bookkeeping of an evaluation's rounds: which candidates are still in, their scores so
    far, and their outcomes. Without racing there is one round, and each candidate's outcome is
    reported (``on_candidate``) as soon as its clips are done; in a race, a candidate's outcome is
    reported when a round drops it, the finalists' when the last round ends (their ranks need all)."""

    def __init__(self, job: EvaluateJob, clean: list[list[CleanEntry]], on_candidate: CandidateFn | None) -> None:
        self.job, self.on_candidate = job, on_candidate
        self.clean_bytes = [[e.encoded_bytes for e in entries] for entries in clean]
        count = len(job.candidates)
        self.scores: list[list[list[PoisonedScore]]] = [[[] for _ in job.channels] for _ in range(count)]
        self.alive = list(range(count))  # in the race's order after each round
        self.ranked: list[CandidateOutcome | None] = [None] * count

    def start_round(self, alive: int) -> list[int]:
        """The candidates of the next round: the best ``alive`` of the last round's order."""
        self.alive = self.alive[:alive]
        return self.alive

    async def finish_when_done(self, index: int, work: Awaitable[None]) -> None:
        await work
        if self.job.racing is None:  # no ranks to wait for: report it now
            self._report(index, candidate_outcome(self.job, self.scores[index], self.clean_bytes))

    def end_round(self, clips: int) -> None:
        """Rank the round's candidates by race value on their ``clips``; report those the next round
        drops (all of them after the last round) with their ranks."""
        racing = self.job.racing
        if racing is None:
            return
        outcomes = {i: candidate_outcome(self.job, self.scores[i], self.clean_bytes) for i in self.alive}
        self.alive.sort(key=lambda i: (-racing.value(outcomes[i]), i))
        rounds = self.job.rounds()
        last = clips == rounds[-1][1]
        keep = 0 if last else next(alive for alive, n in rounds if n > clips)
        for i in sorted(self.alive[keep:]):
            self._report(i, replace(outcomes[i], race_rank=self.alive.index(i)))

    def _report(self, index: int, outcome: CandidateOutcome) -> None:
        self.ranked[index] = outcome
        if self.on_candidate is not None:
            self.on_candidate(index, outcome)

    def outcomes(self) -> list[CandidateOutcome]:
        assert all(o is not None for o in self.ranked), "every candidate was reported"
        return [o for o in self.ranked if o is not None]
