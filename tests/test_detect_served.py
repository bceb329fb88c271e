"""Whole-video detection with a served detector: the ScoreClips RPC (its z is the evaluation's null z
for the same clips; bad input refused naming the field), the clips cut by the deployment rule, and
``codecloop detect --detector`` / ``detect_video(detector=...)`` on real videos marked by
``codecloop mark`` and re-encoded by the ffmpeg CLI's libx264 (the session server serves the
example detector and a keyless one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

pytest.importorskip("torch")

from codecloop import DatasetCarriers, detect_video, mark_video  # noqa: E402
from codecloop.detect_served import ClipCutter  # noqa: E402
from codecloop_server import corpus  # noqa: E402
from codecloop_wire.null import p_values  # noqa: E402
from codecloop_wire.tensors import to_tensor  # noqa: E402
from codecloop_wire.v1 import codecloop_pb2 as pb  # noqa: E402
from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc  # noqa: E402
from tests.conftest import block_signature, error_lines, ffmpeg_or_skip, save_keyless_detector  # noqa: E402
from tests.test_detector import CODEC, EPS, load_model  # noqa: E402

SIG = block_signature(31, block=4)  # (1, 112, 112, 3): the example detector's training family


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_or_skip(), "-v", "error", "-y", *args], check=True, timeout=300)


@pytest.fixture(scope="module")
def clean_video(tmp_path_factory) -> Path:
    """48 frames of real footage at 224x120: 3 cycles of 16 frames x 2 tiles of 112x112 = 6 clips (8
    rows of partial tiles left out)."""
    out = tmp_path_factory.mktemp("served") / "clean.mp4"
    _ffmpeg("-i", str(corpus.real_video_dir() / "bikes.mp4"), "-frames:v", "48", "-vf", "crop=224:120:200:76", "-an", "-c:v", "libx264",
            "-crf", "12", "-pix_fmt", "yuv420p", str(out))  # fmt: skip
    return out


def test_clip_cutter_cuts_the_tile_grid_cycle_by_cycle():
    """Clip k of a cycle is tile k (row-major) of frames cT .. cT + T - 1; a cycle missing a frame
    gives no clip; partial tiles are left out."""
    t, h, w = 2, 4, 6
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (7, 9, 13, 3), dtype=np.uint8)  # 2 full rows, 2 full columns of tiles
    cutter = ClipCutter(t, h, w)
    out = [c for i, f in enumerate(video) if (c := cutter.add(i, f)) is not None]
    assert cutter.flush() is None  # frame 6 alone: its cycle is incomplete
    assert len(out) == 3 and all(c.shape == (4, t, h, w, 3) for c in out)
    for cycle, clips in enumerate(out):
        for k, clip in enumerate(clips):
            i, j = divmod(k, 2)
            np.testing.assert_array_equal(clip, video[cycle * t : (cycle + 1) * t, i * h : (i + 1) * h, j * w : (j + 1) * w])
    gappy = ClipCutter(t, h, w)  # frame indices from timestamps: index 3 never comes
    got = [gappy.add(i, video[0]) for i in (0, 1, 2, 4, 5)]
    assert got[2] is not None and got[3] is None and gappy.flush() is not None


def test_marked_video_is_detected_with_the_example_detector_and_the_clean_one_is_not(client, clean_video, tmp_path):
    """2/255 through the ffmpeg CLI's libx264 at CRF 28: the example detector finds it (6 clips, each
    in its empirical null, Stouffer's z); the clean source and clean videos against other keys are not called marked."""
    marked = tmp_path / "marked28.mp4"
    mark_video(clean_video, tmp_path / "marked.mp4", SIG, "2/255", threads=1)
    _ffmpeg("-i", str(tmp_path / "marked.mp4"), "-c:v", "libx264", "-crf", "28", "-pix_fmt", "yuv420p", str(marked))
    found = detect_video(marked, SIG, detector="example", client=client)
    assert (found.detector, found.clips, found.frames, found.width, found.height) == ("example", 6, 48, 224, 120)
    assert found.marked and found.p_value < 1e-6 and found.z > 5, found
    for seed in (31, 100):
        clean = detect_video(clean_video, block_signature(seed, block=4), detector="example", client=client)
        assert not clean.marked and clean.p_value > 1e-3 and abs(clean.z) < 3.5, (seed, clean)
    assert found.score > clean.score


def test_score_clips_z_is_the_evaluation_null_z_of_the_same_clips(client):
    """The clips an evaluation scores (the real codec's output, clean and poisoned), sent back by the
    client: ScoreClips gives the same scores and the same z as the evaluation's null model."""
    carriers = DatasetCarriers(num_clips=1, seed=21)
    res = client.evaluate(SIG[None], epsilon=EPS, carriers=carriers, codecs=CODEC, scorer="example", per_clip_scores=True, null_model=True)
    s = res.candidates[0].codecs[0]
    for sig, scores, z in ((SIG, s.poisoned_scores, s.poisoned_z), (None, s.clean_scores, s.clean_z)):
        decoded = client.transcode(signature=sig, epsilon=EPS, carriers=carriers, codec=CODEC).decoded
        got = client.score_clips("example", decoded, SIG)
        np.testing.assert_array_equal(got.scores, scores)
        np.testing.assert_array_equal(got.z, z)
        np.testing.assert_array_equal(got.p_values, p_values(np.asarray(z)))
        assert "Student" in got.null_model


