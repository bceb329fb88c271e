"""Channels (resize, crop, frame rate, several encodes) and the codecs beyond libx264: validation
naming the step, determinism per codec, fidelity to the ffmpeg CLI, and the protocol end to end."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

import codecloop
from codecloop import Channel, Codec, Crop, DatasetCarriers, FrameRate, Resize
from codecloop.testing import realistic_clip
from codecloop_server import channels
from codecloop_server.codecs import CODECS, CodecSettings
from codecloop_server.convert import rgb_to_yuv420p
from codecloop_server.reference import decode_annexb, decode_packets, transcode_yuv
from codecloop_server.transcode import encode_packets, transcode_rgb
from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.poison import poison
from codecloop_wire.stats import psnr_db
from tests.conftest import block_signature, ffmpeg_or_skip

SMALL = DatasetCarriers(num_clips=4, seed=5)


def test_cli_syntax_parses_every_step():
    c = Channel.parse("resize:0.5:lanczos,crop:4:6:48:40,fps:15,libx265:crf=30:preset=fast,resize:64x48,libsvtav1:qp=40:preset=10")
    assert c.steps == (
        Resize(scale=0.5, filter="lanczos"), Crop(4, 6, 48, 40), FrameRate(15), Codec(codec="libx265", crf=30.0, preset="fast"),
        Resize(width=64, height=48), Codec(codec="libsvtav1", qp=40, preset="10"),
    )  # fmt: skip
    assert Channel.from_proto(c.to_proto()) == c
    assert Channel.parse("social") == Channel(preset="social")
    assert Channel.parse("libvpx-vp9:bitrate=300").steps == (Codec(codec="libvpx-vp9", bitrate_kbps=300),)
    fit = Channel.parse("resize:540p:area,libx264:crf=35")
    assert fit.steps[0] == Resize(max_short_side=540, filter="area") and Channel.from_proto(fit.to_proto()) == fit
    assert fit.label() == "resize:540p:area,libx264:crf=35" and Channel(fit.steps).label().startswith("resize to 540p > ")
    for bad in ("resize", "libx264:speed=3", "blur:3", "crop:1:2:3", "resize:540q"):
        with pytest.raises(CodecLoopValueError, match="channel: "):
            Channel.parse(bad)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([Resize(width=10, height=10), Codec()], r"channels\[0\]\.steps\[1\]\.encode: a 10x10 frame; an encode needs even width and height of at least 16"),
        ([Resize(scale=0.1), Codec()], r"channels\[0\]\.steps\[1\]\.encode: a 12x12 frame"),
        ([Codec(codec="libvpx-vp9", qp=30)], r"channels\[0\]\.steps\[0\]\.encode\.qp: libvpx-vp9 offers no constant quantizer"),
        ([Codec(codec="libsvtav1", crf=0)], r"channels\[0\]\.steps\[0\]\.encode\.crf: 0\.0 is outside the allowed range \[1, 63\] for libsvtav1"),
        ([Codec(codec="libx265", preset="9")], r"channels\[0\]\.steps\[0\]\.encode\.preset: unknown preset '9' for libx265"),
        ([Codec(codec="libx264", crf=23, qp=20)], r"channels\[0\]\.steps\[0\]\.encode\.qp: give at most one of crf, qp, bitrate_kbps"),
        ([Codec(codec="h266")], r"channels\[0\]\.steps\[0\]\.encode\.codec: unknown codec 'h266'"),
        ([Crop(100, 0, 32, 32), Codec()], r"channels\[0\]\.steps\[0\]\.crop: the rectangle x=100 y=0 32x32 does not fit a 112x112 frame"),
        ([Resize(scale=5.0), Codec()], r"channels\[0\]\.steps\[0\]\.resize\.scale: 5\.0 is outside the allowed range \(0, 4\]"),
        ([Resize(scale=0.5, filter="gauss"), Codec()], r"channels\[0\]\.steps\[0\]\.resize\.filter: unknown filter 'gauss'"),
        ([FrameRate(300), Codec()], r"channels\[0\]\.steps\[0\]\.frame_rate\.fps: 300 is outside the allowed range \[1, 240\]"),
        ([Resize(scale=0.5)], r"channels\[0\]\.steps: no encode step"),
        ([Resize(width=64, height=112), Codec(codec="libx265")], r"channels\[0\]\.steps\[1\]\.encode: libx265 needs a width of at least 66 px"),
    ],
)
def test_bad_channel_is_refused_naming_the_step(client, steps, message):
    with pytest.raises(codecloop.CodecLoopValueError, match=message):
        client.evaluate(block_signature(1)[None], carriers=SMALL, channels=[Channel(tuple(steps))])


def test_unknown_preset_and_too_many_channels(client):
    allowed = r"allowed: \['messaging', 'reupload', 'social', 'streaming'\]"
    with pytest.raises(codecloop.CodecLoopValueError, match=r"channels\[0\]\.preset: unknown preset 'tiktok'; " + allowed):
        client.evaluate(block_signature(1)[None], carriers=SMALL, channels=Channel(preset="tiktok"))
    many = [Channel(preset="streaming"), Channel(preset="streaming"), Channel((Codec(crf=20),))]
    with pytest.raises(codecloop.CodecLoopLimitError, match="max_codecs = 8"):
        client.evaluate(block_signature(1)[None], carriers=SMALL, channels=many)


def test_channels_end_to_end(client):
    """Codecs then channels, presets expanded in place; fitness = worst, fitness_mean = mean; a
    one-step channel is exactly the codec given alone; every channel's result names it."""
    sig = block_signature(3)[None]
    chans = [Channel((Codec(crf=28),), name="plain"), Channel.parse("resize:0.5,libx264:crf=23"), Channel(preset="streaming")]
    res = client.evaluate(sig, epsilon=4 / 255, carriers=SMALL, codecs=Codec(crf=35), channels=chans, per_clip_scores=True)
    cand = res.candidates[0]
    names = [s.channel.name for s in cand.codecs]
    assert names == ["", "plain", "resize:0.5,libx264:crf=23", "vp9-full", "vp9-540", "av1-full", "av1-540"]
    assert [s.codec.codec for s in cand.codecs] == ["libx264"] * 3 + ["libvpx-vp9"] * 2 + ["libsvtav1"] * 2
    seps = [s.separation for s in cand.codecs]
    assert cand.fitness == min(seps) and cand.fitness_mean == pytest.approx(np.mean(seps))
    assert cand.codecs[2].channel.steps[0] == Resize(scale=0.5, filter="bicubic")  # resolved: the default filter is named
    alone = client.evaluate(sig, epsilon=4 / 255, carriers=SMALL, codecs=Codec(crf=28), per_clip_scores=True).candidates[0].codecs[0]
    assert alone.channel is None  # a request without channels gets the old reply, field for field
    np.testing.assert_array_equal(alone.poisoned_scores, cand.codecs[1].poisoned_scores)
    assert alone.poisoned_bytes_mean == cand.codecs[1].poisoned_bytes_mean
    # a downscale then H.264 CRF 23 costs fewer bytes than full size
    assert cand.codecs[2].poisoned_bytes_mean < cand.codecs[1].poisoned_bytes_mean
    # clean work is per (clip, channel): a new candidate through the same channels encodes no clean clip
    before = client.info().load
    client.evaluate(block_signature(9)[None], epsilon=4 / 255, carriers=SMALL, codecs=Codec(crf=35), channels=chans)
    after = client.info().load
    assert after["clean_encodes"] == before["clean_encodes"] and after["poisoned_encodes"] - before["poisoned_encodes"] == 7 * 4


