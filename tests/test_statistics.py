"""Statistics a user can publish: exact intervals, the null model's p-values (calibrated on real
clips through real libx264), TPR at fixed FPRs per clip and per source video, on the wire."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import grpc
import numpy as np
import pytest
from scipy import stats as sps

import codecloop
from codecloop_server import corpus, scorers
from codecloop_server.codecs import CodecSettings
from codecloop_server.transcode import transcode_rgb
from codecloop_wire import stats
from codecloop_wire.null import EMPIRICAL_SHIFTS, GRID, MAX_KEY_CORRELATION, empirical_z, key_shifts, p_of_z, shift_null, stouffer, z_of_p
from codecloop_wire.v1 import codecloop_pb2 as pb
from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc
from tests.conftest import block_signature


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 15), (14, 15), (15, 15), (48, 52), (3, 1000), (500, 1000)])
def test_clopper_pearson_is_scipys_exact_interval(k, n):
    ci = sps.binomtest(k, n).proportion_ci(0.95, method="exact")
    assert stats.clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_readme_figures_intervals():
    """The figures the README quotes: 14/15 -> [68 %, 99.8 %], 0/15 FPR -> at most 22 %."""
    low, high = stats.clopper_pearson(14, 15)
    assert (round(low, 2), round(high, 3)) == (0.68, 0.998)
    assert round(stats.clopper_pearson(0, 15)[1], 2) == 0.22


def test_auc_interval_contains_the_estimate_and_is_not_empty_at_the_ends():
    for auc in (0.0, 0.3, 0.5, 0.9, 1.0):
        low, high = stats.auc_interval(auc, 15, 15)
        assert 0 <= low <= auc <= high <= 1 and high - low > 0.05
        # the method is symmetric: AUC a and 1 - a have mirrored intervals
        mlow, mhigh = stats.auc_interval(1 - auc, 15, 15)
        assert (low, high) == pytest.approx((1 - mhigh, 1 - mlow), abs=1e-9)
    # more clips, a narrower interval
    assert np.diff(stats.auc_interval(0.9, 200, 200))[0] < np.diff(stats.auc_interval(0.9, 20, 20))[0]


def test_auc_interval_covers_at_its_level():
    """Coverage of the Newcombe interval on simulated normal scores (true AUC 0.9), 400 trials."""
    rng = np.random.default_rng(0)
    d = math.sqrt(2) * sps.norm.ppf(0.9)  # AUC of N(d, 1) vs N(0, 1)
    hits = 0
    for _ in range(400):
        clean, poisoned = rng.normal(size=30), rng.normal(d, size=30)
        auc = float(sps.mannwhitneyu(poisoned, clean).statistic) / 900
        low, high = stats.auc_interval(auc, 30, 30)
        hits += low <= 0.9 <= high
    assert 0.92 <= hits / 400 <= 0.99


def _lattice_z(x: np.ndarray, w: np.ndarray) -> float:
    """The null's z by brute force: every frame offset and grid shift, the key's copies left out."""
    shifts = [(a, b, c) for a in range(x.shape[0]) for b in range(0, x.shape[1], GRID) for c in range(0, x.shape[2], GRID)]
    corr = np.array([(x * np.roll(w, s, axis=(0, 1, 2))).sum() for s in shifts])
    auto = np.array([(w * np.roll(w, s, axis=(0, 1, 2))).sum() for s in shifts]) / (w * w).sum()
    keep = np.abs(auto) < MAX_KEY_CORRELATION
    null = corr[keep] if keep.sum() >= 8 else corr
    return float((corr[0] - null.mean()) / null.std())


def test_shift_null_is_the_brute_force_lattice():
    rng = np.random.default_rng(3)
    x = rng.integers(-60, 60, (4, 48, 64, 3))
    w = rng.normal(size=(4, 48, 64, 3))
    w -= w.mean()
    assert shift_null(x, w).z == pytest.approx(_lattice_z(x, w), rel=1e-5)  # float32 FFTs
    # a key constant in time: its frame offsets are the key itself and are left out
    w1 = np.repeat(w[:1], 4, axis=0)
    assert shift_null(x, w1).z == pytest.approx(_lattice_z(x, w1), rel=1e-5)
    # T = 1: the time sum, spatial shifts only
    assert shift_null(x.sum(0), w[:1]).z == pytest.approx(_lattice_z(x.sum(0, keepdims=True), w[:1]), rel=1e-5)
    # no variation at all: no evidence
    assert shift_null(np.zeros_like(x), w).p == 1.0


def test_empirical_z_is_the_t_prediction_tail():
    null = np.array([0.1, -0.2, 0.05, 0.3, -0.1, 0.0, 0.2, -0.3])
    z = empirical_z(0.9, null)
    t = (0.9 - null.mean()) / (null.std(ddof=1) * math.sqrt(1 + 1 / 8))
    assert p_of_z(z) == pytest.approx(sps.t.sf(t, 7), rel=1e-9)


def test_p_and_z_are_inverse_normal_tails():
    for p in (0.5, 1e-2, 1e-6, 1e-12):
        assert p_of_z(z_of_p(p)) == pytest.approx(p, rel=1e-9)


def test_stouffer_video_combination_is_exact_on_a_constructed_case():
    z = np.array([1.0, 2.0, 3.0, -1.0, 0.5])
    sources = np.array([4, 4, 4, 9, 9])
    ids, vz = stats.video_z(z, sources)
    assert ids.tolist() == [4, 9]
    assert vz.tolist() == pytest.approx([6 / math.sqrt(3), -0.5 / math.sqrt(2)], abs=1e-12)
    assert stouffer(np.array([2.0])) == 2.0
    # per-video operating points count videos, not clips
    points = stats.operating_points(np.array([p_of_z(-0.5 / math.sqrt(2))]), np.array([p_of_z(6 / math.sqrt(3))]), (1e-3,))
    assert (points[0].n, points[0].true_positives, points[0].false_positives) == (1, 1, 0)


def _keys(kind: str, rng: np.random.Generator, t: int, h: int, w: int) -> np.ndarray:
    """Random keys of the families users search: per-pixel, 8- and 16-pixel blocks, and the default
    optimizer's family (a 7x7 pattern of 16-pixel blocks, its own in every frame, tanh-squashed)."""
    if kind == "pixel":
        return rng.choice([-1.0, 1.0], (1, h, w, 3))
    if kind.startswith("block"):
        b = int(kind.removeprefix("block"))
        small = rng.choice([-1.0, 1.0], (1, -(-h // b), -(-w // b), 3))
        return np.repeat(np.repeat(small, b, 1), b, 2)[:, :h, :w]
    small = np.tanh(2 * rng.normal(size=(t, h // 16, w // 16, 3)))
    return np.repeat(np.repeat(small, 16, 1), 16, 2)


def test_null_p_values_are_calibrated_on_real_clips():
    """Clean clips of the real corpus and camera clips of the embedded corpus, each through real
    libx264 CRF 28 medium, scored blind against random keys of four families: 2,400 clean (clip,
    key) pairs. The fraction with p < alpha must be inside alpha's 99 % binomial range over all of
    them, and inside its 99.9 % range in every family of 600 (neither too liberal nor absurdly
    conservative)."""
    blind = scorers.get("blind")
    params = blind.resolve_params({})
    rng = np.random.default_rng(2026)
    p_by_family: dict[str, list[float]] = {k: [] for k in ("pixel", "block8", "block16", "lowres")}
    for ds in (corpus.real_corpus(), corpus.embedded_corpus()):
        ids = np.linspace(0, len(ds.clips) - 1, 30).astype(int)
        feats = [blind.features(transcode_rgb(ds.clips[i], CodecSettings(crf=28, preset="medium"))[0][None], params)[0] for i in ids]
        t, h, w = ds.clip_shape
        for family, found in p_by_family.items():
            for _ in range(10):
                template = blind.template(_keys(family, rng, t, h, w).astype(np.float32), params)
                found.extend(shift_null(f if template.shape[0] > 1 else f.sum(0), template).p for f in feats)
    every = np.concatenate([np.array(v) for v in p_by_family.values()])
    assert len(every) == 2400
    for alpha in (0.01, 0.05):
        low, high = sps.binom.interval(0.99, len(every), alpha)
        assert low <= np.sum(every < alpha) <= high, (alpha, np.mean(every < alpha))
        for family, found in p_by_family.items():
            low, high = sps.binom.interval(0.999, len(found), alpha)
            assert low <= np.sum(np.array(found) < alpha) <= high, (family, alpha, np.mean(np.array(found) < alpha))


def test_evaluate_reports_counts_intervals_and_null_statistics(client):
    """Over the wire: counts and intervals always; with null_model, per-clip p-values whose
    operating points and per-video Stouffer combination the client can recount itself."""
    sig = block_signature(0, block=16)
    result = client.evaluate(
        sig[None], epsilon=3 / 255, carriers=codecloop.DatasetCarriers("real", "train", 12), per_clip_scores=True, null_model=(1e-2, 1e-3)
    )
    s = result.candidates[0].codecs[0]
    n = s.num_clips
    assert n == 12 and s.true_positives == int(np.sum(s.poisoned_scores > s.threshold))
    assert s.false_positives == int(np.sum(s.clean_scores > s.threshold))
    assert s.tpr_ci == pytest.approx(stats.clopper_pearson(s.true_positives, n))
    assert s.fpr_ci == pytest.approx(stats.clopper_pearson(s.false_positives, n))
    assert s.auc_ci == pytest.approx(stats.auc_interval(s.auc, n, n)) and "Newcombe" in s.auc_ci_method
    assert s.null_model and len(s.clean_p_values) == n and len(s.poisoned_p_values) == n
    assert s.poisoned_p_values == pytest.approx([p_of_z(z) for z in s.poisoned_z])
    assert [p.fpr for p in s.tpr_at_fpr] == [1e-2, 1e-3]
    for point in s.tpr_at_fpr:
        assert point.true_positives == int(np.sum(s.poisoned_p_values < point.fpr))
        assert point.false_positives == int(np.sum(s.clean_p_values < point.fpr))
        assert point.tpr_ci == pytest.approx(stats.clopper_pearson(point.true_positives, n))
        assert point.threshold == pytest.approx(z_of_p(point.fpr))
    # the marked clips stand far out of their null, the clean ones do not
    assert np.median(s.poisoned_z) > 3 and abs(np.median(s.clean_z)) < 2
    # per video: the clips of each source, Stouffer-combined
    sources = np.array(result.clip_sources)
    assert len(sources) == n and len(result.source_names) == len(set(sources.tolist())) >= 2
    _, video = stats.video_z(np.array(s.poisoned_z), sources)
    for point in s.video_tpr_at_fpr:
        assert point.n == len(result.source_names)
        assert point.true_positives == int(np.sum(np.array([p_of_z(z) for z in video]) < point.fpr))
    # the objective for the deployed operating point: a smooth TPR at p < 1e-3 from the same z-scores
    soft = codecloop.objectives.Objective("null-tpr").codec(s)
    tpr_part = float(np.mean(sps.norm.cdf(np.array(s.poisoned_z) - z_of_p(1e-3))))
    fpr_part = float(np.mean(sps.norm.cdf(np.array(s.clean_z) - z_of_p(1e-3))))
    assert soft == pytest.approx(tpr_part - fpr_part) and 0 < soft < 1 and fpr_part < 0.05
    # not asked: nothing of the null, and the same statistics otherwise
    plain = client.evaluate(sig[None], epsilon=3 / 255, carriers=codecloop.DatasetCarriers("real", "train", 12), per_clip_scores=True)
    q = plain.candidates[0].codecs[0]
    assert q.null_model == "" and q.tpr_at_fpr == () and q.clean_p_values is None
    with pytest.raises(codecloop.CodecLoopValueError, match="null model"):
        codecloop.objectives.Objective("null-tpr").codec(q)
    assert (q.separation, q.tpr_ci, q.auc_ci) == (s.separation, s.tpr_ci, s.auc_ci)


def test_null_model_refused_where_it_does_not_apply(server_target):
    stub = pb_grpc.CodecLoopStub(grpc.insecure_channel(server_target))
    base = codecloop.EvaluateOptions(epsilon=4 / 255, carriers=codecloop.DatasetCarriers("tiny", "train", 2)).to_proto()
    base.candidates.append(codecloop.options.to_tensor(np.zeros((1, 32, 48, 3), np.float32), "float32"))
    cases = {
        "null_model.fprs[1]": [0.01, 0.9],
        "null_model.fprs[0]": [0.0],
    }
    for field, fprs in cases.items():
        req = pb.EvaluateRequest()
        req.CopyFrom(base)
        req.null_model.fprs.extend(fprs)
        with pytest.raises(grpc.RpcError) as err:
            stub.EvaluateSignature(req, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()
    req = pb.EvaluateRequest()
    req.CopyFrom(base)
    req.null_model.SetInParent()
    req.scorer.name = "keyless"
    with pytest.raises(grpc.RpcError) as err:
        stub.EvaluateSignature(req, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "null_model" in err.value.details()
    offered = {s.name: s.null_model for s in stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=60).scorers}
    assert offered["blind"] and offered["informed"] and offered["example"] and not offered["keyless"]


def test_keyed_detector_empirical_null_is_the_model_on_moved_keys(client):
    """A detector that takes the key: each clip's z is Student's t of its score over the model's
    scores of the same decoded clip against 16 moved keys, recomputed here with the model itself."""
    pytest.importorskip("torch")
    from tests.test_detector import CARRIERS, CODEC, EPS, EXAMPLE_DETECTOR, direct_scores

    sig = block_signature(31, block=4)
    res = client.evaluate(sig[None], epsilon=EPS, carriers=CARRIERS, codecs=CODEC, scorer="example", per_clip_scores=True, null_model=True)
    s = res.candidates[0].codecs[0]
    keys = [np.roll(sig, shift, axis=(0, 1, 2)) for shift in key_shifts(sig)]
    assert len(keys) == EMPIRICAL_SHIFTS
    null_poisoned = np.stack([direct_scores(client, EXAMPLE_DETECTOR, sig, k) for k in keys], axis=1)
    null_clean = np.stack([direct_scores(client, EXAMPLE_DETECTOR, None, k) for k in keys], axis=1)
    expect_p = [empirical_z(v, row) for v, row in zip(s.poisoned_scores, null_poisoned)]
    expect_c = [empirical_z(v, row) for v, row in zip(s.clean_scores, null_clean)]
    assert s.poisoned_z == pytest.approx(expect_p, rel=1e-9) and s.clean_z == pytest.approx(expect_c, rel=1e-9)
    assert "Student" in s.null_model and len(s.tpr_at_fpr) == 4


def test_cli_evaluate_json_carries_intervals_and_p_values(server_target, tmp_path):
    """`codecloop evaluate --json`: the names outside tools read (tpr_ci, fpr_ci, tpr_at_fpr,
    clean_p_values / poisoned_p_values next to the scores), and the table prints counts and intervals."""
    out_json = tmp_path / "e.json"
    run = subprocess.run(
        [sys.executable, "-m", "codecloop.cli", "evaluate", "--target", server_target, "--random", "block16", "--epsilon", "3/255",
         "--dataset", "real", "--split", "holdout", "--clips", "6", "--fpr", "1e-2", "--fpr", "1e-5", "--json", str(out_json)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "TPR k/n [95% CI]" in run.stdout and "null, clips  FPR 1e-02" in run.stdout and "null, videos" in run.stdout
    s = json.loads(out_json.read_text())["candidates"][0]["codecs"][0]
    assert len(s["tpr_ci"]) == 2 and len(s["fpr_ci"]) == 2 and s["tpr_ci"][0] <= s["tpr"] <= s["tpr_ci"][1]
    assert [p["fpr"] for p in s["tpr_at_fpr"]] == [1e-2, 1e-5]
    assert {"fpr", "threshold", "tpr", "tpr_ci"} <= set(s["tpr_at_fpr"][0])
    assert len(s["clean_p_values"]) == len(s["clean_scores"]) == 6 == len(s["poisoned_p_values"])
    bad = subprocess.run(
        [sys.executable, "-m", "codecloop.cli", "evaluate", "--target", server_target, "--random", "block16", "--fpr", "0.9"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "fpr" in bad.stderr and "Traceback" not in bad.stderr
