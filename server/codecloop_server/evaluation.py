"""One Evaluate request on the engine: its clean leases, candidates, race and callbacks.

The engine (engine.py) makes one :class:`Evaluation` per request and awaits :meth:`Evaluation.run`.
It acquires the request's clean entries (caches.py) while the candidates' templates are made,
then runs the race's rounds (:class:`Race`; one round of every candidate on every clip without a
race), scoring each candidate's clips through every channel (only the result cache's misses are
encoded). Cancelling ``run`` drops the request's queued tasks; everything the request holds is
released when it ends, however it ends.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Hashable
from dataclasses import replace
from typing import TYPE_CHECKING

from codecloop_server.caches import CleanEntry, CleanLease
from codecloop_server.jobs import CandidateFn, CandidateOutcome, EvaluateJob, ProgressFn, candidate_outcome
from codecloop_server.scoring import Candidate, Who, scoring_for
from codecloop_server.shm import SharedArray
from codecloop_server.tasks import ClipRef, PoisonedScore

if TYPE_CHECKING:
    from codecloop_server.engine import Engine


class Evaluation:
    """The state of one request on ``engine``: built (scorer resolved, tasks admitted in the fair
    scheduler for ``who`` = (client, priority)) here, run once by :meth:`run`.

    ``on_candidate(index, outcome)`` hears each candidate's outcome as soon as it is final;
    ``on_progress(done, total)`` each clip task done (a result-cache hit counts as done at once).
    """

    def __init__(
        self, engine: Engine, job: EvaluateJob, who: Who, on_candidate: CandidateFn | None = None, on_progress: ProgressFn | None = None
    ) -> None:
        self.engine, self.job, self.who = engine, job, who
        self.on_candidate, self.on_progress = on_candidate, on_progress
        self.scoring = scoring_for(engine.scorers, job.scorer, engine.submit, job.null_fprs is not None)
        self.total = job.clip_tasks()
        engine.scheduler.admit(who[0], self.total)
        self.done = 0
        self.source: SharedArray | None = None  # the request's inline clips, None for a dataset
        self.refs: list[ClipRef] = []
        self.candidates: list[Candidate] = []  # prepared so far, released when the request ends

    async def run(self) -> list[CandidateOutcome]:
        """One outcome per candidate, in order."""
        job = self.job
        lease = self.engine.clean_cache.lease()
        self.source, self.refs = self.engine.clip_source(job.carriers)
        pending: list[asyncio.Future[None]] = []
        try:
            clean = await self._clean_and_candidates(lease)
            race = Race(job, clean, self.on_candidate)
            before = 0
            for alive, clips in job.rounds():
                per_task = self.engine.clips_per_task(alive * (clips - before) * len(job.channels))
                running = race.start_round(alive)
                pending = [
                    asyncio.ensure_future(race.finish_when_done(i, self._clips(clean, i, before, clips, per_task, race.scores[i])))
                    for i in running
                ]
                await asyncio.gather(*pending)
                race.end_round(clips)
                before = clips
            return race.outcomes()
        finally:
            for p in pending:
                p.cancel()
            # released at once: tasks still queued or running hold their own references
            lease.release()
            for c in self.candidates:
                c.release()
            if self.source is not None:
                self.source.release()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _clean_and_candidates(self, lease: CleanLease) -> list[list[CleanEntry]]:
        """The clean entries per channel, per carrier; the candidates are prepared (one by one: a
        failure releases those made) while the workers run the clean tasks."""
        job, scoring = self.job, self.scoring
        acquiring = []
        for channel in job.channels:
            starts = [functools.partial(scoring.start_clean, self.who, self.source, ref, channel) for ref in self.refs]
            keys = [(key, channel, job.scorer) for key in job.carriers.keys]
            acquiring.append(asyncio.gather(*map(lease.acquire, keys, starts)))
        try:
            await asyncio.sleep(0)  # each acquire runs to its first await: the clean tasks are queued
            for sig in job.candidates:
                self.candidates.append(scoring.prepare(sig))
        except BaseException:
            for waiting in acquiring:
                waiting.cancel()
            raise
        return [list(entries) for entries in await asyncio.gather(*acquiring)]

    def _tick(self, clips: int) -> None:
        for _ in range(clips):
            self.done += 1
            if self.on_progress is not None:
                self.on_progress(self.done, self.total)

    async def _clips(
        self, clean: list[list[CleanEntry]], index: int, lo: int, hi: int, per_task: int, scores: list[list[PoisonedScore]]
    ) -> None:
        """Score candidate ``index`` on carriers ``lo:hi`` through every channel, ``per_task`` clips
        per task, and append the results to ``scores[channel]``. Every (signature, epsilon, clip,
        channel, scorer) result is cached: only the misses are encoded."""
        job, cache, candidate = self.job, self.engine.result_cache, self.candidates[index]
        digest = candidate.digest
        found: list[list[PoisonedScore | None]] = []
        futures: list[asyncio.Future[list[PoisonedScore]]] = []
        null = job.null_fprs is not None  # a result without z-scores cannot answer a request for them
        for c, (channel, entries) in enumerate(zip(job.channels, clean)):
            keys: list[Hashable] = [(digest, job.epsilon, key, channel, job.scorer, null) for key in job.carriers.keys[lo:hi]]
            row = [cache.get(k) for k in keys]
            found.append(row)
            self._tick(sum(r is not None for r in row))
            missing = [i for i, r in enumerate(row) if r is None]
            for start in range(0, len(missing), per_task):
                part = missing[start : start + per_task]

                def store(fut: asyncio.Future[list[PoisonedScore]], c: int = c, part: list[int] = part, keys: list[Hashable] = keys) -> None:
                    if fut.cancelled() or fut.exception() is not None:
                        return
                    for i, value in zip(part, fut.result()):
                        found[c][i] = value
                        cache.put(keys[i], value)
                    self._tick(len(part))

                fut = asyncio.ensure_future(
                    self.scoring.score(
                        self.who, self.source, [self.refs[lo + i] for i in part], [entries[lo + i] for i in part], candidate, job.epsilon,
                        channel,
                    )
                )  # fmt: skip
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


class Race:
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