def test_transcode_through_a_channel_is_the_local_channel(client):
    """Transcode(channel) returns the carriers' shape, bit-identical to channels.Channel.apply on the
    same poisoned input (the server's own code, run here: the RealCodec forward path)."""
    sig = block_signature(4)
    spec = "resize:0.75,libx264:crf=23,fps:12,libx265:crf=30:preset=fast"
    out = client.transcode(sig, epsilon=4 / 255, carriers=DatasetCarriers(num_clips=2, seed=1), channel=Channel.parse(spec), include_input=True)
    assert out.decoded.shape == out.inputs.shape == (2, 16, 112, 112, 3) and out.codec.codec == "libx265" and out.channel.name == spec
    local = channels.Channel(
        (channels.Resize(scale=0.75), CodecSettings(crf=23), channels.FrameRate(12), CodecSettings("libx265", crf=30, preset="fast", fps=12))
    )
    for i in range(2):
        decoded, nbytes = local.apply(out.inputs[i])
        np.testing.assert_array_equal(decoded, out.decoded[i])
        assert nbytes == out.encoded_bytes[i]
    # 12 fps from 25: carrier frames 0, 1, 2 map to output frames 0, 0, 1 -> frames 0 and 1 repeat
    np.testing.assert_array_equal(out.decoded[0][0], out.decoded[0][1])


