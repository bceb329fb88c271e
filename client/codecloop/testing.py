"""Real-looking test content for tests and benchmarks: what makes x264 use motion search, B-frames
and psy decisions.

Flat or static synthetic frames let x264 skip most of its decisions (and hid a nondeterminism in
its AVX-512 code). These clips have a camera that pans and zooms by sub-pixel amounts over a real
photograph, an object moving across it on its own path, sensor noise, and optionally a scene cut.
The photographs are scikit-image's (the ``server`` extra installs it; imported on first use).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry")


@functools.cache
def _photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)().astype(np.float32)


def _view(img: np.ndarray, t: int, h: int, w: int, start: tuple[float, float], velocity: tuple[float, float], zoom: float) -> np.ndarray:
    """T frames of a moving, zooming h x w camera over ``img`` (bilinear, float32 (T, h, w, 3))."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for k in range(t):
        s = 1.0 + zoom * k  # zoom in by ``zoom`` per frame around the view's centre
        cy, cx = start[0] + velocity[0] * k + h / 2, start[1] + velocity[1] * k + w / 2
        coords = [(ys - h / 2) / s + cy, (xs - w / 2) / s + cx]
        frames.append(np.stack([ndimage.map_coordinates(img[..., c], coords, order=1, mode="reflect") for c in range(3)], -1))
    return np.stack(frames)


def realistic_clip(seed: int, t: int = 16, h: int = 112, w: int = 112, cut: bool = False, noise: float = 3.0) -> np.ndarray:
    """uint8 (T, H, W, 3): pan + zoom over a photograph, a moving textured object, Gaussian sensor
    noise of ``noise`` levels; with ``cut`` the second half is another photograph (a scene cut)."""
    rng = np.random.default_rng(seed)
    first, second = rng.choice(len(PHOTOS), 2, replace=False)

    def scene(photo: int, frames: int) -> np.ndarray:
        img = _photo(PHOTOS[photo])
        start = (rng.uniform(0, img.shape[0] - 2 * h), rng.uniform(0, img.shape[1] - 2 * w))
        clip = _view(img, frames, h, w, start, tuple(rng.uniform(-2.5, 2.5, 2)), rng.uniform(0.0, 0.01))
        # an object (a patch of another photograph) crossing the view on its own path
        obj = _photo(PHOTOS[(photo + 1) % len(PHOTOS)])[: h // 3, : w // 3]
        y0, x0 = rng.uniform(0, h - h // 3), rng.uniform(0, w / 4)
        vy, vx = rng.uniform(-1.5, 1.5), rng.uniform(1.0, 3.0)
        for k in range(frames):
            y, x = int(round(y0 + vy * k)) % (h - h // 3), int(round(x0 + vx * k)) % (w - w // 3)
            clip[k, y : y + h // 3, x : x + w // 3] = obj
        return clip

    clip = scene(first, t) if not cut else np.concatenate([scene(first, t // 2), scene(second, t - t // 2)])
    clip += rng.normal(0.0, noise, clip.shape).astype(np.float32)
    return np.clip(np.rint(clip), 0, 255).astype(np.uint8)
