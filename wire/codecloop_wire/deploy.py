"""The deployment rule: how a (T, h, w, 3) signature covers a video of any size and length.

One rule, used by evaluation (carriers of exactly h x w and T frames: the rule is the identity
there), ``codecloop mark`` (the pattern added to every frame) and detection (the fold below):

- **Space: tiled at the signature's own pixel scale.** Video pixel (y, x) takes signature pixel
  (y mod h, x mod w): the tile origin (phase) is the video's top-left pixel (0, 0), and a frame
  whose size is not a multiple of the tile ends with a partial tile on the right and bottom. No
  resampling: one signature pixel is one video pixel. With h and w multiples of 16 every tile
  starts on libx264's macroblock grid, as it does on the h x w carriers the signature was made on.
- **Time: cycled.** Video frame t (0 = the first decoded frame) takes signature frame t mod T;
  T = 1 is a static signature, repeated on every frame.
- **Poisoning** is the server's rule, :func:`codecloop_wire.poison.poison`, applied to the tiled
  pattern; epsilon and the signature are checked by :func:`check_epsilon` and
  :func:`check_signature`, the same functions the server's request parsing calls.

Detection folds a video back onto the tile: :class:`Fold` sums a residual (any per-pixel feature
of the frames, C channels) over every tile position and every time cycle, with counts, so that

    sum over video frames t, pixels (y, x), channels c of residual[t, y, x, c] * pattern[t, y, x, c]
    == sum over (k, i, j, c) of fold.sums[k, i, j, c] * template[k, i, j, c]

for any (T, h, w, C) template, where pattern is the template tiled and cycled by this rule
(tests/test_deployment_rule.py asserts the identity). Both work frame by frame: memory is one frame
plus the (T, h, w, C) accumulators, whatever the video's length.
"""

from __future__ import annotations

import math

import numpy as np

from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.poison import poison

__all__ = ["Fold", "check_epsilon", "check_signature", "mark_frames", "pattern", "tile_counts"]


def check_epsilon(epsilon: float, field: str = "epsilon") -> float:
    """``epsilon`` (L-inf budget, [0, 1] units) if finite and in (0, 1], else CodecLoopValueError naming ``field``."""
    eps = float(epsilon)
    if not (math.isfinite(eps) and 0 < eps <= 1):
        raise CodecLoopValueError(f"{field}: {eps} is outside the allowed range (0, 1]")
    return eps


def check_signature(signature: np.ndarray, field: str = "signature") -> np.ndarray:
    """A signature as float32 (T, h, w, 3), finite, every value in [-1, 1]; else CodecLoopValueError naming ``field``.

    The values are checked after the float32 conversion (what the server receives and poisons with).
    """
    sig = np.asarray(signature)
    if sig.ndim != 4 or sig.shape[-1] != 3 or 0 in sig.shape:
        raise CodecLoopValueError(f"{field}.shape: {list(sig.shape)} must be (T, H, W, 3) with T, H, W >= 1")
    if not (np.issubdtype(sig.dtype, np.floating) or np.issubdtype(sig.dtype, np.integer)):
        raise CodecLoopValueError(f"{field}.dtype: {sig.dtype} is not a number type")
    sig = sig.astype(np.float32, copy=False)
    if not np.isfinite(sig).all():
        raise CodecLoopValueError(f"{field}: contains NaN or Inf; values must be finite in [-1, 1]")
    lo, hi = float(sig.min()), float(sig.max())
    if lo < -1 or hi > 1:
        raise CodecLoopValueError(f"{field}: values span [{lo:g}, {hi:g}], outside the allowed range [-1, 1]")
    return sig


def _check_range(start: int, count: int, height: int, width: int) -> None:
    if start < 0 or count < 0 or height < 1 or width < 1:
        raise CodecLoopValueError(f"deploy: frames from {start}, {count} of them, {width}x{height}: need start, count >= 0 and sides >= 1")


