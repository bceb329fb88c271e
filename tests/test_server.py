"""End to end against a real server process on a loopback port."""

from __future__ import annotations

import numpy as np
import pytest

import codecloop
import codecloop_wire.tensors
from codecloop import Codec, DatasetCarriers
from codecloop_server.channels import Channel
from codecloop_server.codecs import CodecSettings
from codecloop_server.tasks import transcode_rgb
from codecloop_wire.poison import poison
from tests.conftest import block_signature

SMALL = DatasetCarriers(num_clips=6, seed=3)


def test_fitness_defaults_alone(client):
    """fitness(signatures, epsilon=...) works with every other field defaulted (32 clips, CRF 28)."""
    pop = np.stack([block_signature(0), np.zeros((1, 112, 112, 3), np.float32)])
    fit = client.fitness(pop, epsilon=4 / 255)
    assert fit.shape == (2,) and fit.dtype == np.float64
    assert fit[0] > 0.01  # an 8x8-block +-1 pattern at 4/255 survives CRF 28
    assert fit[1] == 0.0  # a zero signature changes nothing: poisoned == clean exactly
    res = client.evaluate(pop[:1], epsilon=4 / 255)
    assert res.num_clips == 32 and len(res.clip_ids) == 32
    s = res.candidates[0].codecs[0]
    info = client.info()
    assert s.codec == Codec(codec="libx264", crf=28, preset="medium", pix_fmt="yuv420p", gop=250, fps=25,
                            x264_asm=info.versions["x264_asm"], x264_build=info.versions["x264"])  # fmt: skip
    assert np.isclose(s.separation, s.poisoned_mean - s.clean_mean)
    assert res.candidates[0].fitness == pytest.approx(fit[0])  # clean side cached: same numbers


def test_results_in_order_and_reproducible(client):
    sigs = [block_signature(s, block=b) for s, b in [(1, 16), (2, 1), (3, 4)]]
    a = client.evaluate(np.stack(sigs), carriers=SMALL, per_clip_scores=True)
    b = client.evaluate(np.stack(sigs[::-1]), carriers=SMALL, per_clip_scores=True)
    np.testing.assert_array_equal(a.fitness, b.fitness[::-1])
    for ca, cb in zip(a.candidates, b.candidates[::-1]):
        np.testing.assert_array_equal(ca.codecs[0].poisoned_scores, cb.codecs[0].poisoned_scores)
        np.testing.assert_array_equal(ca.codecs[0].clean_scores, cb.codecs[0].clean_scores)


def test_statistics_are_consistent(client):
    res = client.evaluate(block_signature(5)[None], carriers=SMALL, per_clip_scores=True, target_fpr=0.0)
    s = res.candidates[0].codecs[0]
    assert s.threshold == pytest.approx(s.clean_scores.max())  # FPR 0: the highest clean score
    assert s.fpr == 0.0
    assert s.tpr == pytest.approx(np.mean(s.poisoned_scores > s.threshold))
    assert s.clean_mean == pytest.approx(s.clean_scores.mean())
    assert s.poisoned_std == pytest.approx(s.poisoned_scores.std(ddof=1))
    assert 0 <= s.auc <= 1 and 0 < s.p_value <= 1
    assert 30 < s.psnr_db < 60 and s.clean_bytes_mean > 0 and s.poisoned_bytes_mean > 0
    explicit = client.evaluate(block_signature(5)[None], carriers=SMALL, threshold=1.0).candidates[0].codecs[0]
    assert explicit.threshold == 1.0 and explicit.tpr == 0.0


def test_worst_codec_decides_fitness(client):
    codecs = [Codec(crf=18), Codec(crf=40, preset="ultrafast")]
    res = client.evaluate(block_signature(6)[None], carriers=SMALL, codecs=codecs)
    seps = [c.separation for c in res.candidates[0].codecs]
    assert [c.codec.crf for c in res.candidates[0].codecs] == [18, 40]
    assert res.candidates[0].fitness == min(seps)
    assert seps[0] > seps[1]  # harder compression destroys more of the signature


