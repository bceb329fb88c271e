"""Learned detectors as scorers: loading torch.export (.pt2) and legacy TorchScript files, refusing bad
ones, dynamic batching, server results equal to the model run directly on the real codec's output, the
same scores from both formats of one model, the example detector's training script."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import codecloop  # noqa: E402
from codecloop import Codec, DatasetCarriers  # noqa: E402
from codecloop.detector_model import ResidualDetector, export_program, export_torchscript  # noqa: E402
from codecloop_server.detector import EXAMPLE_DETECTOR, PT2, TORCHSCRIPT, DetectorConfig, DynamicBatcher, TorchDetector  # noqa: E402
from codecloop_wire.errors import CodecLoopServerError  # noqa: E402
from tests.conftest import SERVER_LINES, block_signature, save_keyless_detector  # noqa: E402

EPS = 4 / 255
CARRIERS = DatasetCarriers(num_clips=4, seed=21)
CODEC = Codec(preset="ultrafast")


def load_model(model_file):
    """The model of a .pt2 (torch.export) or .pt (TorchScript) file, loaded with torch's own API."""
    return torch.export.load(str(model_file)).module() if str(model_file).endswith(".pt2") else torch.jit.load(str(model_file)).eval()


def direct_scores(client, model_file, sig: np.ndarray | None, key: np.ndarray | None, carriers=CARRIERS) -> np.ndarray:
    """The model run in this process on the clips the real codec returns (clean when sig is None)."""
    torch.set_num_threads(1)  # as in the server
    decoded = client.transcode(signature=sig, epsilon=EPS, carriers=carriers, codec=CODEC).decoded
    model = load_model(model_file)
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


class ThreeInputs(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return a.sum()


class WrongShape(torch.nn.Module):
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return clips.mean(dim=(2, 3, 4))  # (B, T): a score per frame, not per clip


class OneFrame(torch.nn.Module):
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.mean(dim=(1, 2, 3))  # frames (B, H, W, 3): not clips


class InATuple(torch.nn.Module):
    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor]:
        return (clips.mean(dim=(1, 2, 3, 4)),)


class MeanDeviation(torch.nn.Module):
    """A keyless detector: the mean absolute deviation of each clip from its mean."""

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return (clips - clips.mean(dim=(1, 2, 3, 4), keepdim=True)).abs().mean(dim=(1, 2, 3, 4))


def example_model() -> ResidualDetector:
    """The shipped example detector's weights in its Python class."""
    model = ResidualDetector()
    model.load_state_dict(torch.export.load(str(EXAMPLE_DETECTOR)).state_dict)
    return model


def batched_scores(det: TorchDetector, clips: np.ndarray, keys: np.ndarray | None, max_batch_size: int) -> list[float]:
    """Every clip through a DynamicBatcher, as the server scores them."""

    async def main():
        batcher = DynamicBatcher(det, DetectorConfig("x", "example", max_batch_size=max_batch_size))
        try:
            return await asyncio.gather(*(batcher.score(c, None if keys is None else k) for c, k in zip(clips, keys if keys is not None else clips)))
        finally:
            await batcher.close()

    return asyncio.run(main())


def test_pt2_and_torchscript_exports_of_one_model_give_the_same_scores(client, tmp_path, caplog):
    """The primary format and the legacy one score the real codec's output identically, alone and in batches."""
    sig = block_signature(61, block=4)
    decoded = client.transcode(signature=sig, epsilon=EPS, carriers=CARRIERS, codec=CODEC).decoded
    keys = np.broadcast_to(sig, decoded.shape).astype(np.float32)
    export_torchscript(example_model(), str(tmp_path / "example.pt"))
    export_program(MeanDeviation(), str(tmp_path / "keyless.pt2"), keyed=False)
    export_torchscript(MeanDeviation(), str(tmp_path / "keyless.pt"))
    for program, legacy, k in [(EXAMPLE_DETECTOR, tmp_path / "example.pt", keys), (tmp_path / "keyless.pt2", tmp_path / "keyless.pt", None)]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="codecloop.server.detector"):
            new, old = TorchDetector(program, "cpu"), TorchDetector(legacy, "cpu")
        assert (new.format, old.format, new.uses_key, old.uses_key) == (PT2, TORCHSCRIPT, k is not None, k is not None)
        assert [r.getMessage() for r in caplog.records] == [
            f"detector file {legacy} is TorchScript, which torch 2.13 deprecates: loaded on the legacy path; "
            "export the model as a .pt2 program with torch.export.save (docs/detectors.md)"
        ]  # one line, for the legacy file only
        for b in (1, 4):
            scores = batched_scores(new, decoded, k, b)
            np.testing.assert_array_equal(scores, batched_scores(old, decoded, k, b))
            assert len(set(scores)) == len(decoded)  # four different clips, four different scores