def test_server_info_lists_codecs_presets_and_filters(client):
    info = client.info()
    codecs = {c.codec: c for c in info.codec_info}
    assert set(codecs) == {"libx264", "libx265", "libvpx-vp9", "libsvtav1"}
    assert codecs["libvpx-vp9"].decoder == "vp9" and not codecs["libvpx-vp9"].qp_range and list(codecs["libsvtav1"].crf_range) == [1, 63]
    assert codecs["libx265"].version.startswith("x265 (build") and codecs["libx264"].default_preset == "medium"
    assert {p.name for p in info.channel_presets} == {"social", "streaming", "messaging", "reupload"}
    social = next(p for p in info.channel_presets if p.name == "social")
    assert [c.steps[1].crf for c in social.channels] == [23, 28] and social.channels[0].steps[0].max_short_side == 720
    assert "lanczos" in info.resize_filters


@pytest.mark.parametrize("width", [66, 72, 80, 96])
def test_libx265_repeats_at_the_narrow_widths_it_accepts(width):
    """Just above X265_MIN_WIDTH, with a scene cut (at 64 px the same frames gave several bitstreams)."""
    clip = realistic_clip(2, 8, 64, width, cut=True)
    settings = CodecSettings("libx265", crf=30)
    assert len({(nbytes, decoded.tobytes()) for decoded, nbytes in (transcode_rgb(clip, settings) for _ in range(6))}) == 1


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_each_codec_repeats_on_realistic_content(codec):
    """Repeated encodes of the same clip (camera motion, a cut, noise) give one bitstream per codec."""
    clip = realistic_clip(11, cut=True)
    settings = CodecSettings(codec, crf=30)
    runs = [transcode_rgb(clip, settings) for _ in range(4)]
    assert len({r[1] for r in runs}) == 1
    for decoded, _ in runs[1:]:
        np.testing.assert_array_equal(decoded, runs[0][0])
    assert 25 < _psnr(runs[0][0], clip) < 60


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return psnr_db(int(np.sum((a.astype(np.int64) - b) ** 2)), a.size)


def test_resize_step_matches_ffmpeg_cli(tmp_path):
    """A resize step is the CLI's scale filter with the same flags on rgb24, bit for bit."""
    ffmpeg = ffmpeg_or_skip()
    clip = realistic_clip(3, t=4)
    (tmp_path / "in.rgb").write_bytes(clip.tobytes())
    for flt, (w, h) in (("bicubic", (56, 56)), ("lanczos", (84, 64)), ("area", (40, 40)), ("bilinear", (160, 128))):
        subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "112x112", "-i", str(tmp_path / "in.rgb"),
                        "-vf", f"scale={w}:{h}:flags={flt}", "-f", "rawvideo", "-pix_fmt", "rgb24", str(tmp_path / "out.rgb")], check=True)  # fmt: skip
        cli = np.frombuffer((tmp_path / "out.rgb").read_bytes(), np.uint8).reshape(4, h, w, 3)
        np.testing.assert_array_equal(channels.resize(clip, h, w, flt), cli, err_msg=flt)


