"""The torch side: proxy, differentiable detector, real-codec autograd, the gradient back-ends and diagnose."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from codecloop import Codec, DatasetCarriers  # noqa: E402
from codecloop.torch_proxy import (  # noqa: E402
    H264Proxy,
    RealCodec,
    blind_scores,
    calibrate_qp_offset,
    qstep,
    quantize,
)
from codecloop_wire.errors import CodecLoopValueError  # noqa: E402
from tests.conftest import block_signature  # noqa: E402

SMALL = DatasetCarriers(num_clips=2, seed=5)


def test_quantize_modes():
    y = torch.tensor([0.2, 0.4, 0.6, 1.7, -2.3], requires_grad=True)
    np.testing.assert_array_equal(quantize(y, "hard", 0.1).detach(), [0, 0, 1, 2, -2])
    ste = quantize(y, "ste", 0.1)
    np.testing.assert_array_equal(ste.detach(), [0, 0, 1, 2, -2])
    (g,) = torch.autograd.grad(ste.sum(), y)
    np.testing.assert_array_equal(g, np.ones(5))  # straight-through: identity backward
    soft = quantize(y, "soft", 0.01).detach()
    np.testing.assert_allclose(soft, [0, 0, 1, 2, -2], atol=0.02)  # cold soft-round ~ round
    assert torch.all(quantize(y * 100, "tanh", 0.3).abs() <= 1)  # the seed's proxy saturates at one step
    assert qstep(4) == 1.0 and qstep(10) == 2.0


def test_proxy_quantization_zeroes_a_small_signature():
    """Hard rounding at CRF-28-like QP removes a 1/255 pattern; a fine QP keeps it."""
    rng = np.random.default_rng(0)
    clean = torch.full((1, 1, 32, 32, 3), 0.5)
    sig = torch.from_numpy(np.sign(rng.standard_normal((1, 32, 32, 3))).astype(np.float32))
    marked = (clean + sig / 255).clamp(0, 1)
    coarse = H264Proxy(32, "hard")
    assert float((coarse(marked) - coarse(clean)).abs().max()) < 1e-6
    fine = H264Proxy(0.5, "hard")
    assert float((fine(marked) - fine(clean)).abs().mean()) > 0.5 / 255


def test_torch_detector_matches_server_scorer():
    from codecloop_server import scorers

    rng = np.random.default_rng(1)
    clips = rng.integers(0, 256, (3, 2, 16, 24, 3), dtype=np.uint8)
    sig = rng.uniform(-1, 1, (1, 16, 24, 3)).astype(np.float32)
    blind = scorers.worker_scorer("blind")
    params = blind.resolve_params({})
    want = blind.score(blind.features(clips, params), blind.template(sig, params), None)
    got = blind_scores(torch.from_numpy(clips.astype(np.float32) / 255), torch.from_numpy(sig))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_real_codec_function(client):
    clean_run = client.transcode(None, carriers=SMALL, include_input=True)
    clean = torch.from_numpy(clean_run.inputs.astype(np.float32) / 255)
    sig = torch.from_numpy(block_signature(2)).requires_grad_(True)
    options = {"epsilon": 4 / 255, "carriers": SMALL, "codec": Codec()}
    out = RealCodec.apply(sig, clean, client, options, None)
    direct = client.transcode(block_signature(2), epsilon=4 / 255, carriers=SMALL)
    np.testing.assert_array_equal((out.detach().numpy() * 255).round().astype(np.uint8), direct.decoded)
    blind_scores(out, sig).sum().backward()
    assert sig.grad.shape == sig.shape and float(sig.grad.abs().sum()) > 0
    sig.grad = None
    out = RealCodec.apply(sig, clean, client, options, H264Proxy(32, "soft", 0.3))
    blind_scores(out, sig).sum().backward()
    assert sig.grad.shape == sig.shape and torch.isfinite(sig.grad).all()


def _gradient_run(client, folder, optimizer: str, budget: int, validate_every: int = 1, frames: int = 4, **kw):
    """A gradient run in the run layer: ``budget`` generations (one candidate each), a LowRes rgb
    signature of ``frames`` frames in 8x8 blocks."""
    from codecloop.optimize import Run, RunConfig
    from codecloop.params import LowRes

    config = RunConfig(
        optimizer=optimizer, epsilon=4 / 255, train=SMALL, validation=DatasetCarriers(split="validation", num_clips=2),
        holdout=DatasetCarriers(split="holdout", num_clips=4), budget=budget, validate_every=validate_every, **kw,
    )  # fmt: skip
    return Run(client, LowRes((16, 112, 112), (frames, 14, 14), "rgb"), config, folder)


@pytest.mark.parametrize("optimizer", ["proxy:tanh", "torch-hybrid"])
def test_gradient_backend_short(client, tmp_path, optimizer):
    """A gradient back-end is a back-end of the run layer: one candidate (the current signature) per
    generation, scored on the real codec, then one Adam step; validation, summary and plots as for CMA-ES."""
    summary = _gradient_run(client, tmp_path, optimizer, 3).run(progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["generation"] for e in log] == [0, 1, 2] and all("train_separation" in e and "proxy_separation" in e for e in log)
    assert len({e["separation"] for e in log}) == 3  # each step moved the signature
    best = np.load(tmp_path / "best.npy")
    assert best.shape == (16, 112, 112, 3)  # 4 distinct frames, each held 4 frames, in 8x8 blocks
    np.testing.assert_array_equal(best[0], best[3])
    assert np.all(best[0, :8, :8] == best[0, 0, 0])
    assert summary["holdout"]["codec"] == "libx264 crf=28 medium" and summary["selected"]["by"] == "validation"
    assert {"train", "validation", "holdout", "gap"} <= set(summary) and summary["stopped"] == {"by": "budget"}
    assert (tmp_path / "fitness.png").stat().st_size > 0 and (tmp_path / "holdout_roc.png").stat().st_size > 0


def test_diagnose_and_calibration(client, tmp_path):
    from codecloop.diagnose import diagnose, table

    rows, rho = diagnose(client, block_signature(3), carriers=SMALL, random=5, plot=tmp_path / "d.png")
    assert [r.name.split()[0:2] for r in rows] == [["proxy", "tanh"], ["proxy", "soft"], ["proxy", "ste"], ["real", "libx264"]]
    assert set(rho) == {"tanh", "soft", "ste"} and all(-1 <= v <= 1 for v in rho.values())
    assert "rank correlation" in table(rows, rho) and (tmp_path / "d.png").stat().st_size > 0
    run = client.transcode(None, carriers=SMALL, include_input=True)
    offset = calibrate_qp_offset(run.inputs, run.decoded, 28.0)
    assert -6 <= offset <= 12


def test_gradient_run_resumes_from_checkpoint(client, tmp_path):
    from codecloop.runcheck import RunSettingsError
    from codecloop.runconfig import GradientConfig

    straight = _gradient_run(client, tmp_path / "a", "proxy:ste", 5, validate_every=2, frames=1).run(progress=False)
    _gradient_run(client, tmp_path / "b", "proxy:ste", 3, validate_every=2, frames=1).run(progress=False)
    with pytest.raises(RunSettingsError, match=r"(?m)^  gradient.lr \(--lr\): 0.1 in the run folder, 0.2 now$"):  # the budget may change, lr not
        _gradient_run(client, tmp_path / "b", "proxy:ste", 5, validate_every=2, frames=1, gradient=GradientConfig(lr=0.2))
    resumed = _gradient_run(client, tmp_path / "b", "proxy:ste", 5, validate_every=2, frames=1, gradient=GradientConfig())
    assert resumed.resumed and resumed.resume_note().startswith(f"resuming {tmp_path / 'b'} at generation 3 (")
    summary = resumed.run(progress=False)
    generations = [json.loads(line)["generation"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert generations == [0, 1, 2, 3, 4]  # nothing lost, nothing twice
    np.testing.assert_allclose(np.load(tmp_path / "b" / "best.npy"), np.load(tmp_path / "a" / "best.npy"), atol=1e-6)
    assert summary["holdout"]["separation"] == pytest.approx(straight["holdout"]["separation"], rel=1e-5, abs=1e-7)


def test_torch_training_through_a_channel(client, tmp_path):
    """torch-ste forwards through a channel (RealCodec -> Transcode(channel)); the run's evaluations,
    validation and the held-out report go through the same channel."""
    from codecloop import Channel

    channel = Channel.parse("resize:0.75,libx265:crf=30:preset=ultrafast")
    summary = _gradient_run(client, tmp_path, "torch-ste", 2, frames=1, codecs=(), channels=(channel,)).run(progress=False)
    assert summary["holdout"]["codec"] == "resize:0.75,libx265:crf=30:preset=ultrafast"
    sig = torch.from_numpy(np.load(tmp_path / "best.npy")).requires_grad_(True)
    clean = torch.from_numpy(client.transcode(None, carriers=SMALL, include_input=True).inputs.astype(np.float32) / 255)
    out = RealCodec.apply(sig, clean, client, {"epsilon": 4 / 255, "carriers": SMALL, "channel": channel}, None)
    direct = client.transcode(sig.detach().numpy(), epsilon=4 / 255, carriers=SMALL, channel=channel)
    np.testing.assert_array_equal((out.detach().numpy() * 255).round().astype(np.uint8), direct.decoded)


def test_gradient_backends_refuse_what_they_cannot_train(client, tmp_path):
    from codecloop.optimize import Run, RunConfig
    from codecloop.params import make

    with pytest.raises(CodecLoopValueError, match="trains a LowRes rgb parameterization"):
        Run(client, make("dct:8:2", (16, 112, 112)), RunConfig(optimizer="torch-ste", train=SMALL), tmp_path)
    with pytest.raises(CodecLoopValueError, match="trains through one codec setting"):
        _gradient_run(client, tmp_path, "torch-ste", 2, codecs=(Codec(crf=23), Codec(crf=35)))