def pattern(signature: np.ndarray, start: int, count: int, height: int, width: int) -> np.ndarray:
    """The additive pattern of video frames ``start`` .. ``start + count - 1`` of a ``height`` x ``width`` video.

    Args:
        signature: (T, h, w, C) template (a signature: C = 3, values in [-1, 1]).
        start: index of the first frame in the video (0 = its first frame): sets the time phase.
        count: number of frames.
        height, width: the video's frame size in pixels.

    Returns:
        float32 (count, height, width, C): frame i is ``signature[(start + i) % T]`` tiled from pixel (0, 0).
    """
    _check_range(start, count, height, width)
    t, h, w, c = signature.shape
    reps = (-(-height // h), -(-width // w), 1)
    out = np.empty((count, height, width, c), np.float32)
    for i in range(count):
        out[i] = np.tile(signature[(start + i) % t], reps)[:height, :width]
    return out


def mark_frames(frames: np.ndarray, signature: np.ndarray, start: int, epsilon: float) -> np.ndarray:
    """Marked uint8 frames: :func:`codecloop_wire.poison.poison` of ``frames`` with the tiled, cycled pattern.

    Args:
        frames: uint8 (n, H, W, 3) RGB, video frames ``start`` .. ``start + n - 1``.
        signature: float32 (T, h, w, 3) in [-1, 1] (:func:`check_signature`).
        start: index of ``frames[0]`` in the video.
        epsilon: L-inf budget in [0, 1] units (:func:`check_epsilon`).

    Returns:
        uint8 (n, H, W, 3).
    """
    n, height, width, _ = frames.shape
    return poison(frames, pattern(signature, start, n, height, width), epsilon)


def tile_counts(height: int, width: int, tile_h: int, tile_w: int) -> np.ndarray:
    """int64 (tile_h, tile_w): how many pixels of one ``height`` x ``width`` frame land on each tile pixel."""
    ys = -(-(height - np.arange(tile_h)) // tile_h)  # rows y < height with y % tile_h == i
    xs = -(-(width - np.arange(tile_w)) // tile_w)
    counts: np.ndarray = np.maximum(ys, 0)[:, None] * np.maximum(xs, 0)[None, :]
    return counts.astype(np.int64)


class Fold:
    """Accumulators of a video folded onto a (T, h, w) tile by the deployment rule.

    Attributes:
        sums: float64 (T, h, w, C): the sum of every residual value that the rule puts on tile
            position (t, i, j), per channel.
        counts: int64 (T, h, w): how many video pixels were added at each tile position (the same
            for every channel).
        frames: video frames folded so far.
    """

    def __init__(self, frames: int, height: int, width: int, channels: int = 3) -> None:
        """Empty accumulators for a (``frames``, ``height``, ``width``) tile of ``channels`` channels."""
        if min(frames, height, width, channels) < 1:
            raise CodecLoopValueError(f"fold: tile ({frames}, {height}, {width}, {channels}) must have every dimension >= 1")
        self.sums = np.zeros((frames, height, width, channels), np.float64)
        self.counts = np.zeros((frames, height, width), np.int64)
        self.frames = 0

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(T, h, w, C) of the tile."""
        t, h, w, c = self.sums.shape
        return t, h, w, c

    def add(self, block: np.ndarray, start: int) -> None:
        """Fold a residual block of video frames ``start`` .. ``start + n - 1`` into the accumulators.

        Args:
            block: (n, H, W, C) numbers (any real dtype), C as the tile's; any H, W >= 1.
            start: index of ``block[0]`` in the video (frame ``start + i`` lands on tile frame ``(start + i) % T``).
        """
        t, h, w, c = self.shape
        if block.ndim != 4 or block.shape[-1] != c:
            raise CodecLoopValueError(f"fold: block shape {list(block.shape)} must be (n, H, W, {c})")
        n, height, width, _ = block.shape
        _check_range(start, n, height, width)
        ph, pw = -(-height // h) * h, -(-width // w) * w
        padded = np.zeros((ph, pw, c), np.float64)  # a partial tile adds zeros: counts say how many were real
        counts = tile_counts(height, width, h, w)
        for i in range(n):
            padded[:height, :width] = block[i]
            k = (start + i) % t
            self.sums[k] += padded.reshape(ph // h, h, pw // w, w, c).sum(axis=(0, 2))
            self.counts[k] += counts
        self.frames += n

    def correlate(self, template: np.ndarray) -> float:
        """sum(sums * template): the folded video's correlation with a (T, h, w, C) template, equal to
        the unfolded video's correlation with the template tiled and cycled by the rule."""
        if template.shape != self.sums.shape:
            raise CodecLoopValueError(f"fold: template shape {list(template.shape)} must be the tile's {list(self.sums.shape)}")
        return float(np.sum(self.sums * template))