@pytest.mark.parametrize("codec", ["libx265", "libvpx-vp9", "libsvtav1"])
def test_codec_close_to_ffmpeg_cli(tmp_path, codec):
    """The CLI here links other encoder builds than PyAV's wheel (Debian 12: x265 3.5, libvpx 1.12,
    SVT-AV1 1.4.1; the wheel: x265 4.2 and FFmpeg 8.1's libvpx and SVT-AV1), so bitstreams differ:
    same input, same options, the decoded PSNR agrees within 1 dB and the size within 20 % (measured
    on three clips: within 0.6 dB and 10 %; README "Channels")."""
    ffmpeg = ffmpeg_or_skip()
    t, h, w = 16, 112, 112
    yuv = rgb_to_yuv420p(realistic_clip(7, t, h, w))
    settings = CodecSettings(codec, crf=32)
    (tmp_path / "in.yuv").write_bytes(yuv.tobytes())
    ext = {"libx265": "hevc", "libvpx-vp9": "ivf", "libsvtav1": "ivf"}[codec]
    args = [a for a in settings.ffmpeg_args() if not a.startswith("asm=")]
    if codec == "libx265":  # x265 3.5 has no AVX2-pinned build difference to honour; keep its own detection
        args = [a.replace(":asm=avx2", "") for a in args]
    subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{w}x{h}", "-r", "25",
                    "-i", str(tmp_path / "in.yuv"), *args, str(tmp_path / f"cli.{ext}")], check=True)  # fmt: skip
    subprocess.run([ffmpeg, "-v", "error", "-y", "-threads", "1", "-i", str(tmp_path / f"cli.{ext}"), "-f", "rawvideo", "-pix_fmt", "yuv420p",
                    str(tmp_path / "cli.yuv")], check=True)  # fmt: skip
    cli = np.frombuffer((tmp_path / "cli.yuv").read_bytes(), np.uint8).reshape(t, h * 3 // 2, w)
    ours, nbytes = transcode_yuv(yuv, settings)
    assert abs(_psnr(ours, yuv) - _psnr(cli, yuv)) < 1.0
    assert 0.8 < nbytes / (tmp_path / f"cli.{ext}").stat().st_size < 1.2


def test_hevc_decodes_the_same_through_parser_and_packets():
    """libx265's packets decoded as one Annex-B stream (what the server does) and as packets agree."""
    import av

    yuv = rgb_to_yuv420p(realistic_clip(2))
    settings = CodecSettings("libx265", crf=28)
    packets = encode_packets((av.VideoFrame.from_ndarray(f, format="yuv420p") for f in yuv), settings, 112, 112)
    a = [f.to_ndarray() for f in decode_packets(packets, settings)]
    b = [f.to_ndarray() for f in decode_annexb(b"".join(packets), "hevc")]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))


def test_poisoned_channel_changes_and_codec_steps_match_transcode():
    """Channel.apply of a one-step channel is transcode_rgb; with a resize it is resize, transcode, resize back."""
    clip = realistic_clip(5)
    marked = poison(clip, block_signature(2), 4 / 255)
    one = channels.Channel.of(CodecSettings(crf=28))
    np.testing.assert_array_equal(one.apply(marked)[0], transcode_rgb(marked, CodecSettings(crf=28))[0])
    two = channels.Channel((channels.Resize(scale=0.5), CodecSettings(crf=28)), map_back_filter="lanczos")
    small, nbytes = transcode_rgb(channels.resize(marked, 56, 56, "bicubic"), CodecSettings(crf=28))
    out, total = two.apply(marked)
    np.testing.assert_array_equal(out, channels.resize(small, 112, 112, "lanczos"))
    assert total == nbytes
    with pytest.raises(CodecLoopValueError, match="no encode step"):
        channels.Channel((channels.Resize(scale=0.5),))