def test_informed_scorer_and_lossless(client):
    res = client.evaluate(block_signature(7)[None], carriers=SMALL, codecs=Codec(crf=0), scorer="informed")
    s = res.candidates[0].codecs[0]
    assert s.clean_mean == 0.0  # x_clean - x_clean = 0 by construction
    assert s.poisoned_mean > 0.9  # lossless: the signature comes back (minus clipping at 0/255)


def test_wire_dtypes_agree(client):
    sig = block_signature(8)[None]
    f32 = client.fitness(sig, carriers=SMALL)
    assert client.fitness(sig, carriers=SMALL, dtype="float16") == pytest.approx(f32)  # +-1 is exact in fp16
    assert client.fitness(sig, carriers=SMALL, dtype="int8") == pytest.approx(f32)


def test_torch_tensors_accepted(client):
    torch = pytest.importorskip("torch")
    sig = block_signature(9)[None]
    assert client.fitness(torch.from_numpy(sig), carriers=SMALL) == pytest.approx(client.fitness(sig, carriers=SMALL))


def test_population_is_chunked_under_message_limit(server_target):
    """A population bigger than the message limit is split across requests, results unchanged."""
    pop = np.stack([block_signature(s, shape=(16, 112, 112)) for s in range(5)])  # 2.4 MiB each
    with codecloop.Client(server_target) as whole, codecloop.Client(server_target, max_message_bytes=6 << 20) as small:
        assert len(small._chunks(codecloop.client.pb.EvaluateRequest(), [codecloop_wire.tensors.to_tensor(p) for p in pop])) == 3
        np.testing.assert_array_equal(small.fitness(pop, carriers=SMALL), whole.fitness(pop, carriers=SMALL))


def test_transcode_matches_local_pipeline(client):
    sig = block_signature(10)
    out = client.transcode(sig, epsilon=3 / 255, carriers=SMALL, codec=Codec(crf=23, preset="fast"), include_input=True)
    assert out.decoded.shape == (6, 16, 112, 112, 3) and out.decoded.dtype == np.uint8
    assert len(out.clip_ids) == 6 and out.codec.crf == 23
    clean = client.transcode(None, carriers=SMALL, codec=Codec(crf=23, preset="fast"), include_input=True)
    np.testing.assert_array_equal(out.inputs, poison(clean.inputs, sig, 3 / 255))
    local, nbytes = transcode_rgb(out.inputs[2], CodecSettings(crf=23, preset="fast"))
    np.testing.assert_array_equal(out.decoded[2], local)
    assert out.encoded_bytes[2] == nbytes


def test_inline_clips_and_folder_dataset(client):
    """The ``tiny`` folder dataset (a.npy: 3 clips, b.npy: 1) scores exactly like the same clips inline."""
    clips = np.random.default_rng(7).integers(0, 256, (4, 8, 32, 48, 3), dtype=np.uint8)  # as conftest saved
    sig = np.sign(np.random.default_rng(1).standard_normal((1, 32, 48, 3))).astype(np.float32)
    kw = dict(per_clip_scores=True, codecs=Codec(preset="ultrafast"))
    inline = client.evaluate(sig[None], carriers=clips[:3], **kw)
    assert inline.num_clips == 3 and inline.clip_ids == ()
    folder = client.evaluate(sig[None], carriers=DatasetCarriers("tiny", "train", 3), **kw)
    assert folder.clip_ids == (0, 1, 2)  # 2 sources: b.npy (clip 3) is the holdout; a.npy's 3 clips give no validation
    a, b = inline.candidates[0].codecs[0], folder.candidates[0].codecs[0]
    np.testing.assert_array_equal(a.poisoned_scores, b.poisoned_scores)
    np.testing.assert_array_equal(a.clean_scores, b.clean_scores)
    info = client.info()
    tiny = next(d for d in info.datasets if d.name == "tiny")
    assert list(tiny.clip_shape) == [8, 32, 48] and dict(tiny.split_clips) == {"train": 3, "validation": 0, "holdout": 1}


