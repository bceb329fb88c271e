"""ε as an output (codecloop.epsilon): TPR against ε on the real codec, the smallest ε that reaches a
target, the plot, and bad input refused with the field named."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import codecloop
from codecloop.epsilon import LEVEL, smallest_epsilon, tpr_against_epsilon
from codecloop.plots import epsilon_plot
from codecloop_wire.errors import CodecLoopValueError
from tests.conftest import block_signature, error_lines

OPTIONS = codecloop.EvaluateOptions(
    carriers=codecloop.DatasetCarriers(num_clips=16, seed=3),
    codecs=codecloop.Codec(preset="ultrafast"),
    channels=codecloop.Channel.parse("resize:0.5,libx264:crf=28:preset=ultrafast"),
)


def test_tpr_grows_with_epsilon_per_channel_with_counts_and_intervals(client):
    sig = block_signature(0)
    epsilons = [0.5 * LEVEL, 1 * LEVEL, 6 * LEVEL]
    points = tpr_against_epsilon(client, sig, epsilons, target_fpr=1e-2, options=OPTIONS)
    assert len(points) == 2 * len(epsilons)  # one per ε and channel
    assert [p.epsilon for p in points] == sorted(p.epsilon for p in points)
    for channel in {p.channel for p in points}:
        mine = [p for p in points if p.channel == channel]
        assert all(p.n == 16 and p.tpr == p.true_positives / 16 for p in mine)
        assert all(p.tpr_ci[0] <= p.tpr <= p.tpr_ci[1] for p in mine)
        assert mine[0].true_positives < mine[-1].true_positives == 16  # invisible at half a level, certain at 6
        assert mine[0].psnr_db > mine[-1].psnr_db
    # the same evaluation through the plain SDK call agrees
    direct = client.evaluate(sig[None], OPTIONS.updated(epsilon=1 * LEVEL, null_model=(1e-2,))).candidates[0].codecs
    at_one = [p for p in points if math.isclose(p.epsilon, LEVEL)]
    assert [p.true_positives for p in at_one] == [s.tpr_at_fpr[0].true_positives for s in direct]


def test_smallest_epsilon_is_reached_by_the_worst_channel_and_the_grid_step_below_is_not(client, tmp_path):
    sig = block_signature(1)
    search = smallest_epsilon(client, sig, target_tpr=0.9, target_fpr=1e-2, high=8 * LEVEL, options=OPTIONS)
    assert search.epsilon is not None
    assert search.worst(search.epsilon).tpr >= 0.9
    if search.epsilon > search.low:
        below = search.worst(search.epsilon - search.step)  # bisection ends with the step below evaluated
        assert below.tpr < 0.9
    grid = round((search.high - search.low) / search.step) + 1
    assert search.evaluations <= 2 + math.ceil(math.log2(grid))
    assert search.as_dict()["reached"] and search.as_dict()["epsilon_levels"] == pytest.approx(search.epsilon * 255)
    png = epsilon_plot(tmp_path / "tpr_vs_epsilon.png", search.points, 0.9, search.epsilon)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_target_out_of_reach_says_so_after_one_evaluation(client):
    search = smallest_epsilon(client, block_signature(2), target_tpr=1.0, target_fpr=1e-2, low=0.25 * LEVEL, high=0.5 * LEVEL, options=OPTIONS)
    assert search.epsilon is None and search.evaluations == 1
    assert search.worst(0.5 * LEVEL).tpr < 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_tpr": 1.5}, r"target_tpr: 1.5 is outside the allowed range \(0, 1\]"),
        ({"target_tpr": 0.9, "target_fpr": 0.0}, r"target_fpr: 0.0 is outside"),
        ({"target_tpr": 0.9, "low": 0.1, "high": 0.05}, r"low \(0.1\) must be below high \(0.05\)"),
        ({"target_tpr": 0.9, "step": 0.0}, r"step: 0.0 is outside the allowed range"),
        ({"target_tpr": 0.9, "unit": "frames"}, r"unit: 'frames' is not one of clips, videos"),
    ],
)
def test_bad_search_input_names_the_field(client, kwargs, message):
    with pytest.raises(CodecLoopValueError, match=message):
        smallest_epsilon(client, block_signature(0), options=OPTIONS, **kwargs)


def test_bad_curve_input_names_the_field(client):
    with pytest.raises(CodecLoopValueError, match=r"channels\[0\]: a Codec, not a Channel"):
        codecloop.EvaluateOptions(channels=[codecloop.Codec()])
    with pytest.raises(CodecLoopValueError, match=r"signature: shape \(2, 1, 112, 112, 3\)"):
        tpr_against_epsilon(client, np.zeros((2, 1, 112, 112, 3), np.float32), [LEVEL], options=OPTIONS)
    with pytest.raises(CodecLoopValueError, match=r"epsilon: 1.5 is outside"):
        tpr_against_epsilon(client, block_signature(0), [1.5], options=OPTIONS)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codecloop.cli", *args], capture_output=True, text=True, timeout=300)


def test_optimize_target_tpr_then_the_epsilon_command_on_its_signature(server_target, tmp_path):
    """``optimize --target-tpr`` searches ε on the run's validation clips and reads it on its held-out
    clips (epsilon.json, tpr_vs_epsilon.png in the run folder); ``codecloop epsilon`` does the same for
    any signature file and agrees with the run's search on the same clips."""
    search = ["--target-tpr", "0.75", "--target-fpr", "1e-2", "--epsilon-high", "8/255", "--epsilon-step", "1/255"]
    out = _cli("optimize", "--target", server_target, "--dataset", "embedded", "--epsilon", "4/255", "--max-minutes", "0.15",
               "--train-clips", "4", "--popsize", "4", "--holdout-clips", "8", "--validation-clips", "8", "--preset", "ultrafast",
               "--param", "dct:8:3", "--out", str(tmp_path / "run"), "--no-progress", *search)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "smallest ε reaching TPR >= 0.75 at FPR 0.01 (clips, worst channel) on validation" in out.stdout
    report = json.loads((tmp_path / "run" / "epsilon.json").read_text())
    s = report["search"]
    assert s["carriers"]["split"] == "validation" and s["carriers"]["num_clips"] == 8 and report["report"]["carriers"]["num_clips"] == 8
    if s["epsilon"] is not None:
        found = [p for p in s["points"] if p["epsilon"] == s["epsilon"]]
        assert min(p["tpr"] for p in found) >= 0.75 and report["report"]["at_epsilon"]
    assert (tmp_path / "run" / "tpr_vs_epsilon.png").stat().st_size > 0
    again = _cli("epsilon", "--target", server_target, "--signature", str(tmp_path / "run" / "best.npy"), "--dataset", "embedded",
                 "--clips", "8", "--preset", "ultrafast", "--out", str(tmp_path / "eps"), *search)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "eps" / "epsilon.json").read_text())["search"]["epsilon"] == s["epsilon"]  # same clips, same answer


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-tpr", "1.5"], "argument --target-tpr: 1.5 is outside the allowed range (0, 1]"),
        (["--search-split", "test"], "--search-split: dataset 'embedded' has no split 'test'"),
        (["--epsilon-low", "8/255", "--epsilon-high", "2/255"], "must be below --epsilon-high"),
    ],
)
def test_epsilon_command_bad_input_exit_2_one_line(server_target, tmp_path, args, message):
    np.save(tmp_path / "s.npy", block_signature(0))
    run = _cli("epsilon", "--target", server_target, "--signature", str(tmp_path / "s.npy"), "--dataset", "embedded", "--out", str(tmp_path), *args)
    assert run.returncode == 2 and len(error_lines(run.stderr)) == 1 and message in run.stderr, run.stderr