def test_session_server_logs_the_legacy_detector(server_target):
    """The session server serves the example as .pt2 and 'keyless' as TorchScript: only the latter is named legacy."""
    lines = "".join(SERVER_LINES[server_target])
    assert "keyless.pt is TorchScript, which torch 2.13 deprecates: loaded on the legacy path" in lines
    assert "example_detector.pt2 is TorchScript" not in lines
    assert "detector example: torch.export detector example_detector.pt2 on cpu (clip, signature)" in lines
    assert "detector keyless: TorchScript detector keyless.pt on cpu (clip only)" in lines


def test_detector_file_checks(tmp_path):
    dynamic = {0: torch.export.Dim("batch", min=1)}
    clips = torch.rand(2, 2, 8, 8, 3)
    bad_programs = {
        "three.pt2": (torch.export.export(ThreeInputs(), (clips, clips, clips)), r"forward takes 3 inputs; it must take clips or \(clips, keys\)"),
        "shape.pt2": (torch.export.export(WrongShape(), (clips,), dynamic_shapes=(dynamic,)),
                      r"forward returns shape \('s\d+', '2'\); it must return one score per clip, shape \(s\d+,\)"),
        "frames.pt2": (torch.export.export(OneFrame(), (clips[:, 0],), dynamic_shapes=(dynamic,)),
                       r"input 'frames' is torch.float32 with 4 dimensions; it must be float32 \(B, T, H, W, 3\)"),
        "tuple.pt2": (torch.export.export(InATuple(), (clips,), dynamic_shapes=(dynamic,)), "forward returns 1 outputs in a tuple; it must return one score per clip"),
        "static.pt2": (torch.export.export(MeanDeviation(), (clips,)), "exported for batches of exactly 2 clips; export it with a dynamic batch"),
    }  # fmt: skip
    for name, (program, message) in bad_programs.items():
        torch.export.save(program, str(tmp_path / name))
        with pytest.raises(ValueError, match=f"^detector file {tmp_path / name}: {message}"):
            TorchDetector(tmp_path / name, "cpu")
    (tmp_path / "junk.pt2").write_bytes(b"not a model" * 10)
    with pytest.raises(ValueError, match=f"^detector file {tmp_path / 'junk.pt2'}: not a model archive; a detector file must be a torch.export"):
        TorchDetector(tmp_path / "junk.pt2", "cpu")
    torch.save(example_model().state_dict(), str(tmp_path / "weights.pt"))
    with pytest.raises(ValueError, match=r"weights.pt: a zip archive but no model program \(a torch.save pickle\?\)"):
        TorchDetector(tmp_path / "weights.pt", "cpu")
    with pytest.raises(ValueError, match="does not exist"):
        TorchDetector(tmp_path / "missing.pt2", "cpu")

    # TorchScript (legacy): the inputs are checked on load, the output by the warm-up
    torch.jit.save(torch.jit.script(ThreeInputs()), str(tmp_path / "three.pt"))
    torch.jit.save(torch.jit.script(WrongShape()), str(tmp_path / "shape.pt"))
    with pytest.raises(ValueError, match=f"^detector file {tmp_path / 'three.pt'}: forward takes 3 inputs"):
        TorchDetector(tmp_path / "three.pt", "cpu")
    legacy = TorchDetector(tmp_path / "shape.pt", "cpu")
    with pytest.raises(CodecLoopServerError, match=r"^detector shape.pt returned \(2, 3\); it must return one score per clip, shape \(2,\)"):
        legacy(np.zeros((2, 3, 16, 16, 3), np.uint8), None)
    with pytest.raises(ValueError, match=f"^detector file {tmp_path / 'shape.pt'}: fails on a batch of 1 clips of shape \\(3, 16, 16\\): detector shape.pt returned"):
        DynamicBatcher(legacy, DetectorConfig("x", "example")).warm_up((3, 16, 16))
    with pytest.raises(ValueError, match="max_batch_size"):
        DetectorConfig("x", "example", max_batch_size=0)