def test_server_info(client):
    info = client.info()
    assert info.versions["codecloop"] == codecloop.__version__
    assert info.versions["x264"].startswith("core ")
    assert "medium" in info.presets and list(info.codecs) == ["libx264", "libx265", "libvpx-vp9", "libsvtav1"]
    assert {s.name for s in info.scorers} >= {"blind", "informed"}
    emb = next(d for d in info.datasets if d.name == "embedded")
    assert dict(emb.split_clips) == {"train": 168, "validation": 72, "holdout": 72} and list(emb.clip_shape) == [16, 112, 112]
    assert info.limits.max_message_bytes == 64 << 20 and info.workers == 2


def test_stream_yields_every_candidate_and_matches_evaluate(client):
    sigs = np.stack([block_signature(s) for s in (20, 21, 22)])
    events = list(client.evaluate_stream(sigs, carriers=SMALL))
    done = [e for e in events if isinstance(e, codecloop.CandidateDone)]
    progress = [e for e in events if isinstance(e, codecloop.Progress)]
    assert sorted(e.index for e in done) == [0, 1, 2]
    assert progress[-1].done == progress[-1].total == 3 * 6
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    batch = client.evaluate(sigs, carriers=SMALL)
    for e in done:
        assert e.result.fitness == batch.candidates[e.index].fitness


def test_stream_spans_chunks(server_target):
    pop = np.stack([block_signature(s, shape=(16, 112, 112)) for s in range(30, 33)])
    with codecloop.Client(server_target, max_message_bytes=6 << 20) as small:
        events = list(small.evaluate_stream(pop, carriers=DatasetCarriers(num_clips=2)))
    assert sorted(e.index for e in events if isinstance(e, codecloop.CandidateDone)) == [0, 1, 2]
    last = [e for e in events if isinstance(e, codecloop.Progress)][-1]
    assert last.done == last.total == 6


def test_results_identical_to_single_process_path(client):
    """What the server's worker pool returns equals the task functions run right here."""
    from codecloop_server import scorers, shm, tasks
    from codecloop_server.corpus import embedded_corpus

    sig = block_signature(40)
    res = client.evaluate(sig[None], carriers=SMALL, per_clip_scores=True)
    ds = embedded_corpus()
    settings, key = CodecSettings(), ("blind", (("kernel", 3.0),))
    clips = shm.SharedArray(ds.clips[list(res.clip_ids)])
    sig_sh, tmpl_sh = shm.SharedArray(sig), shm.SharedArray(scorers.worker_scorer("blind").template(sig, key[1]))
    try:
        for i in range(len(res.clip_ids)):
            ref = tasks.ClipRef(clips.ref, i)
            features, st, _ = tasks.clean_task(ref, Channel.of(settings), key)
            feat_sh, sum_sh = shm.SharedArray(features), shm.SharedArray(st.time_sum)
            clean_ref = tasks.CleanRef(feat_sh.ref, sum_sh.ref, st.total, st.squares)
            t_sq = scorers.template_sq(tmpl_sh.array)
            (local,) = tasks.poisoned_task([(ref, clean_ref)], sig_sh.ref, tmpl_sh.ref, t_sq, 4 / 255, Channel.of(settings), key)
            feat_sh.release()
            sum_sh.release()
            # and the documented formula, straight: ncc of the residuals, in float64
            from scipy.ndimage import uniform_filter

            from codecloop_wire.poison import poison

            marked = poison(ds.clips[res.clip_ids[i]], sig, 4 / 255)
            x = tasks.transcode_rgb(marked, settings)[0].astype(np.float64)
            r = x - uniform_filter(x, size=(1, 3, 3, 1), mode="reflect")
            w = np.broadcast_to(sig - uniform_filter(sig.astype(np.float64), size=(1, 3, 3, 1), mode="reflect"), r.shape)
            r, w = r - r.mean(), w - w.mean()
            assert local.poisoned == pytest.approx((r * w).sum() / np.sqrt((r * r).sum() * (w * w).sum()), rel=1e-9)
            assert local.poisoned == res.candidates[0].codecs[0].poisoned_scores[i]
            assert local.clean == res.candidates[0].codecs[0].clean_scores[i]
    finally:
        for s in (clips, sig_sh, tmpl_sh):
            s.release()