def test_keyless_detector_scores_clips_without_a_null(client, tmp_path):
    """A keyless detector: the model's scores of the clips as sent, no z."""
    torch = pytest.importorskip("torch")
    clips = np.random.default_rng(3).integers(0, 256, (3, 8, 32, 48, 3), dtype=np.uint8)  # the `tiny` dataset's clip shape
    got = client.score_clips("keyless", clips)
    save_keyless_detector(tmp_path / "keyless.pt")
    with torch.inference_mode():
        expect = load_model(tmp_path / "keyless.pt")(torch.from_numpy(clips).float() / 255).double().numpy()
    np.testing.assert_array_equal(got.scores, expect)
    assert got.z is None and got.p_values is None


def test_server_info_publishes_each_detector_clip_shapes(client):
    shapes = {s.name: s.clip_shapes for s in client.info().scorers}
    assert shapes["blind"] == () and set(shapes["example"]) == set(shapes["keyless"]) == {(16, 112, 112), (8, 32, 48)}


def _clips(n: int = 1, shape: tuple[int, int, int] = (16, 112, 112)) -> pb.Tensor:
    return to_tensor(np.zeros((n, *shape, 3), np.uint8), "uint8")


INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
KEY = to_tensor(SIG)
BAD = {
    "unknown detector": (pb.ScoreClipsRequest(detector="nope", clips=_clips(), signature=KEY), INVALID,
                         "detector: 'nope' is not a detector this server serves; allowed: ['example', 'keyless']"),
    "a built-in scorer": (pb.ScoreClipsRequest(detector="blind", clips=_clips(), signature=KEY), INVALID, "detector: 'blind' is not a detector"),
    "wrong clip shape": (pb.ScoreClipsRequest(detector="example", clips=_clips(1, (8, 112, 112)), signature=KEY), INVALID,
                         "clips.shape: [1, 8, 112, 112, 3] must be (N, T, H, W, 3) with (T, H, W) one of the clip shapes of detector 'example'"),
    "no clips": (pb.ScoreClipsRequest(detector="example", clips=_clips(0), signature=KEY), INVALID, "clips.shape: [0, 16, 112, 112, 3] must be non-empty"),
    "float clips": (pb.ScoreClipsRequest(detector="example", clips=to_tensor(np.zeros((1, 16, 112, 112, 3), np.float32)), signature=KEY),
                    INVALID, "clips"),
    "too many clips": (pb.ScoreClipsRequest(detector="keyless", clips=_clips(513, (8, 32, 48))), EXHAUSTED,
                       "clips.shape: 513 exceeds the server limit max_clips = 512"),
    "no key for a keyed detector": (pb.ScoreClipsRequest(detector="example", clips=_clips()), INVALID, "signature: detector 'example' takes the key"),
    "a key for a keyless one": (pb.ScoreClipsRequest(detector="keyless", clips=_clips(), signature=KEY), INVALID,
                                "signature: detector 'keyless' takes clips only"),
    "key of another shape": (pb.ScoreClipsRequest(detector="example", clips=_clips(), signature=to_tensor(SIG[:, :64])), INVALID,
                             "signature.shape: [1, 64, 112, 3] must be (16 or 1, 112, 112, 3)"),
    "key out of range": (pb.ScoreClipsRequest(detector="example", clips=_clips(), signature=to_tensor(SIG * 2)), INVALID, "signature: values span"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_score_clips_requests_are_refused_naming_the_field(server_target, case):
    request, code, message = BAD[case]
    with grpc.insecure_channel(server_target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.CodecLoopStub(channel).ScoreClips(request, timeout=60)
    assert err.value.code() == code and message in err.value.details(), err.value.details()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codecloop.cli", "detect", *args], capture_output=True, text=True, timeout=300)


def test_detect_cli_with_a_detector_json_and_bad_input_in_one_line(server_target, clean_video, tmp_path):
    """--json adds ``detector`` and ``clips``; a detector the server does not serve, a keyless one, a
    signature that fits no clip shape and --target without --detector exit 2 with one line."""
    np.save(tmp_path / "sig.npy", SIG)
    np.save(tmp_path / "small.npy", SIG[:, :64, :64])
    sig = str(tmp_path / "sig.npy")
    run = _cli(str(clean_video), "--signature", sig, "--detector", "example", "--target", server_target, "--json")
    assert run.returncode == 0, run.stderr
    row = json.loads(run.stdout)
    assert {"path", "score", "z", "p_value", "marked", "frames"} <= set(row) and (row["detector"], row["clips"]) == ("example", 6)
    assert row["marked"] is False
    cases = [
        (("--detector", "nope", "--target", server_target), "detector: 'nope' is not a detector the server"),
        (("--detector", "keyless", "--target", server_target), "takes clips only, no key"),
        (("--detector", "example=x.pt2", "--target", server_target), "give the NAME only"),
        (("--signature", str(tmp_path / "small.npy"), "--detector", "example", "--target", server_target), "fits none of the clip shapes"),
        (("--target", server_target), "--target, --local: only with --detector"),
        (("--detector", "example", "--target", server_target, "--fpr", "0.9"), "fpr"),
    ]
    for args, needle in cases:
        full = ("--signature", sig, *args) if "--signature" not in args else args
        run = _cli(str(clean_video), *full)
        lines = error_lines(run.stderr)
        assert run.returncode == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in run.stderr, (args, run.stderr)
