"""Results you can see: signature.png and frames.png in a run folder, PSNR / SSIM before and after
the codec in summary.json (the standard SSIM: checked against scikit-image), and fitness.png's
legend clear of the plotted markers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from codecloop import Codec, DatasetCarriers, fidelity
from codecloop.optimize import Run, RunConfig
from codecloop.params import make


def test_ssim_is_scikit_images_gaussian_ssim_on_luma():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 3, 40, 50, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    frames = zip(fidelity.luma(a).reshape(-1, 40, 50), fidelity.luma(b).reshape(-1, 40, 50))
    ref = np.mean([metrics.structural_similarity(x, y, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                   for x, y in frames])  # fmt: skip
    assert fidelity.ssim(a, b) == pytest.approx(ref, abs=1e-12)
    assert fidelity.ssim(a, a) == pytest.approx(1.0) and fidelity.psnr(a, a) is None


def test_a_run_folder_shows_the_signature_frames_and_fidelity_after_the_codec(client, tmp_path):
    config = RunConfig(
        epsilon=4 / 255, codecs=(Codec(crf=35, preset="ultrafast"),), train=DatasetCarriers(num_clips=4),
        validation=DatasetCarriers(split="validation", num_clips=4), holdout=DatasetCarriers(split="holdout", num_clips=6),
        popsize=4, budget=4,
    )  # fmt: skip
    summary = Run(client, make("lowres:7x7:rgb:t=4", (16, 112, 112)), config, tmp_path).run(progress=False)
    for name in ("signature.png", "frames.png", "fitness.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    f = json.loads((tmp_path / "summary.json").read_text())["fidelity"]
    assert f == summary["fidelity"] and f["clips"] == 4 and f["codec"] == "libx264 crf=35 ultrafast" and "11x11 Gaussian" in f["ssim"]
    # |mark| <= 4 levels before the codec: PSNR >= 20 log10(255 / 4) = 36.1 dB
    assert f["before_codec"]["psnr_db"] >= 20 * np.log10(255 / 4) and 0.5 < f["before_codec"]["ssim"] < 1
    # measured again from the server's own clips: the same numbers (a pure function of the request)
    look = DatasetCarriers(split="holdout", num_clips=4, seed=0)
    best = np.load(tmp_path / "best.npy")
    clean = client.transcode(None, epsilon=4 / 255, carriers=look, codec=config.codecs[0], include_input=True)
    marked = client.transcode(best, epsilon=4 / 255, carriers=look, codec=config.codecs[0], include_input=True)
    again = fidelity.report(clean.inputs, marked.inputs, clean.decoded, marked.decoded)
    assert {k: f[k] for k in again} == again
    assert again["after_codec"]["ssim"] < 1 and again["after_codec"]["psnr_db"] != again["before_codec"]["psnr_db"]


def test_fitness_legends_sit_outside_the_axes():
    from codecloop import plots

    history = [{"generation": g, "max": 0.01 * g, "mean": 0.005 * g, "best_tpr": 0.1 * g} for g in range(6)]
    validations = [{"generation": g, "candidate": c, "fitness": 0.01 * g, "tpr": 0.1 * g} for g in (1, 3, 5) for c in ("best", "mean")]
    section = {"objective": 0.05, "tpr": 0.5, "clips": 8}
    summary = {"target_fpr": 1 / 64, "objective": "centred-separation", "selected": {"by": "validation", "generation": 5},
               "train": section, "validation": section, "holdout": section}  # fmt: skip
    fig = plots.curves_figure(history, validations, summary)
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend, box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
        assert legend.y1 <= box.y0  # entirely under the plotting area: no marker is covered