@pytest.mark.parametrize("name", ["blind", "informed"])
@pytest.mark.parametrize("sig_t", [1, 4])
def test_worker_tasks_score_through_the_scorer_interface(name, sig_t):
    """A codec worker's scores (cached clean stats, one clip at a time) are exactly the documented
    scorers.Scorer.score of the same features, poisoned and clean, for both scorers and for constant
    and time-varying templates; the null reads the same signal."""
    from codecloop.testing import realistic_clip
    from codecloop_server import scorers, shm, tasks
    from codecloop_wire.null import key_spectrum, shift_null

    impl = scorers.worker_scorer(name)
    params = impl.resolve_params({})
    channel = Channel.of(CodecSettings(preset="ultrafast", crf=30))
    clip = realistic_clip(9, 4, 48, 48)
    sig = np.sign(np.random.default_rng(sig_t).standard_normal((sig_t, 48, 48, 3))).astype(np.float32)
    tmpl = impl.template(sig, params)
    shared = [shm.SharedArray(clip[None]), shm.SharedArray(sig), shm.SharedArray(tmpl)]
    try:
        ref = tasks.ClipRef(shared[0].ref, 0)
        features, st, _ = tasks.clean_task(ref, channel, (name, params))
        shared += [shm.SharedArray(features), shm.SharedArray(st.time_sum)]
        clean_ref = tasks.CleanRef(shared[3].ref, shared[4].ref, st.total, st.squares)
        (got,) = tasks.poisoned_task([(ref, clean_ref)], shared[1].ref, shared[2].ref, scorers.template_sq(tmpl), 4 / 255, channel, (name, params), null=True)
    finally:
        for s in shared:
            s.release()
    clean = impl.features(channel.apply(clip)[0][None], params)
    poisoned = impl.features(channel.apply(poison(clip, sig, 4 / 255))[0][None], params)
    assert got.poisoned == impl.score(poisoned, tmpl, clean)[0] and got.poisoned != 0
    assert got.clean == impl.score(clean, tmpl, clean)[0]
    signal = impl.signal(poisoned[0], clean[0])
    a, w = signal.astype(np.float64), np.broadcast_to(tmpl, signal.shape)  # and ncc in float64, straight
    a, w = a - a.mean(), w - w.mean()
    assert got.poisoned == pytest.approx((a * w).sum() / np.sqrt((a * a).sum() * (w * w).sum()), rel=1e-9)
    assert got.poisoned_z == shift_null(signal if sig_t > 1 else signal.sum(axis=0), key_spectrum(tmpl)).z
    if name == "informed":
        assert got.clean == 0.0 and got.clean_z == -np.inf
    else:
        assert got.clean != 0 and np.isfinite(got.clean_z)


def test_deadline_drops_queued_work(client):
    """A request whose deadline passes stops costing encodes: its queued clip tasks are dropped."""
    before = client.info().load["poisoned_encodes"]
    pop = np.stack([block_signature(s, block=4) for s in range(100, 164)])  # 64 x 64 = 4096 clip tasks
    with pytest.raises(codecloop.CodecLoopServerError, match="DEADLINE_EXCEEDED"):
        client.evaluate(pop, carriers=DatasetCarriers(num_clips=64), codecs=Codec(preset="ultrafast"), timeout=1.0)
    small = client.evaluate(block_signature(99)[None], carriers=DatasetCarriers(num_clips=2))
    assert len(small.candidates) == 1
    spent = client.info().load["poisoned_encodes"] - before
    assert spent < 1000, f"{spent} encodes ran for a request cancelled after 1 s"


def test_leaving_a_stream_early_cancels_it(client):
    before = client.info().load["poisoned_encodes"]
    pop = np.stack([block_signature(s, block=4) for s in range(200, 264)])
    stream = client.evaluate_stream(pop, carriers=DatasetCarriers(num_clips=64), codecs=Codec(preset="ultrafast"))
    first = next(e for e in stream if isinstance(e, codecloop.Progress))
    stream.close()  # leaves the generator: the call is cancelled
    assert first.total == 64 * 64
    client.evaluate(block_signature(98)[None], carriers=DatasetCarriers(num_clips=2))
    assert client.info().load["poisoned_encodes"] - before < 1000