def test_cli_evaluate_and_optimize_over_channels(server_target, tmp_path):
    """`--channel` (repeatable, presets or steps) in evaluate and optimize; the worst channel decides
    and the summary names each channel."""
    import json
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "codecloop.cli", "evaluate", "--target", server_target, "--random", "block8", "--clips", "4",
         "--channel", "messaging", "--channel", "resize:0.75,libx265:crf=30"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("   0  ")]
    assert [r.split()[1] for r in rows] == ["messaging", "resize:0.75,libx265:crf=30"]  # only the channels: no --crf given
    run = subprocess.run(
        [sys.executable, "-m", "codecloop.cli", "optimize", "--target", server_target, "--budget", "8", "--popsize", "4",
         "--train-clips", "3", "--holdout-clips", "4", "--validation-split", "none", "--param", "dct:8:3",
         "--channel", "libvpx-vp9:crf=40", "--channel", "resize:0.5,libsvtav1:crf=45", "--out", str(tmp_path), "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    per = summary["holdout"]["per_codec"]
    assert [p["codec"] for p in per] == ["libvpx-vp9:crf=40", "resize:0.5,libsvtav1:crf=45"]
    assert summary["holdout"]["objective"] == min(p["objective"] for p in per)
    assert [c["name"] for c in summary["config"]["channels"]] == ["libvpx-vp9:crf=40", "resize:0.5,libsvtav1:crf=45"]
    worst = min(per, key=lambda p: p["objective"])["codec"]
    assert summary["fidelity"]["codec"] == worst and summary["fidelity"]["clips"] == 4  # measured through the worst channel


def test_absolute_sizes_take_the_scale_of_the_video_a_clip_stands_for():
    """``Resize(max_short_side=N)``: the scale that brings the source video's short side to at most N,
    applied to the clip; never up; without a source side the clip stands for itself."""
    clip = realistic_clip(5)
    messaging = channels.PRESETS["messaging"].channels[0]
    half = channels.Channel((channels.Resize(scale=0.5), *messaging.steps[1:]))
    unscaled = channels.Channel(messaging.steps[1:])
    np.testing.assert_array_equal(messaging.apply(clip, 1080)[0], half.apply(clip)[0])  # 1080p source -> 540 lines: half
    np.testing.assert_array_equal(messaging.apply(clip, 480)[0], unscaled.apply(clip)[0])  # a 480-line source keeps its size
    np.testing.assert_array_equal(messaging.apply(clip)[0], unscaled.apply(clip)[0])  # a 112-px clip standing for itself
    assert [after for *_, after in messaging.stages((16, 112, 112), 1080)][0] == (16, 56, 56)
    assert [after for *_, after in messaging.stages((16, 112, 112), 720)][0] == (16, 84, 84)
    with pytest.raises(codecloop.CodecLoopValueError, match=r"give width and height, or scale, or max_short_side \(exactly one; given: scale, max_short_side\)"):
        channels.Resize(scale=0.5, max_short_side=540)
    with pytest.raises(codecloop.CodecLoopValueError, match=r"resize.max_short_side: 8 is outside the allowed range \[16, 8192\]"):
        channels.Resize(max_short_side=8)
    too_small = channels.Channel((channels.Resize(max_short_side=16), CodecSettings()))
    with pytest.raises(codecloop.CodecLoopValueError, match=r"steps\[1\].encode: a 14x14 frame"):
        too_small.apply(clip, 128)  # 112 * 16 / 128 = 14 px: refused, naming the step, never clipped


def test_dataset_clips_carry_their_source_side_into_the_channel(client):
    """The real corpus records each source's short side (Big Buck Bunny 720, carphone 144, bikes 272):
    through "messaging" (at most 540 lines) a Big Buck Bunny carrier is scaled by 540 / 720, the
    others are not, exactly as ``Channel.apply`` with that side gives."""
    from codecloop_server.corpus import real_corpus

    ds = real_corpus()
    assert ds.source_sides == (720, 144, 272)
    carriers = DatasetCarriers("real", "train", 0)
    out = client.transcode(block_signature(2), epsilon=2 / 255, carriers=carriers, channel=Channel(preset="messaging"), include_input=True)
    messaging = channels.PRESETS["messaging"].channels[0]
    sides = {ds.source_side(i) for i in out.clip_ids}
    assert sides == {720, 144}  # train: Big Buck Bunny and carphone
    for k, i in enumerate(out.clip_ids):
        np.testing.assert_array_equal(out.decoded[k], messaging.apply(out.inputs[k], ds.source_side(i))[0])
    bbb = next(k for k, i in enumerate(out.clip_ids) if ds.source_side(i) == 720)
    assert not np.array_equal(out.decoded[bbb], messaging.apply(out.inputs[bbb])[0])  # the side made a difference
