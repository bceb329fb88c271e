"""What a signature does to the picture: PSNR and SSIM of marked against clean clips, before and
after the codec (summary.json's ``fidelity``; the README's "Results you can see").

SSIM here is the standard one (Wang et al. 2004) on luma: Y = 0.299 R + 0.587 G + 0.114 B of
uint8 RGB (range L = 255), an 11 x 11 Gaussian window of sigma 1.5 (``scipy.ndimage.gaussian_filter``,
truncate 3.5, mirror-reflected edges), K1 = 0.01, K2 = 0.03, population (not sample) variances, the
SSIM map averaged over each frame without its 5-pixel border, then over frames and clips. It equals
``skimage.metrics.structural_similarity(y1, y2, data_range=255, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`` per frame (tests/test_results.py checks that).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

SSIM_DEFINITION = "luma (BT.601) SSIM, 11x11 Gaussian window sigma 1.5, K1 0.01, K2 0.03, L 255, mean over frames and clips"
_SIGMA, _TRUNCATE, _BORDER = 1.5, 3.5, 5  # radius int(3.5 * 1.5 + 0.5) = 5: an 11 x 11 window


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma, float64 (..., H, W), of uint8 RGB (..., H, W, 3)."""
    return rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _ssim_frame(x: np.ndarray, y: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, _SIGMA, truncate=_TRUNCATE, mode="reflect")

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s[_BORDER:-_BORDER, _BORDER:-_BORDER].mean())


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (module docstring) of two uint8 RGB arrays (..., H, W, 3) of the same shape, H, W >= 11."""
    ya, yb = luma(a).reshape(-1, *a.shape[-3:-1]), luma(b).reshape(-1, *b.shape[-3:-1])
    return float(np.mean([_ssim_frame(x, y) for x, y in zip(ya, yb)]))


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR in dB over all RGB values of two uint8 arrays; None when they are identical (infinite)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return None if mse == 0 else 10 * math.log10(255**2 / mse)


def report(clean: np.ndarray, marked: np.ndarray, clean_coded: np.ndarray, marked_coded: np.ndarray) -> dict[str, dict[str, float | None]]:
    """PSNR (dB) and SSIM of uint8 (N, T, H, W, 3) clips: ``before_codec`` marked vs clean (the
    encoder's inputs), ``after_codec`` marked vs clean both after the codec (what the mark changes
    in what viewers get), and ``after_codec_vs_source`` marked after the codec vs the clean source."""
    return {
        "before_codec": {"psnr_db": psnr(marked, clean), "ssim": ssim(marked, clean)},
        "after_codec": {"psnr_db": psnr(marked_coded, clean_coded), "ssim": ssim(marked_coded, clean_coded)},
        "after_codec_vs_source": {"psnr_db": psnr(marked_coded, clean), "ssim": ssim(marked_coded, clean)},
    }
