"""The worst channel decides without every channel for every candidate (codecloop.leadchannel):
stage 1 through the hardest channel, stage 2 for the best K through all; the ranking, the lead
channel and the encodes saved, on the real codec."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from codecloop import Channel, Codec, DatasetCarriers, EvaluateOptions
from codecloop.leadchannel import hardest, label, two_stages
from codecloop.optimize import Run, RunConfig
from codecloop.params import make
from codecloop_wire.errors import CodecLoopValueError
from tests.conftest import block_signature

SHAPE = (16, 112, 112)
CODEC = Codec(crf=23, preset="ultrafast")
HALF = Channel.parse("resize:0.5,libx264:crf=35:preset=ultrafast")
CONFIG = RunConfig(
    epsilon=3 / 255, codecs=(CODEC,), channels=(HALF,), train=DatasetCarriers(num_clips=4), validation=None,
    holdout=DatasetCarriers(split="holdout", num_clips=4), popsize=6, budget=18, seed=5, lead_channel=2,
)  # fmt: skip
OPTIONS = EvaluateOptions(epsilon=3 / 255, carriers=DatasetCarriers(num_clips=4, seed=2), codecs=CODEC, channels=HALF)


def test_two_stages_is_stage_one_on_the_lead_then_the_best_k_on_every_channel(client):
    population = np.stack([block_signature(s, block=4) for s in range(6)])
    lead = hardest(client.evaluate(population[:1], OPTIONS).candidates[0], CONFIG.objective)
    # the resolved setting the server reported: the half-size CRF 35 channel or the CRF 23 codec, the one with the lower separation
    stats = client.evaluate(population[:1], OPTIONS).candidates[0].codecs
    worst = min(stats, key=CONFIG.objective.codec)
    assert lead == ((worst.codec, None) if worst.channel is None else (None, worst.channel))

    def evaluate(indices, through):
        opts = OPTIONS if through is None else OPTIONS.updated(codecs=[c for c in through[:1] if c], channels=[c for c in through[1:] if c])
        return client.evaluate(population[list(indices)], opts)

    gen = two_stages(evaluate, 6, lead, 2, CONFIG.objective)
    # the same stages by hand: stage 1 on the lead alone, the best 2 of it on both
    first = CONFIG.objective(evaluate(range(6), lead))
    kept = sorted(range(6), key=lambda i: (-first[i], i))[:2]
    full = CONFIG.objective(client.evaluate(population[kept], OPTIONS))
    assert gen.survivors == kept and [gen.channels[i] for i in range(6)] == [2 if i in kept else 1 for i in range(6)]
    np.testing.assert_array_equal([gen.fitness[i] for i in kept], full)
    top = sorted(range(2), key=lambda j: -full[j])
    assert [int(np.argsort(-gen.ranking)[r]) for r in range(2)] == [kept[j] for j in top]  # survivors first, by the full objective
    assert sorted(gen.ranking) == list(range(6)) and gen.encodes == 6 * 4 + 2 * 4 < gen.full_encodes == 6 * 4 * 2


def test_a_run_with_a_lead_channel_logs_its_stages_and_counts_the_encodes_saved(client, tmp_path):
    run = Run(client, make("lowres:4x4:rgb", SHAPE), CONFIG, tmp_path)
    summary = run.run(progress=False)
    assert summary["generations"] == 3
    assert (summary["channel_encodes"], summary["channel_encodes_full"]) == (6 * 4 * 2 + 2 * (6 * 4 + 2 * 4), 3 * 6 * 4 * 2)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["channels"] for e in log if e["generation"] == 0] == [2] * 6  # the first generation finds the lead
    for g in (1, 2):
        assert sorted(e["channels"] for e in log if e["generation"] == g) == [1, 1, 1, 1, 2, 2]
        assert run.state.history[g]["lead"] in (label((CODEC, None)), label((None, HALF))) and len(run.state.history[g]["survivors"]) == 2
    plain = Run(client, make("lowres:4x4:rgb", SHAPE), replace(CONFIG, lead_channel=None), tmp_path / "plain").run(progress=False)
    assert plain["channel_encodes"] == plain["channel_encodes_full"] == 3 * 6 * 4 * 2


def test_lead_channel_out_of_range_is_refused():
    with pytest.raises(CodecLoopValueError, match=r"lead_channel: 6 survivors; allowed: 1 to popsize - 1 = 5"):
        replace(CONFIG, lead_channel=6)
    assert label((None, Channel.parse("messaging"))) == "messaging" and label((Codec(crf=23), None)).startswith("libx264 crf=23")
