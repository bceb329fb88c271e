"""``codecloop channel``: a server preset channel on a whole file at its own size (the steps'
relative sizes become absolute ones, the frame rate changes as on carriers, audio is copied)."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import pytest

from codecloop_server.channels import PRESETS
from codecloop_server.file_channel import plan
from tests.test_mark import _content, _make_video, _probe


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codecloop.cli", *args], capture_output=True, text=True, timeout=300)


def test_plan_is_the_presets_steps_in_absolute_terms():
    messaging = PRESETS["messaging"].channels[0].steps
    assert plan(messaging, 1080, 1920, Fraction(30)) == (540, 960, Fraction(15))
    assert plan(messaging, 112, 112, Fraction(25)) == (56, 56, Fraction(15))  # what the carriers get
    assert plan(PRESETS["social"].channels[1].steps, 720, 1280, Fraction(25)) == (540, 960, Fraction(25))


@pytest.mark.parametrize(("channel", "codec", "size", "frames"), [("messaging", "h264", (180, 100), 30), ("reupload", "hevc", (270, 150), 48)])
def test_channel_on_a_file_writes_what_the_channel_delivers(tmp_path, channel, codec, size, frames):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mkv"
    _make_video(src, _content(seed=3, t=48, h=200, w=360), fps=24)
    run = _cli("channel", str(src), str(dst), "--channel", channel)
    assert run.returncode == 0, run.stderr
    assert f"to {size[0]}x{size[1]}" in run.stdout
    out = _probe(dst)
    assert out["video"]["codec_name"] == codec and (out["video"]["width"], out["video"]["height"]) == size
    assert int(out["video"]["nb_read_frames"]) == frames  # 48 frames at 24 fps -> 15 fps: ceil(48 * 15 / 24)
    assert out["audio"]["codec_name"] == "aac"


def test_bad_channel_or_input_exit_2_one_line(tmp_path):
    src = tmp_path / "in.mp4"
    _make_video(src, _content(seed=1, t=4, h=64, w=64), audio=False)
    for args, message in [
        ((str(src), str(tmp_path / "o.mp4"), "--channel", "social"), "channel: 'social' is not a channel; allowed: ['av1-full'"),
        ((str(tmp_path / "none.mp4"), str(tmp_path / "o.mp4"), "--channel", "messaging"), "is not a file"),
    ]:
        run = _cli("channel", *args)
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and message in run.stderr, run.stderr
