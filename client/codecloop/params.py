"""Signature parameterizations: a flat vector theta -> a (T, H, W, 3) signature in [-1, 1].

Black-box optimizers (CMA-ES, nevergrad) cannot search 600k dimensions; these map a small theta to
a full signature. Every parameterization squashes with tanh, so any real theta is a valid
signature, and maps a batch (P, dim) to (P, T', H, W, 3) float32 (T' = 1 for static ones, which
the server repeats over time).

| name | dimension | what |
|---|---|---|
| ``LowRes(shape, grid=(t, h, w), channels)`` | t*h*w*c | a t x h x w pattern, nearest-upsampled (blocks) to T x H x W |
| ``Tiled(shape, patch=(ph, pw), channels)`` | ph*pw*c | one patch repeated over the frame, static |
| ``DCT(shape, block=8, coeffs=6, channels, per_block)`` | coeffs*c (x blocks if per_block) | the lowest-frequency 2D DCT basis functions of each block x block tile (zigzag order) |
| ``Identity(shape)`` | T*H*W*3 | the full tensor (torch training) |

``channels`` is ``"rgb"`` (c = 3) or ``"luma"`` (c = 1, the same value on R, G and B).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from codecloop_wire.errors import CodecLoopValueError


def _channels(c: str) -> int:
    if c not in ("rgb", "luma"):
        raise CodecLoopValueError(f"channels: {c!r} is not 'rgb' or 'luma'")
    return 3 if c == "rgb" else 1


class Parameterization(ABC):
    """theta (dim,) or (P, dim) -> signatures (P, T', H, W, 3) float32 in [-1, 1]."""

    shape: tuple[int, int, int]  # (T, H, W) of the carriers

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def _internal_synthesize(self, theta: np.ndarray) -> np.ndarray:
        """(P, dim) float64 -> (P, T', H, W, c) pattern, before squashing; or, with
        :meth:`_internal_expand`, a smaller pattern that the expansion copies out."""

    def _internal_expand(self, x: np.ndarray) -> np.ndarray:
        """The squashed float32 (P, ..., 3) pattern -> (P, T', H, W, 3): a copy-only expansion
        (nearest upsampling), which therefore commutes with the elementwise tanh and float32 cast.
        Identity unless a parameterization synthesizes below full size."""
        return x

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        theta = np.asarray(theta, dtype=np.float64)
        single = theta.ndim == 1
        batch = theta[None] if single else theta
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise CodecLoopValueError(f"theta: shape {theta.shape}, expected ({self.dim},) or (P, {self.dim})")
        x = np.tanh(self._internal_synthesize(batch)).astype(np.float32)
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        return np.ascontiguousarray(self._internal_expand(x))

    def describe(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


@dataclass(frozen=True)
class LowRes(Parameterization):
    shape: tuple[int, int, int]
    grid: tuple[int, int, int] = (1, 14, 14)  # (t, h, w): t = 1 is static
    channels: str = "luma"

    def __post_init__(self) -> None:
        t, h, w = self.grid
        if self.shape[0] % t or self.shape[1] % h or self.shape[2] % w:
            raise CodecLoopValueError(f"grid: {self.grid} must divide the clip shape {self.shape}")

    @property
    def dim(self) -> int:
        return int(np.prod(self.grid)) * _channels(self.channels)

    def _internal_synthesize(self, theta: np.ndarray) -> np.ndarray:
        # the grid only: squashing and casting 49 values per frame instead of 12,544 (the expansion
        # of a population was ~0.25 s of a 2 s raced generation at the default size)
        t, h, w = self.grid
        return theta.reshape(len(theta), t, h, w, _channels(self.channels))

    def _internal_expand(self, x: np.ndarray) -> np.ndarray:
        # repeats of the float32 grid: a third of the time of an 8-d broadcast copy (12 ms a population)
        (t, h, w), (frames, height, width) = self.grid, self.shape
        x = np.repeat(np.repeat(x, height // h, axis=2), width // w, axis=3)
        return np.repeat(x, frames // t, axis=1) if 1 < t < frames else x


@dataclass(frozen=True)
class Tiled(Parameterization):
    shape: tuple[int, int, int]
    patch: tuple[int, int] = (8, 8)
    channels: str = "luma"

    @property
    def dim(self) -> int:
        return self.patch[0] * self.patch[1] * _channels(self.channels)

    def _internal_synthesize(self, theta: np.ndarray) -> np.ndarray:
        ph, pw = self.patch
        x = theta.reshape(len(theta), 1, ph, pw, _channels(self.channels))
        reps = (1, 1, -(-self.shape[1] // ph), -(-self.shape[2] // pw), 1)
        return np.tile(x, reps)[:, :, : self.shape[1], : self.shape[2]]


def _dct_basis(block: int, coeffs: int) -> np.ndarray:
    """The ``coeffs`` lowest-frequency orthonormal 2D DCT-II basis images (coeffs, block, block), zigzag order."""
    n = np.arange(block)
    c = np.sqrt(2 / block) * np.cos(np.pi * (2 * n[None] + 1) * n[:, None] / (2 * block))
    c[0] /= np.sqrt(2)
    order = sorted(((u, v) for u in range(block) for v in range(block)), key=lambda uv: (uv[0] + uv[1], uv[0]))
    return np.stack([np.outer(c[u], c[v]) for u, v in order[:coeffs]]) * block  # unit peak-ish scale


@dataclass(frozen=True)
class DCT(Parameterization):
    shape: tuple[int, int, int]
    block: int = 8
    coeffs: int = 6
    channels: str = "luma"
    per_block: bool = False  # one set of coefficients per block (True) or shared by all blocks

    def __post_init__(self) -> None:
        if self.shape[1] % self.block or self.shape[2] % self.block:
            raise CodecLoopValueError(f"block: {self.block} must divide H x W = {self.shape[1]}x{self.shape[2]}")
        if not 1 <= self.coeffs <= self.block * self.block:
            raise CodecLoopValueError(f"coeffs: {self.coeffs} is outside [1, {self.block * self.block}]")

    @property
    def blocks(self) -> int:
        return (self.shape[1] // self.block) * (self.shape[2] // self.block) if self.per_block else 1

    @property
    def dim(self) -> int:
        return self.blocks * self.coeffs * _channels(self.channels)

    def _internal_synthesize(self, theta: np.ndarray) -> np.ndarray:
        b, c = self.block, _channels(self.channels)
        by, bx = self.shape[1] // b, self.shape[2] // b
        basis = _dct_basis(b, self.coeffs)  # (K, b, b)
        coef = theta.reshape(len(theta), self.blocks, self.coeffs, c)
        tiles = np.einsum("pnkc,kyx->pnyxc", coef, basis)  # (P, blocks, b, b, c)
        if not self.per_block:
            tiles = np.broadcast_to(tiles, (len(theta), by * bx, b, b, c))
        img = tiles.reshape(len(theta), by, bx, b, b, c).transpose(0, 1, 3, 2, 4, 5).reshape(len(theta), by * b, bx * b, c)
        return img[:, None]


@dataclass(frozen=True)
class Identity(Parameterization):
    shape: tuple[int, int, int]

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape)) * 3

    def _internal_synthesize(self, theta: np.ndarray) -> np.ndarray:
        return np.arctanh(np.clip(theta, -1 + 1e-7, 1 - 1e-7)).reshape(len(theta), *self.shape, 3)


def make(spec: str, shape: tuple[int, int, int]) -> Parameterization:
    """From a CLI string: ``lowres:14x14[:luma|rgb][:t=4|t=all]`` (t=all: one pattern per frame), ``tiled:8x8[:luma|rgb]``,
    ``dct:8:6[:luma|rgb][:per_block]``, ``identity``."""
    parts = spec.split(":")
    kind, args = parts[0], parts[1:]
    channels = next((a for a in args if a in ("luma", "rgb")), "luma")
    try:
        if kind == "lowres":
            h, w = map(int, args[0].split("x"))
            t_arg = next((a[2:] for a in args if a.startswith("t=")), "1")
            t = shape[0] if t_arg == "all" else int(t_arg)  # t=all: a new pattern every frame
            return LowRes(shape, (t, h, w), channels)
        if kind == "tiled":
            ph, pw = map(int, args[0].split("x"))
            return Tiled(shape, (ph, pw), channels)
        if kind == "dct":
            return DCT(shape, int(args[0]), int(args[1]), channels, per_block="per_block" in args)
        if kind == "identity":
            return Identity(shape)
    except (IndexError, ValueError) as err:
        raise CodecLoopValueError(f"parameterization: cannot parse {spec!r}: {err}") from None
    raise CodecLoopValueError(f"parameterization: unknown kind {kind!r}; allowed: lowres, tiled, dct, identity")