def test_serve_refuses_a_bad_detector_file_in_one_line(tmp_path):
    bad = tmp_path / "weights.pt2"
    torch.save(example_model().state_dict(), str(bad))
    proc = subprocess.run(
        [sys.executable, "-m", "codecloop.cli", "serve", "--port", "0", "--workers", "1", "--detector", f"bad={bad}", "--detector-device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"codecloop serve: detector file {bad}: a zip archive but no model program (a torch.save pickle?); "
        "a detector file must be a torch.export program (.pt2, torch.export.save) or legacy TorchScript (torch.jit.save)"
    )
    assert "Traceback" not in proc.stderr


def test_scorer_params_refused_for_a_detector(client):
    with pytest.raises(codecloop.CodecLoopValueError, match="unknown parameter 'kernel' for scorer 'example'; allowed: none"):
        client.evaluate(block_signature(1)[None], carriers=CARRIERS, scorer="example", scorer_params={"kernel": 3})
    assert {"example", "keyless", "blind", "informed"} <= {s.name for s in client.info().scorers}


def test_training_script_exports_a_loadable_detector_in_both_formats(tmp_path):
    out = tmp_path / "det.pt2"
    proc = subprocess.run(
        [sys.executable, "scripts/train_detector.py", "--out", str(out), "--clips", "4", "--holdout-clips", "2", "--steps", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "holdout (2 clips" in proc.stdout
    assert f"wrote {out} (torch.export) and {tmp_path / 'det.pt'} (TorchScript, legacy)" in proc.stdout
    rng = np.random.default_rng(3)
    clips = rng.integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    keys = rng.choice([-1.0, 1.0], (2, 4, 32, 32, 3)).astype(np.float32)
    program, legacy = TorchDetector(out, "cpu"), TorchDetector(tmp_path / "det.pt", "cpu")
    assert (program.format, legacy.format) == (PT2, TORCHSCRIPT)
    scores = program(clips, keys)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, legacy(clips, keys))


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (runs where one is)")
def test_pt2_on_cuda_scores_like_torchscript_and_the_cpu(tmp_path):
    """The .pt2 moved to the GPU (torch.export.passes.move_to_device_pass): the legacy file's scores
    there, and the CPU's within the measured CUDA difference (~4e-7 on scores of ~1e-2)."""
    export_torchscript(example_model(), str(tmp_path / "example.pt"))
    rng = np.random.default_rng(5)
    clips = rng.integers(0, 256, (4, 16, 112, 112, 3), dtype=np.uint8)
    keys = rng.choice([-1.0, 1.0], (4, 1, 112, 112, 3)).astype(np.float32)
    gpu = TorchDetector(EXAMPLE_DETECTOR, "cuda")
    assert gpu.device.type == "cuda" and gpu.format == PT2
    scores = gpu(clips, keys)
    np.testing.assert_allclose(scores, TorchDetector(tmp_path / "example.pt", "cuda")(clips, keys), rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores, TorchDetector(EXAMPLE_DETECTOR, "cpu")(clips, keys), rtol=0, atol=1e-6)


def test_servers_in_one_process_keep_their_detectors_apart():
    """Each server's engine has its own scorer registry: a detector loaded by one server is neither
    offered nor accepted by another server in the same process, and a detector named like a scorer
    already there is refused at start."""
    import grpc

    from codecloop_server import server
    from codecloop_server.registry import NameTaken
    from codecloop_wire.tensors import to_tensor
    from codecloop_wire.v1 import codecloop_pb2 as pb
    from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc

    base = {"port": 0, "workers": 1, "clip_shape": (4, 32, 32)}
    request = pb.EvaluateRequest(
        candidates=[to_tensor(np.zeros((1, 32, 32, 3), np.float32), "float32")],
        carriers=pb.Carriers(dataset=pb.DatasetCarriers(num_clips=1)), scorer=pb.Scorer(name="example"),
    )  # fmt: skip

    async def run() -> None:
        own = await server.start(server.ServerConfig(**base, detectors=(DetectorConfig("example", "example", device="cpu"),)))
        plain = await server.start(server.ServerConfig(**base))
        try:
            infos, replies = [], []
            for running in (own, plain):
                async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                    stub = pb_grpc.CodecLoopStub(channel)
                    infos.append({s.name for s in (await stub.GetServerInfo(pb.GetServerInfoRequest())).scorers})
                    try:
                        replies.append(len((await stub.EvaluateSignature(request)).results))
                    except grpc.aio.AioRpcError as err:
                        replies.append(f"{err.code().name}: {err.details()}")
            assert infos == [{"blind", "informed", "example"}, {"blind", "informed"}]
            assert replies[0] == 1
            assert replies[1] == "INVALID_ARGUMENT: scorer.name: unknown scorer 'example'; allowed: ['blind', 'informed']"
            with pytest.raises(NameTaken, match="^a scorer named 'blind' is already registered$"):
                await server.start(server.ServerConfig(**base, detectors=(DetectorConfig("blind", "example", device="cpu"),)))
        finally:
            await own.stop(0)
            await plain.stop(0)

    asyncio.run(run())
