"""The deployment rule (codecloop_wire.deploy): tiling in space from pixel (0, 0), cycling in time,
the server's poisoning on the tiled pattern, and the fold that detection uses (its correlation
identity with the tiled pattern)."""

from __future__ import annotations

import numpy as np
import pytest

from codecloop_wire import deploy
from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.poison import poison


def _sig(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (t, h, w, 3)).astype(np.float32)


@pytest.mark.parametrize("t", [1, 4])
def test_pattern_tiles_from_the_top_left_and_cycles_in_time(t):
    sig = _sig(t, 16, 24)
    start, count, height, width = 3, 7, 37, 53  # neither side a multiple of the tile
    pat = deploy.pattern(sig, start, count, height, width)
    assert pat.shape == (count, height, width, 3) and pat.dtype == np.float32
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    for i in range(count):
        np.testing.assert_array_equal(pat[i], sig[(start + i) % t][ys % 16, xs % 24])


def test_on_a_carrier_the_rule_is_the_identity_and_marking_is_the_servers_poisoning():
    """A video of the carriers' size and length gets exactly the signature: the server's poisoned clip, bit for bit."""
    sig = _sig(16, 32, 48)
    clip = np.random.default_rng(1).integers(0, 256, (16, 32, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(deploy.pattern(sig, 0, 16, 32, 48), sig)
    np.testing.assert_array_equal(deploy.mark_frames(clip, sig, 0, 2 / 255), poison(clip, sig, 2 / 255))
    static = sig[:1]
    np.testing.assert_array_equal(deploy.mark_frames(clip, static, 5, 3 / 255), poison(clip, static, 3 / 255))


def test_marking_frame_by_frame_equals_marking_the_whole_video():
    sig = _sig(5, 16, 16)
    video = np.random.default_rng(2).integers(0, 256, (12, 40, 30, 3), dtype=np.uint8)
    whole = deploy.mark_frames(video, sig, 0, 4 / 255)
    parts = np.concatenate([deploy.mark_frames(video[i : i + 1], sig, i, 4 / 255) for i in range(len(video))])
    np.testing.assert_array_equal(whole, parts)
    diff = whole.astype(int) - video.astype(int)
    assert np.abs(diff).max() <= 4 and np.abs(diff).max() >= 3  # the budget is used and never exceeded


@pytest.mark.parametrize(("t", "h", "w", "frames", "height", "width", "start"), [
    (16, 16, 16, 37, 45, 61, 0),   # partial tiles, more than two cycles
    (4, 8, 12, 9, 8, 12, 6),       # exactly one tile, started mid-cycle
    (1, 16, 8, 3, 50, 7, 11),      # static signature, a frame narrower than the tile
])  # fmt: skip
def test_fold_correlation_equals_the_correlation_with_the_tiled_pattern(t, h, w, frames, height, width, start):
    rng = np.random.default_rng(3)
    template = rng.standard_normal((t, h, w, 3))
    residual = rng.standard_normal((frames, height, width, 3))
    direct = float(np.sum(residual * deploy.pattern(template.astype(np.float32), start, frames, height, width).astype(np.float64)))
    # float32 pattern above: compare with the same template values
    template = template.astype(np.float32).astype(np.float64)
    fold = deploy.Fold(t, h, w)
    for i in range(0, frames, 4):  # streamed in blocks of 4 frames
        fold.add(residual[i : i + 4], start + i)
    assert fold.frames == frames
    assert fold.correlate(template) == pytest.approx(direct, rel=1e-9, abs=1e-9)
    # every video pixel lands on the tile exactly once
    assert fold.counts.sum() == frames * height * width
    assert fold.sums.sum() == pytest.approx(residual.sum(), rel=1e-9, abs=1e-9)
    # the counts are those of the tiled pattern: the fold of a residual of ones
    ones = deploy.Fold(t, h, w, channels=1)
    ones.add(np.ones((frames, height, width, 1)), start)
    np.testing.assert_array_equal(ones.sums[..., 0], fold.counts)


def test_fold_refuses_mismatched_shapes():
    fold = deploy.Fold(2, 8, 8, channels=1)
    with pytest.raises(CodecLoopValueError, match=r"\(n, H, W, 1\)"):
        fold.add(np.zeros((1, 8, 8, 3)), 0)
    with pytest.raises(CodecLoopValueError, match="template shape"):
        fold.correlate(np.zeros((1, 8, 8, 1)))


@pytest.mark.parametrize(("eps", "ok"), [(2 / 255, True), (1.0, True), (0.0, False), (-0.1, False), (1.5, False), (float("nan"), False)])
def test_epsilon_range_is_the_servers(eps, ok):
    from codecloop_server import parse
    from codecloop_wire.v1 import codecloop_pb2 as pb

    msg = pb.EvaluateRequest(epsilon=eps)
    if ok:
        assert deploy.check_epsilon(eps) == parse.epsilon(msg) == pytest.approx(eps)
        return
    for check in (lambda: deploy.check_epsilon(eps), lambda: parse.epsilon(msg)):
        with pytest.raises(CodecLoopValueError, match=r"epsilon: .* outside the allowed range \(0, 1\]"):
            check()


@pytest.mark.parametrize(("sig", "message"), [
    (np.zeros((16, 112, 112)), r"signature.shape: \[16, 112, 112\] must be \(T, H, W, 3\)"),
    (np.zeros((1, 8, 8, 4)), r"signature.shape"),
    (np.full((1, 8, 8, 3), 1.5), r"values span \[1.5, 1.5\], outside the allowed range \[-1, 1\]"),
    (np.full((1, 8, 8, 3), np.nan), r"NaN or Inf"),
])  # fmt: skip
def test_signature_checks_name_the_problem(sig, message):
    with pytest.raises(CodecLoopValueError, match=message):
        deploy.check_signature(sig)


def test_signature_values_are_checked_after_float32_conversion():
    """A float64 value just above 1 that rounds to 1.0 in float32 is what the server would receive: accepted."""
    sig = np.full((1, 4, 4, 3), 1 + 1e-12)
    assert deploy.check_signature(sig).dtype == np.float32
