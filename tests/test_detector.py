"""TorchScript detectors as scorers: loading, dynamic batching, server results equal to the model run
directly on the real codec's output, the example detector's training script."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import codecloop  # noqa: E402
from codecloop import Codec, DatasetCarriers  # noqa: E402
from codecloop_server.detector import EXAMPLE_DETECTOR, DetectorConfig, DynamicBatcher, TorchDetector  # noqa: E402
from codecloop_wire.errors import CodecLoopServerError  # noqa: E402
from tests.conftest import block_signature, save_keyless_detector  # noqa: E402

EPS = 4 / 255
CARRIERS = DatasetCarriers(num_clips=4, seed=21)
CODEC = Codec(preset="ultrafast")


def direct_scores(client, model_file, sig: np.ndarray | None, key: np.ndarray | None, carriers=CARRIERS) -> np.ndarray:
    """The model run in this process on the clips the real codec returns (clean when sig is None)."""
    torch.set_num_threads(1)  # as in the server
    decoded = client.transcode(signature=sig, epsilon=EPS, carriers=carriers, codec=CODEC).decoded
    model = torch.jit.load(str(model_file)).eval()
    with torch.inference_mode():
        x = torch.from_numpy(decoded.copy()).float() / 255  # the decoded array is read-only
        if key is None:
            return model(x).double().numpy()
        keys = torch.from_numpy(np.broadcast_to(key, decoded.shape[1:]).copy()).expand(len(decoded), -1, -1, -1, -1)
        return model(x, keys.contiguous()).double().numpy()


def test_example_detector_scores_equal_the_model_on_real_codec_output(client):
    sig = block_signature(31, block=4)
    res = client.evaluate(sig[None], epsilon=EPS, carriers=CARRIERS, codecs=CODEC, scorer="example", per_clip_scores=True)
    stats = res.candidates[0].codecs[0]
    np.testing.assert_array_equal(stats.poisoned_scores, direct_scores(client, EXAMPLE_DETECTOR, sig, sig))
    np.testing.assert_array_equal(stats.clean_scores, direct_scores(client, EXAMPLE_DETECTOR, None, sig))
    assert stats.poisoned_mean > stats.clean_mean  # a visible 4/255 block mark is detected


def test_keyless_detector_scores_clean_clips_once(client, tmp_path):
    model = tmp_path / "keyless.pt"
    save_keyless_detector(model)
    sigs = np.stack([block_signature(s) for s in (41, 42)])
    res = client.evaluate(sigs, epsilon=EPS, carriers=CARRIERS, codecs=CODEC, scorer="keyless", per_clip_scores=True)
    clean = direct_scores(client, model, None, None)
    for i, cand in enumerate(res.candidates):
        np.testing.assert_array_equal(cand.codecs[0].clean_scores, clean)  # independent of the candidate
        np.testing.assert_array_equal(cand.codecs[0].poisoned_scores, direct_scores(client, model, sigs[i], None))


def test_concurrent_clients_share_detector_batches(server_target, metrics_url):
    def histogram():
        text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
        get = lambda name: float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name)))  # noqa: E731
        return get("codecloop_detector_batch_size_sum"), get("codecloop_detector_batch_size_count")

    s0, c0 = histogram()
    sigs = {f"client{i}": block_signature(50 + i, block=4) for i in range(3)}
    carriers = DatasetCarriers(num_clips=8, seed=5)
    results, errors = {}, []

    def run(name):
        try:
            with codecloop.Client(server_target, client_id=name, timeout=300) as c:
                results[name] = c.evaluate(sigs[name][None], epsilon=EPS, carriers=carriers, codecs=CODEC,
                                           scorer="example", per_clip_scores=True)  # fmt: skip
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(n,)) for n in sigs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and len(results) == 3
    s1, c1 = histogram()
    assert (s1 - s0) >= 3 * 8 and (s1 - s0) / (c1 - c0) > 1.0, "no forward pass held more than one clip"
    with codecloop.Client(server_target, timeout=300) as c:  # batching never changes a score
        for name, sig in sigs.items():
            np.testing.assert_array_equal(
                results[name].candidates[0].codecs[0].poisoned_scores, direct_scores(c, EXAMPLE_DETECTOR, sig, sig, carriers)
            )


def test_dynamic_batcher_batches_and_matches_single_clip_scoring():
    det = TorchDetector(EXAMPLE_DETECTOR, "cpu")
    assert det.uses_key
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (11, 4, 32, 32, 3), dtype=np.uint8)
    keys = rng.choice([-1.0, 1.0], (11, 1, 32, 32, 3)).astype(np.float32)
    odd = rng.integers(0, 256, (2, 4, 16, 16, 3), dtype=np.uint8)  # another shape: its own batch
    sizes = []

    async def main():
        batcher = DynamicBatcher(det, DetectorConfig("x", "example", max_batch_size=4, max_queue_delay_us=50_000), sizes.append)
        try:
            futs = [asyncio.ensure_future(batcher.score(c, k)) for c, k in zip(clips, keys)]
            futs += [asyncio.ensure_future(batcher.score(c, keys[0, :, :16, :16])) for c in odd]
            doomed = asyncio.ensure_future(batcher.score(clips[0], keys[0]))
            await asyncio.sleep(0)
            doomed.cancel()  # cancelled while queued: never scored
            return await asyncio.gather(*futs)
        finally:
            await batcher.close()

    scores = asyncio.run(main())
    assert sorted(sizes) == [2, 3, 4, 4] and sum(sizes) == 13
    single = [det(c[None], np.broadcast_to(k, c.shape)[None].copy())[0] for c, k in zip(clips, keys)]
    assert scores[:11] == single  # bit-identical to one clip per forward pass


def test_detector_file_checks(tmp_path):
    class ThreeInputs(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return a.sum()

    class WrongShape(torch.nn.Module):
        def forward(self, clips: torch.Tensor) -> torch.Tensor:
            return clips.mean(dim=(2, 3, 4))

    torch.jit.save(torch.jit.script(ThreeInputs()), str(tmp_path / "three.pt"))
    torch.jit.save(torch.jit.script(WrongShape()), str(tmp_path / "shape.pt"))
    with pytest.raises(ValueError, match="forward takes 3 inputs"):
        TorchDetector(tmp_path / "three.pt", "cpu")
    with pytest.raises(ValueError, match="does not exist"):
        TorchDetector(tmp_path / "missing.pt", "cpu")
    with pytest.raises(CodecLoopServerError, match=r"one score per clip, shape \(2,\)"):
        TorchDetector(tmp_path / "shape.pt", "cpu")(np.zeros((2, 3, 16, 16, 3), np.uint8), None)
    with pytest.raises(ValueError, match="max_batch_size"):
        DetectorConfig("x", "example", max_batch_size=0)


def test_scorer_params_refused_for_a_detector(client):
    with pytest.raises(codecloop.CodecLoopValueError, match="unknown parameter 'kernel' for scorer 'example'; allowed: none"):
        client.evaluate(block_signature(1)[None], carriers=CARRIERS, scorer="example", scorer_params={"kernel": 3})
    assert {"example", "keyless", "blind", "informed"} <= {s.name for s in client.info().scorers}


def test_training_script_exports_a_loadable_detector(tmp_path):
    out = tmp_path / "det.pt"
    proc = subprocess.run(
        [sys.executable, "scripts/train_detector.py", "--out", str(out), "--clips", "4", "--holdout-clips", "2", "--steps", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "holdout (2 clips" in proc.stdout
    det = TorchDetector(out, "cpu")
    scores = det(np.full((2, 4, 32, 32, 3), 128, np.uint8), np.ones((2, 4, 32, 32, 3), np.float32))
    assert scores.shape == (2,) and np.isfinite(scores).all()


def test_pad_batches_runs_every_forward_at_max_batch_size():
    det = TorchDetector(EXAMPLE_DETECTOR, "cpu")
    seen = []

    class Recording:
        uses_key = det.uses_key

        def __call__(self, clips, keys):
            seen.append(len(clips))
            return det(clips, keys)

    rng = np.random.default_rng(1)
    clips = rng.integers(0, 256, (3, 2, 16, 16, 3), dtype=np.uint8)
    keys = rng.choice([-1.0, 1.0], (3, 1, 16, 16, 3)).astype(np.float32)

    async def main():
        batcher = DynamicBatcher(Recording(), DetectorConfig("x", "example", max_batch_size=8, pad_batches=True))
        try:
            return await asyncio.gather(*(batcher.score(c, k) for c, k in zip(clips, keys)))
        finally:
            await batcher.close()

    scores = asyncio.run(main())
    assert seen == [8]  # three clips, padded to one forward of 8
    assert scores == [det(c[None], np.broadcast_to(k, c.shape)[None].copy())[0] for c, k in zip(clips, keys)]
