"""Unit tests of the pure pieces: tensors, poisoning, statistics, scorers, registry (datasets: test_corpus.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from codecloop_server import scorers
from codecloop_server.registry import NameTaken
from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.poison import poison
from codecloop_wire.stats import Decision, calibrate_threshold, detection_stats, psnr_db
from codecloop_wire.tensors import from_tensor, to_tensor


@pytest.mark.parametrize("dtype,tol", [("float32", 0), ("float16", 1e-3), ("int8", 1 / 127)])
def test_tensor_roundtrip(dtype, tol):
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 4, 3)).astype(np.float32)
    y = from_tensor(to_tensor(x, dtype), "t")
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.max(np.abs(x - y)) <= tol


def test_int8_scale_of_subnormal_values_stays_valid():
    """A float32 scale rounded from a subnormal peak would be 0, which the wire refuses."""
    with np.errstate(all="raise"):
        msg = to_tensor(np.array([1e-42, -1e-43], np.float32), "int8")
    assert msg.scale > 0
    np.testing.assert_array_equal(from_tensor(msg, "t"), np.zeros(2, np.float32))


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(-3, 1 << 40), min_size=0, max_size=6),
    dtype=st.integers(-1, 6),
    data=st.binary(max_size=64),
    scale=st.floats(allow_nan=True, allow_infinity=True, width=32),
)
def test_from_tensor_never_crashes(shape, dtype, data, scale):
    """Garbage tensors decode or raise CodecLoopValueError; nothing else, and no huge allocation."""
    from codecloop_wire.v1 import codecloop_pb2 as pb

    msg = pb.Tensor(shape=shape, dtype=dtype if dtype in pb.DType.values() else 0, data=data, scale=scale)
    try:
        out = from_tensor(msg, "t")
    except CodecLoopValueError as err:
        assert str(err).startswith("t.")
    else:
        assert out.size == math.prod(shape)


def test_poison_rule():
    clean = np.array([[[[0, 128, 255]]]], np.uint8)
    sig = np.array([[[[-1.0, 0.5, 1.0]]]], np.float32)
    out = poison(clean, sig, 4 / 255)
    np.testing.assert_array_equal(out, [[[[0, 130, 255]]]])  # clipped at 0 and 255, 128 + 2
    # T = 1 broadcasts over time and a batch of clips
    clips = np.full((2, 3, 1, 1, 3), 100, np.uint8)
    np.testing.assert_array_equal(poison(clips, sig, 4 / 255)[..., 0], 96)


def test_calibrated_threshold_and_rates():
    clean = np.array([0.1, 0.5, 0.2, 0.3])
    assert calibrate_threshold(clean, 0.0) == 0.5
    assert calibrate_threshold(clean, 0.25) == 0.3  # one clean clip may exceed it
    poisoned = np.array([0.6, 0.4, 0.7, 0.1])
    s = detection_stats(clean, poisoned, Decision(target_fpr=0.0))
    assert s["threshold"] == 0.5 and s["tpr"] == 0.5 and s["fpr"] == 0.0
    assert s["separation"] == pytest.approx(poisoned.mean() - clean.mean())
    # AUC by definition: P(p > c) + P(p == c)/2 over all 16 pairs
    pairs = [(p > c) + 0.5 * (p == c) for p in poisoned for c in clean]
    assert s["auc"] == pytest.approx(np.mean(pairs))
    assert s["p_value"] == pytest.approx(sps.wilcoxon(poisoned - clean, alternative="greater").pvalue)
    assert detection_stats(clean, clean, Decision(threshold=0.25))["p_value"] == 1.0


def test_psnr():
    assert psnr_db(0, 10) == math.inf
    assert psnr_db(10 * 1.0, 10) == pytest.approx(20 * math.log10(255))


def test_blind_scorer_finds_signature_and_ignores_content():
    rng = np.random.default_rng(0)
    sig = np.sign(rng.standard_normal((1, 32, 32, 3))).astype(np.float32)
    clips = rng.integers(60, 190, (4, 2, 32, 32, 3), dtype=np.uint8)
    blind = scorers.worker_scorer("blind")
    params = blind.resolve_params({})
    tmpl = blind.template(sig, params)
    clean = blind.score(blind.features(clips, params), tmpl, None)
    marked = blind.score(blind.features(poison(clips, sig, 8 / 255), params), tmpl, None)
    assert np.all(marked > clean + 0.1)
    # the score is invariant to a brightness offset of the clip (a residual ignores the mean)
    brighter = blind.score(blind.features(clips + np.uint8(10), params), tmpl, None)
    np.testing.assert_array_equal(brighter, clean)  # integer residuals: exactly


def test_blind_scorer_matches_float_formula():
    """The integer implementation equals the documented float formula (scipy box filter, float64 ncc)."""
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(2)
    clips = rng.integers(0, 256, (3, 4, 24, 20, 3), dtype=np.uint8)
    for sig_t, k in [(1, 3), (4, 5), (1, 13)]:
        sig = rng.uniform(-1, 1, (sig_t, 24, 20, 3)).astype(np.float32)
        blind = scorers.worker_scorer("blind")
        params = blind.resolve_params({"kernel": k})
        got = blind.score(blind.features(clips, params), blind.template(sig, params), None)
        x = clips.astype(np.float64)
        res = x - uniform_filter(x, size=(1, 1, k, k, 1), mode="reflect")
        w = np.broadcast_to(sig - uniform_filter(sig.astype(np.float64), size=(1, k, k, 1), mode="reflect"), res.shape[1:])
        want = [scorers_ncc_reference(r, w) for r in res]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def scorers_ncc_reference(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_ncc_is_one_for_itself_and_zero_for_constant():
    w = np.random.default_rng(1).integers(-50, 50, (2, 4, 4, 3)).astype(np.int16)
    tmpl = w.astype(np.float64) - w.mean()
    assert scorers.ncc(np.stack([w, 3 * w + 1, np.ones_like(w)]), tmpl) == pytest.approx([1, 1, 0])


def test_registry_refuses_name_collision():
    with pytest.raises(NameTaken, match="already registered"):
        scorers.ScorerRegistry.builtins().register(scorers.BlindScorer())


def test_each_scorer_registry_is_its_own():
    """Two servers in one process: a scorer registered in one registry is not seen by another, nor
    by the built-ins that the codec workers read."""
    first, second = scorers.ScorerRegistry.builtins(), scorers.ScorerRegistry.builtins()

    class Extra(scorers.Registered):
        name, description = "extra", "a server's own scorer"

    first.register(Extra())
    assert first.get("extra").name == "extra" and "extra" not in [s.name for s in second.values()]
    with pytest.raises(CodecLoopValueError, match="unknown scorer 'extra'"):
        second.get("extra")
    with pytest.raises(CodecLoopValueError, match="unknown scorer 'extra'"):
        scorers.get("extra")
    second.register(Extra())  # the same name in another server is no collision


def test_engine_stats_keep_their_load_keys_on_the_wire():
    """ServerInfo.load is a string map that clients, dashboards and tests read by key: the typed
    EngineStats is written under the keys the server has always published."""
    from codecloop_server import render
    from codecloop_server.jobs import EngineStats

    stats = EngineStats(
        workers=2, encodes={"clean": 3, "poisoned": 12}, clean_cache_bytes=100, clean_cache_held=1, clean_cache_hits=4, clean_cache_misses=5,
        result_cache_hits=6, result_cache_misses=7, queued_tasks=8, tasks_in_flight=2, worker_restarts=1, workers_responsive=2,
        queued_by_client={"a": 8}, dispatched_by_client={"a": 20, "b": 1},
    )  # fmt: skip
    load = render.load(stats, {"calls_in_progress": 1.0})
    assert load == {
        "clean_encodes": 3.0, "poisoned_encodes": 12.0, "clean_cache_bytes": 100.0, "clean_cache_held": 1.0, "clean_cache_hits": 4.0,
        "clean_cache_misses": 5.0, "result_cache_hits": 6.0, "result_cache_misses": 7.0, "queued_tasks": 8.0, "tasks_in_flight": 2.0,
        "worker_restarts": 1.0, "workers_responsive": 2.0, "queued_tasks{client=a}": 8.0, "dispatched_tasks{client=a}": 20.0,
        "dispatched_tasks{client=b}": 1.0, "calls_in_progress": 1.0,
    }  # fmt: skip
