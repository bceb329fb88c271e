"""benchmarks/deployment.py, the deployment check that benchmarks/deployment_outcome.py and
benchmarks/time_to_target.py --target deployment share: a real marked video and its unmarked copy
through a real channel (the ffmpeg CLI's libx264 CRF 28), detected, counted against the target."""

from __future__ import annotations

import numpy as np

from benchmarks.deployment import DEFAULT_CHANNEL, ChannelOutcome, DeploymentCheck, make_test_videos, reached, summarize, worst_tpr
from tests.conftest import ffmpeg_or_skip


def _signature(seed: int) -> np.ndarray:
    """The optimizer's default family: a 7x7 pattern of 16-pixel blocks per frame on a 112x112 tile, tanh-squashed."""
    small = np.tanh(2 * np.random.default_rng(seed).normal(size=(16, 7, 7, 3)))
    return np.repeat(np.repeat(small, 16, 1), 16, 2).astype(np.float32)


def test_marked_video_reaches_the_target_and_its_unmarked_copy_is_no_false_alarm(tmp_path):
    ffmpeg_or_skip()
    videos = make_test_videos(tmp_path, [], segments=0, frames=50, generated=1, zoom=2)
    check = DeploymentCheck(videos, DEFAULT_CHANNEL, tmp_path / "check")
    rows = check.check(_signature(0), "4/255")
    assert [(r["channel"], r["kind"]) for r in rows] == [("crf28", "marked"), ("crf28", "clean")]
    assert rows[0]["size"] == [256, 240] and rows[0]["frames"] == 50
    marked, clean = rows
    assert marked["marked"] and marked["p_value"] < 1e-3, marked
    assert not clean["marked"] and clean["p_value"] > 1e-3, clean
    outcome = summarize(rows, DEFAULT_CHANNEL)
    assert outcome["crf28"].true_positives == 1 and outcome["crf28"].false_positives == 0 and outcome["crf28"].n == 1
    assert reached(outcome, 0.95) and worst_tpr(outcome) == 1.0
    # the unmarked copy checked against another key is no false alarm either; a false alarm or one
    # channel short of the TPR misses the target
    other = summarize(check.check(_signature(1), "4/255")[1:], DEFAULT_CHANNEL)
    assert other["crf28"].false_positives == 0
    alarm = {"crf28": ChannelOutcome(1, 1, (0.025, 1.0), 1, (0.025, 1.0), 9.0)}
    short = outcome | {"messaging": ChannelOutcome(2, 1, (0.01, 0.99), 0, (0.0, 0.84), 3.0)}
    assert not reached(alarm, 0.95) and not reached(short, 0.95) and worst_tpr(short) == 0.5
