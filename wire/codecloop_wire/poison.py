"""The exact poisoning rule the server applies, importable so clients can reproduce it bit for bit.

``poisoned_u8 = floor(clip(clean_u8 / 255 + epsilon * signature, 0, 1) * 255 + 0.5)``, computed in
float32 (IEEE-754 per element, so identical on every machine).
"""

from __future__ import annotations

import numpy as np


def poison(clean: np.ndarray, signature: np.ndarray, epsilon: float) -> np.ndarray:
    """Add ``epsilon * signature`` to clean frames and quantize back to uint8.

    Args:
        clean: uint8 frames, shape (T, H, W, 3) or (N, T, H, W, 3), RGB in [0, 255].
        signature: float32 in [-1, 1], shape (T, H, W, 3) or (1, H, W, 3); T = 1 repeats over time.
        epsilon: L-inf budget in [0, 1] units (4/255 moves a pixel by at most 4 levels).

    Returns:
        uint8 array with the shape of ``clean``.
    """
    x = clean.astype(np.float32)
    x *= np.float32(1.0 / 255.0)
    x += np.float32(epsilon) * signature.astype(np.float32, copy=False)
    # in place from here: same float32 operations in the same order, no temporaries
    np.clip(x, 0.0, 1.0, out=x)
    x *= np.float32(255.0)
    x += np.float32(0.5)
    np.floor(x, out=x)
    return x.astype(np.uint8)
