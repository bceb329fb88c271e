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


def test_null_check_counts_unmarked_videos_and_describes_their_z(tmp_path):
    ffmpeg_or_skip()
    from benchmarks.deployment import null_check, null_table

    result = null_check(tmp_path, 3, frames=20, zoom=2, channels=DEFAULT_CHANNEL, signature=_signature(2), fpr=1e-3)
    assert set(result) == {"crf28"}  # one channel: no pooled row
    r = result["crf28"]
    assert r["n"] == 3 and r["false_alarms"] == 0 and r["fpr_ci"][0] == 0.0 and r["fpr_ci"][1] > 0.6
    assert abs(r["z_mean"]) < 3 and r["z_sd"] > 0 and r["z_max"] < 3.09 and 0 <= r["ks_p"] <= 1
    assert list(tmp_path.iterdir()) == []  # every video it wrote is removed
    assert null_table(result, 1e-3)[2].startswith("| crf28 | 0/3 | [0.0%, 70.8%] |")
