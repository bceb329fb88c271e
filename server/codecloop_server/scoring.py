"""How the engine scores a job's clips: one interface, two strategies.

* :class:`WorkerScoring` (scorers.Scorer): a codec worker encodes, decodes and scores; the clean
  side's features live in shared memory, each candidate ships a signature and a template.
* :class:`DetectorScoring` (detector.DetectorScorer): a worker encodes and decodes; the server
  process keeps the decoded clip and scores it in the detector's dynamic batches.

The engine calls :func:`scoring_for` once per job and then only the :class:`Scoring` methods.
ScoreClips (clips a client sends, no codec) goes straight to a detector's batches: :func:`score_clips`,
with the same empirical null (:func:`null_keys`) as an evaluation's.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from codecloop_server import scorers, tasks
from codecloop_server.caches import CleanEntry, signature_digest
from codecloop_server.channels import Channel
from codecloop_server.detector import DetectorScorer, DynamicBatcher
from codecloop_server.registry import shown
from codecloop_server.shm import SharedArray
from codecloop_server.tasks import CleanRef, ClipRef, PoisonedScore, ScorerKey
from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.null import empirical_z, key_shifts

Who = tuple[str, int]  # (client, priority) in the fair scheduler


class Submit(Protocol):
    """Queues one clip task in the fair scheduler (the engine's ``submit``)."""

    def __call__(
        self, who: Who, label: str, fn: Callable[..., Any], *args: Any, uses: Iterable[SharedArray | None] = (), weight: int = 1
    ) -> asyncio.Future[Any]: ...


@dataclass
class Candidate:
    """One candidate as its clip tasks read it: the signature and what the strategy derived from it,
    in shared memory until the request ends."""

    signature: np.ndarray  # float32 (T or 1, H, W, 3)
    shared: tuple[SharedArray, ...]  # the signature (and a worker scorer's template)
    template_sq: float = 0.0  # a worker scorer's template sum of squares
    null_keys: tuple[np.ndarray, ...] = ()  # a keyed detector's empirical null: the key at other lattice shifts
    digest: str = field(init=False)  # signature_digest(signature): its results' cache address, hashed once

    def __post_init__(self) -> None:
        self.digest = signature_digest(self.signature)

    def release(self) -> None:
        for a in self.shared:
            a.release()


class Scoring(ABC):
    """A scorer kind as the engine drives it."""

    def __init__(self, submit: Submit, scorer: ScorerKey) -> None:
        self.submit = submit
        self.scorer = scorer

    def start_clean(self, who: Who, source: SharedArray | None, ref: ClipRef, channel: Channel) -> asyncio.Future[CleanEntry]:
        """Queue the clean task now (while the caller still holds ``source``) and return the work
        that turns its result into a cache entry. Cancelling the work drops the task."""
        pending = self._internal_clean_task(who, source, ref, channel)
        work = asyncio.ensure_future(self._internal_clean_entry(pending))
        work.add_done_callback(lambda _: pending.cancel())  # also when cancelled before it ever awaited
        return work

    @abstractmethod
    def prepare(self, signature: np.ndarray) -> Candidate:
        """A candidate's shared arrays, made once per request (the caller releases them)."""

    @abstractmethod
    def score(
        self, who: Who, source: SharedArray | None, refs: list[ClipRef], entries: list[CleanEntry], candidate: Candidate, epsilon: float,
        channel: Channel,
    ) -> Awaitable[list[PoisonedScore]]:
        """One candidate on one or more clips, each against its clean entry; results in order."""

    @abstractmethod
    def _internal_clean_task(self, who: Who, source: SharedArray | None, ref: ClipRef, channel: Channel) -> asyncio.Future[Any]: ...

    @abstractmethod
    async def _internal_clean_entry(self, pending: asyncio.Future[Any]) -> CleanEntry: ...


class WorkerScoring(Scoring):
    def __init__(self, submit: Submit, scorer: ScorerKey, impl: scorers.Scorer, null: bool) -> None:
        super().__init__(submit, scorer)
        self.impl = impl
        self.null = null  # place every score in its null (null.py) too

    def _internal_clean_task(self, who: Who, source: SharedArray | None, ref: ClipRef, channel: Channel) -> asyncio.Future[Any]:
        return self.submit(who, "clean", tasks.clean_task, ref, channel, self.scorer, uses=(source,))

    async def _internal_clean_entry(self, pending: asyncio.Future[Any]) -> CleanEntry:
        features, clip_stats, nbytes = await pending
        shared, time_sum = SharedArray(features), SharedArray(clip_stats.time_sum)
        clean_ref = CleanRef(shared.ref, time_sum.ref, clip_stats.total, clip_stats.squares)
        return CleanEntry((shared, time_sum), clean_ref, nbytes)

    def prepare(self, signature: np.ndarray) -> Candidate:
        template = self.impl.template(signature, self.scorer[1])
        return Candidate(signature, (SharedArray(signature), SharedArray(template)), scorers.template_sq(template))

    def score(
        self, who: Who, source: SharedArray | None, refs: list[ClipRef], entries: list[CleanEntry], candidate: Candidate, epsilon: float,
        channel: Channel,
    ) -> Awaitable[list[PoisonedScore]]:
        """One task for all of them: the server process wakes once per task, not per clip."""
        sig, tmpl = candidate.shared
        clean: list[CleanRef] = [e.ref for e in entries if e.ref is not None]
        assert len(clean) == len(entries), "a worker scorer's clean entries have their features in shared memory"
        return self.submit(
            who, "poisoned", tasks.poisoned_task, list(zip(refs, clean)), sig.ref, tmpl.ref, candidate.template_sq, epsilon, channel,
            self.scorer, self.null, uses=(source, *(s for e in entries for s in e.shared), *candidate.shared), weight=len(refs),
        )  # fmt: skip


class DetectorScoring(Scoring):
    def __init__(self, submit: Submit, scorer: ScorerKey, impl: DetectorScorer, null: bool) -> None:
        super().__init__(submit, scorer)
        self.impl = impl
        self.null = null  # the empirical null (null.key_shifts): 2 x EMPIRICAL_SHIFTS more forwards per clip

    def _internal_clean_task(self, who: Who, source: SharedArray | None, ref: ClipRef, channel: Channel) -> asyncio.Future[Any]:
        return self.submit(who, "clean", tasks.decoded_task, ref, None, 0.0, channel, uses=(source,))

    async def _internal_clean_entry(self, pending: asyncio.Future[Any]) -> CleanEntry:
        decoded, nbytes, _ = await pending
        # a keyed detector scores the clean clip per candidate (against its key); a keyless one once
        score = None if self.impl.uses_key else await self.impl.batcher.score(decoded, None)
        return CleanEntry((), None, nbytes, decoded=decoded, score=score)

    def prepare(self, signature: np.ndarray) -> Candidate:
        keys = null_keys(signature, "null_model") if self.null else ()
        return Candidate(signature, (SharedArray(signature),), null_keys=keys)

    def score(
        self, who: Who, source: SharedArray | None, refs: list[ClipRef], entries: list[CleanEntry], candidate: Candidate, epsilon: float,
        channel: Channel,
    ) -> Awaitable[list[PoisonedScore]]:
        """One task per clip: each decoded clip goes to the detector's batches as soon as it is ready.
        One clip failing cancels the others (a finished gather would not)."""
        parts = [asyncio.ensure_future(self._score(who, source, r, e, candidate, epsilon, channel)) for r, e in zip(refs, entries)]
        together = asyncio.gather(*parts)

        def stop_the_rest(done: asyncio.Future[list[PoisonedScore]]) -> None:
            if done.cancelled() or done.exception() is not None:
                for part in parts:
                    part.cancel()

        together.add_done_callback(stop_the_rest)
        return together

    async def _score(
        self, who: Who, source: SharedArray | None, ref: ClipRef, entry: CleanEntry, candidate: Candidate, epsilon: float, channel: Channel
    ) -> PoisonedScore:
        (sig,) = candidate.shared
        decoded, nbytes, squared_error = await self.submit(
            who, "poisoned", tasks.decoded_task, ref, sig.ref, epsilon, channel, uses=(source, sig)
        )
        key = candidate.signature if self.impl.uses_key else None
        batcher = self.impl.batcher
        if entry.score is not None:
            poisoned, clean = await batcher.score(decoded, key), entry.score
        else:  # poisoned and clean go to the batcher together: one forward pass when it has room
            assert entry.decoded is not None, "a detector's clean entry keeps the decoded clip"
            poisoned, clean = await asyncio.gather(batcher.score(decoded, key), batcher.score(entry.decoded, key))
        if not candidate.null_keys:
            return PoisonedScore(poisoned, clean, nbytes, squared_error)
        clean_clip = entry.decoded
        assert clean_clip is not None, "a keyed detector's clean entry keeps the decoded clip"
        poisoned_z, clean_z = await _null_z(batcher, (decoded, clean_clip), (poisoned, clean), candidate.null_keys)
        return PoisonedScore(poisoned, clean, nbytes, squared_error, poisoned_z=poisoned_z, clean_z=clean_z)


def null_keys(signature: np.ndarray, field: str) -> tuple[np.ndarray, ...]:
    """The key moved to the empirical null's lattice shifts (codecloop_wire.null.key_shifts), or
    CodecLoopValueError naming ``field`` when the signature has too few shifts unrelated to itself."""
    try:
        return tuple(np.roll(signature, s, axis=(0, 1, 2)) for s in key_shifts(signature))
    except ValueError as err:
        raise CodecLoopValueError(f"{field}: {err} (a signature that repeats itself within 16 pixels or frames)") from None


async def _null_z(batcher: DynamicBatcher, clips: Iterable[np.ndarray], scores: Sequence[float], keys: tuple[np.ndarray, ...]) -> list[float]:
    """Each clip's score in units of its empirical null: the detector's scores of the same clip
    against every moved key (one batcher call each), then codecloop_wire.null.empirical_z."""
    nulls = await asyncio.gather(*(batcher.score(clip, k) for clip in clips for k in keys))
    n = len(keys)
    return [empirical_z(score, np.array(nulls[i * n : (i + 1) * n])) for i, score in enumerate(scores)]


def served_detector(registry: scorers.ScorerRegistry, name: str, field: str = "detector") -> DetectorScorer:
    """The detector of ``registry`` called ``name``; anything else (a built-in scorer, an unknown
    name) is CodecLoopValueError naming ``field`` and the detectors served."""
    served = {s.name: s for s in registry.values() if isinstance(s, DetectorScorer)}
    if name not in served:
        allowed = sorted(served) or "none (this server serves no detector: codecloop serve --detector NAME=FILE)"
        raise CodecLoopValueError(f"{field}: {shown(name)} is not a detector this server serves; allowed: {allowed}")
    return served[name]


def clip_shapes(impl: scorers.Registered) -> tuple[tuple[int, int, int], ...]:
    """The clip shapes (T, H, W) ScoreClips takes for a served detector; none for a built-in scorer."""
    return impl.clip_shapes if isinstance(impl, DetectorScorer) else ()


def forward_clips(registry: scorers.ScorerRegistry, name: str) -> int:
    """The clips one forward pass of detector ``name`` takes at most (1 for a name that is no detector:
    its request is refused once parsed)."""
    impl = next((s for s in registry.values() if s.name == name), None)
    return impl.batcher.config.max_batch_size if isinstance(impl, DetectorScorer) else 1


async def score_clips(
    registry: scorers.ScorerRegistry, name: str, clips: np.ndarray, signature: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Detector ``name``'s scores of uint8 ``clips`` (N, T, H, W, 3) as they are (no codec), in its
    dynamic batches, and for a keyed detector (``signature``: the key, float32 (T or 1, H, W, 3)) each
    score's z in the empirical null, exactly as an evaluation's null model makes it for a decoded clip.
    Returns float64 scores (N,) and z (N,) or None."""
    batcher = served_detector(registry, name).batcher
    keys = null_keys(signature, "signature") if signature is not None else ()
    scores = await asyncio.gather(*(batcher.score(clip, signature) for clip in clips))
    if signature is None:
        return np.array(scores, np.float64), None
    z = await _null_z(batcher, clips, scores, keys)
    return np.array(scores, np.float64), np.array(z, np.float64)


def scoring_for(registry: scorers.ScorerRegistry, scorer: ScorerKey, submit: Submit, null: bool = False) -> Scoring:
    """The strategy of the scorer ``scorer[0]`` of ``registry`` (the engine's): the one place the two
    kinds are told apart. ``null``: scores also in units of their null model (parse.py refuses it
    for keyless detectors)."""
    impl = registry.get(scorer[0])
    if isinstance(impl, DetectorScorer):
        assert not null or impl.uses_key, "a keyless detector has no null model"
        return DetectorScoring(submit, scorer, impl, null)
    if isinstance(impl, scorers.Scorer):
        return WorkerScoring(submit, scorer, impl, null)
    raise TypeError(f"scorer {scorer[0]!r} is of no known kind: {type(impl).__name__}")
