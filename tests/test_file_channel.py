"""``codecloop channel``: a server preset channel on a whole file at its own size (the steps'
relative sizes become absolute ones, the frame rate changes as on carriers, audio is copied)."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest

from codecloop.testing import realistic_clip
from codecloop_server.channels import PRESETS, _latest_frames, resize
from codecloop_server.file_channel import apply_to_file, find_channel, plan
from tests.test_mark import _content, _make_video, _probe


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codecloop.cli", *args], capture_output=True, text=True, timeout=300)


def test_plan_is_the_presets_steps_in_absolute_terms():
    messaging = PRESETS["messaging"].channels[0].steps  # at most 540 lines, 15 fps
    assert plan(messaging, 1080, 1920, Fraction(30)) == (540, 960, Fraction(15))
    assert plan(messaging, 1920, 1080, Fraction(30)) == (960, 540, Fraction(15))  # portrait: the short side is the width
    assert plan(messaging, 480, 854, Fraction(25)) == (480, 854, Fraction(15))  # never up, and a 480-line video is not shrunk
    assert plan(messaging, 112, 112, Fraction(25)) == (112, 112, Fraction(15))  # a file stands for itself
    social = PRESETS["social"].channels[1].steps  # at most 720 lines
    assert plan(social, 1080, 1920, Fraction(25)) == (720, 1280, Fraction(25))
    assert plan(social, 720, 1280, Fraction(25)) == (720, 1280, Fraction(25))
    assert plan(social, 1000, 1778, Fraction(25)) == (720, 1280, Fraction(25))  # 1778 * 0.72 = 1280.2 -> even 1280


@pytest.mark.parametrize("name", ["messaging", "social-crf28", "reupload"])
def test_on_a_carrier_sized_file_the_file_channel_is_the_servers_channel(tmp_path, name):
    """A lossless file of one 16 x 112 x 112 carrier clip at 25 fps: the file channel's output, mapped back
    as the server maps back, is bit for bit what ``Channel.apply`` gives the evaluation."""
    clip = realistic_clip(3, t=16, h=112, w=112)
    src = tmp_path / "clip.mkv"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width = stream.height = 112
        stream.pix_fmt = "bgr0"
        for f in clip:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="bgr0")))
        out.mux(stream.encode(None))
    apply_to_file(src, tmp_path / "out.mkv", name)
    with av.open(str(tmp_path / "out.mkv")) as c:
        rate = c.streams.video[0].average_rate
        frames = np.stack([f.reformat(format="rgb24", interpolation=av.video.reformatter.Interpolation.BICUBIC).to_ndarray() for f in c.decode(video=0)])
    channel = find_channel(name)
    back = resize(frames, 112, 112, channel.map_back_filter) if frames.shape[1:3] != (112, 112) else frames
    back = back[_latest_frames(16, len(back), int(rate), 25)]
    np.testing.assert_array_equal(back, channel.apply(clip)[0])


@pytest.mark.parametrize(("channel", "codec", "size", "frames"), [("messaging", "h264", (360, 200), 30), ("reupload", "hevc", (360, 200), 48)])
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
        ((str(src), str(tmp_path / "o.mp4"), "--channel", "social"), "channel: 'social' is not a channel; allowed: ['av1-540', 'av1-full'"),
        ((str(tmp_path / "none.mp4"), str(tmp_path / "o.mp4"), "--channel", "messaging"), "is not a file"),
    ]:
        run = _cli("channel", *args)
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and message in run.stderr, run.stderr
