"""Parameterizations and the resumable pycma / nevergrad loops against a real server."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from codecloop import Codec, DatasetCarriers
from codecloop.errors import CodecLoopValueError
from codecloop.optimize import Run, RunConfig
from codecloop.params import DCT, Identity, LowRes, Tiled, make

SHAPE = (16, 112, 112)


@pytest.mark.parametrize(
    "spec,dim,frames",
    [("lowres:14x14", 196, 1), ("lowres:7x7:rgb:t=4", 7 * 7 * 3 * 4, 16), ("tiled:8x8:rgb", 192, 1), ("dct:8:6", 6, 1),
     ("dct:8:3:per_block", 14 * 14 * 3, 1)],
)  # fmt: skip
def test_parameterizations(spec, dim, frames):
    p = make(spec, SHAPE)
    assert p.dim == dim
    theta = np.random.default_rng(0).standard_normal((3, dim)) * 3
    x = p(theta)
    assert x.shape == (3, frames, 112, 112, 3) and x.dtype == np.float32
    assert np.abs(x).max() <= 1.0
    np.testing.assert_array_equal(p(theta[1]), x[1:2])  # one theta = a batch of one


def test_parameterization_structure():
    x = LowRes(SHAPE, (1, 14, 14))(np.arange(196.0) / 196)[0, 0]
    assert np.all(x[:8, :8] == x[0, 0]) and x[0, 0, 0] == x[0, 0, 1] == x[0, 0, 2]  # 8x8 blocks, luma
    t = Tiled(SHAPE, (8, 8), "rgb")(np.random.default_rng(1).standard_normal(192))[0, 0]
    np.testing.assert_array_equal(t[:8, :8], t[8:16, 16:24])
    d = DCT(SHAPE, 8, 1)(np.array([1.0]))[0, 0]  # the DC basis function alone: a constant
    assert np.ptp(d) < 1e-6
    full = Identity((2, 16, 16))
    sig = np.random.default_rng(2).uniform(-0.9, 0.9, (1, full.dim))
    np.testing.assert_allclose(full(sig).reshape(-1), sig[0], atol=1e-6)
    with pytest.raises(CodecLoopValueError, match="grid"):
        LowRes(SHAPE, (1, 15, 14))


def _config(optimizer: str, budget: int) -> RunConfig:
    return RunConfig(
        optimizer=optimizer,
        epsilon=4 / 255,
        codecs=(Codec(preset="ultrafast"),),
        train=DatasetCarriers(num_clips=4),
        holdout=DatasetCarriers(split="holdout", num_clips=8),
        popsize=4,
        budget=budget,
        seed=3,
    )


def _log(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("optimizer", ["cma", "nevergrad:TwoPointsDE"])
def test_run_resumes_without_losing_or_repeating(client, tmp_path, optimizer):
    param = make("lowres:7x7", SHAPE)
    straight = Run(client, param, _config(optimizer, 12), tmp_path / "a")
    summary = straight.run(progress=False)
    assert summary["evaluations"] == 12 and summary["generations"] == 3
    for name in ("best.npy", "summary.json", "fitness.png", "holdout_hist.png", "holdout_roc.png", "checkpoint.pkl"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    assert np.load(tmp_path / "a" / "best.npy").shape == (1, 112, 112, 3)
    assert summary["holdout"][0]["codec"] == "libx264 crf=28 ultrafast"

    # the same run, killed after its first generation, plus a half-logged second generation
    Run(client, param, _config(optimizer, 4), tmp_path / "b").run(progress=False)
    with (tmp_path / "b" / "log.jsonl").open("a") as f:
        f.write(json.dumps({"generation": 1, "index": 0, "evaluation": 4, "fitness": 9.9}) + "\n")
    resumed = Run(client, param, _config(optimizer, 12), tmp_path / "b")
    assert resumed.state.generation == 1 and len(_log(tmp_path / "b")) == 4  # the untold line is gone
    resumed.run(progress=False)
    a, b = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [e["evaluation"] for e in b] == list(range(12))  # every evaluation exactly once
    assert [e["fitness"] for e in a] == [e["fitness"] for e in b]  # and the same ones as uninterrupted


def test_patience_stops_early(client, tmp_path):
    config = replace(_config("cma", 400), patience=1, sigma0=1e-9)  # no movement: no improvement
    summary = Run(client, make("dct:8:2", SHAPE), config, tmp_path).run(progress=False)
    assert summary["generations"] <= 3


def test_unknown_optimizer(client, tmp_path):
    with pytest.raises(CodecLoopValueError, match="nevergrad has no optimizer"):
        Run(client, make("dct:8:2", SHAPE), _config("nevergrad:NoSuchThing", 8), tmp_path)
