"""The worst channel decides, without paying every channel for every candidate.

With several codec settings or channels the run's objective is the worst of them, and a full
generation encodes every candidate through every one. With ``RunConfig.lead_channel = K`` a
generation has two stages (:func:`two_stages`):

1. every candidate through the **lead** channel only: the one that was the worst for the last
   generation's best candidate (the first generation evaluates everything and so finds it);
2. the best K of stage 1 through **every** channel (their lead-channel clips are answered by the
   server's result cache, not encoded again).

The optimizer is told a ranking: the K survivors first, in the order of their objective over every
channel (what a full generation would have told about them), then the others in their stage-1
order; CMA-ES and nevergrad read ranks only. A candidate left out of stage 2 is judged on the lead
channel, which is the hardest one for good candidates, so the ranking is the full one wherever it
matters most: at the top. Encodes per generation: P·N + K·N·(C − 1) instead of P·N·C (P
candidates, N clips, C channels); summary.json counts both (``channel_encodes``,
``channel_encodes_full``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from codecloop.objectives import Objective
from codecloop.results import CandidateResult, CodecStats, EvaluateResult
from codecloop.types import Channel, Codec

Lead = tuple[Codec | None, Channel | None]  # a codec setting given alone, or a (resolved) channel
# evaluate(candidate indices, lead or None for every channel) -> result
Evaluate = Callable[[Sequence[int], Lead | None], EvaluateResult]


def hardest(candidate: CandidateResult, objective: Objective) -> Lead:
    """The codec setting or channel where ``candidate`` scores worst by ``objective``."""
    worst: CodecStats = min(candidate.codecs, key=objective.codec)
    return (worst.codec, None) if worst.channel is None else (None, worst.channel)


def label(lead: Lead) -> str:
    codec, channel = lead
    return channel.label() if channel is not None else codec.label() if codec is not None else "-"


@dataclass(frozen=True)
class Generation:
    """A two-stage generation: per candidate its fitness (the objective over every channel for a
    survivor, over the lead channel for the others), the ranking told to the optimizer (bigger is
    better), the result it rests on, and how many channels it was scored through."""

    fitness: np.ndarray
    ranking: np.ndarray
    candidates: list[CandidateResult]
    channels: list[int]
    survivors: list[int]
    clip_ids: tuple[int, ...]
    encodes: int  # candidate x clip x channel evaluations asked of the server (stage 2's lead clips not counted: cached)
    full_encodes: int  # what one full generation would have asked
    lead: Lead | None = None  # the channel stage 1 ran through (None: one stage)


def full(result: EvaluateResult, objective: Objective) -> Generation:
    """A one-stage generation: every candidate through every channel (a race's order when raced:
    its candidates rest on different clips, only the race's order compares them)."""
    fitness = objective(result)
    count, channels = len(result.candidates), len(result.candidates[0].codecs)
    return Generation(
        fitness, result.race_fitness if result.raced else fitness, list(result.candidates), [channels] * count, [], tuple(result.clip_ids),
        sum(c.num_clips for c in result.candidates) * channels, len(result.clip_ids) * count * channels,
    )  # fmt: skip


def two_stages(evaluate: Evaluate, count: int, lead: Lead, survivors: int, objective: Objective) -> Generation:
    """Stage 1 for ``count`` candidates on ``lead``, stage 2 for the best ``survivors`` on every channel."""
    first = evaluate(range(count), lead)
    first_fitness = objective(first)
    order_value = first.race_fitness if first.raced else first_fitness
    order = sorted(range(count), key=lambda i: (-float(order_value[i]), i))
    kept = order[:survivors]
    second = evaluate(kept, None)
    second_fitness = objective(second)
    channels = len(second.candidates[0].codecs)
    kept_order = sorted(range(len(kept)), key=lambda j: (-float(second_fitness[j]), kept[j]))
    ranking = np.empty(count, dtype=np.float64)
    for rank, i in enumerate([kept[j] for j in kept_order] + order[survivors:]):
        ranking[i] = count - 1 - rank
    fitness = np.asarray(first_fitness, dtype=np.float64).copy()
    candidates = list(first.candidates)
    used = [1] * count
    for j, i in enumerate(kept):
        fitness[i], candidates[i], used[i] = second_fitness[j], second.candidates[j], channels
    clips = [c.num_clips for c in first.candidates]
    encodes = sum(clips) + sum(clips[i] for i in kept) * (channels - 1)
    return Generation(fitness, ranking, candidates, used, kept, tuple(first.clip_ids), encodes, len(second.clip_ids) * count * channels, lead)
