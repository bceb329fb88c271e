"""Torch side (optional ``torch`` extra): a differentiable H.264 proxy, the differentiable blind
detector, and a real-codec autograd function (forward through the server's real libx264).

Shapes: clips are (N, T, H, W, 3) float in [0, 1]; signatures (T or 1, H, W, 3) in [-1, 1].

The proxy (:class:`H264Proxy`), per frame:
  RGB -> Y'CbCr BT.601 limited range (float, x 255) -> 4:2:0 (2x2 mean of chroma)
  -> 4x4 blocks, H.264's integer core transform Cf X Cf^T, normalized to orthonormal (the
     post-scaling H.264 folds into its quantizer) -> quantize with step Qstep = 2^((QP - 4) / 6)
  -> inverse -> nearest-upsampled chroma -> RGB.
It codes every 4x4 block on its own (an intra block with no prediction and no residual from a
predictor): it models hard quantization of small coefficients, not motion compensation or rate
control. Rounding modes for coefficient / Qstep:
  ``tanh``  the seed's q * tanh(x / (q T)) (its saturating "soft quantization"),
  ``soft``  sigmoid soft-round: floor(y) + sigmoid((frac(y) - 0.5) / T),
  ``ste``   round(y) forward, identity backward (straight-through),
  ``hard``  round(y), no gradient.
CRF -> QP: ``qp = crf + qp_offset``; :func:`calibrate_qp_offset` fits the offset so that the
proxy's PSNR on clean carriers matches the real encoder's (measured: docs/history.md, "CRF → QP calibration").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROUNDING = ("tanh", "soft", "ste", "hard")

_CF = torch.tensor([[1, 1, 1, 1], [2, 1, -1, -2], [1, -1, -1, 1], [1, -2, 2, -1]], dtype=torch.float64)
_D = (_CF / _CF.norm(dim=1, keepdim=True)).float()  # orthonormal version of the core transform

# BT.601 limited range, values x 255
_RGB2YUV = torch.tensor([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255.0
_YUV_OFFSET = torch.tensor([16.0, 128.0, 128.0]) / 255.0


def qstep(qp: float) -> float:
    """H.264 quantizer step size for QP (in 8-bit sample units)."""
    return 2.0 ** ((qp - 4.0) / 6.0)


def quantize(y: torch.Tensor, rounding: str, temperature: float) -> torch.Tensor:
    """Quantize y = coefficient / Qstep to integers (in Qstep units) with the chosen rounding."""
    if rounding == "hard":
        return torch.round(y).detach()
    if rounding == "ste":
        return y + (torch.round(y) - y).detach()
    if rounding == "soft":
        fl = torch.floor(y).detach()
        return fl + torch.sigmoid((y - fl - 0.5) / temperature)
    if rounding == "tanh":
        return torch.tanh(y / temperature)  # the seed: q * tanh(x / (q T)), here in units of q
    raise ValueError(f"rounding: {rounding!r} is not one of {ROUNDING}")


def _blocks_transform(plane: torch.Tensor, step: float, rounding: str, temperature: float) -> torch.Tensor:
    """plane (B, H, W) in 0..255 units -> quantized and reconstructed, per 4x4 block."""
    b, h, w = plane.shape
    x = plane.reshape(b, h // 4, 4, w // 4, 4).permute(0, 1, 3, 2, 4)  # (B, h/4, w/4, 4, 4)
    d = _D.to(plane)
    coef = d @ x @ d.T
    rec = quantize(coef / step, rounding, temperature) * step
    out = d.T @ rec @ d
    return out.permute(0, 1, 3, 2, 4).reshape(b, h, w)


class H264Proxy(torch.nn.Module):
    """Differentiable stand-in for libx264 at a given QP (see the module docstring)."""

    def __init__(self, qp: float, rounding: str = "ste", temperature: float = 0.1) -> None:
        super().__init__()
        if rounding not in ROUNDING:
            raise ValueError(f"rounding: {rounding!r} is not one of {ROUNDING}")
        self.qp, self.rounding, self.temperature = qp, rounding, temperature

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """(N, T, H, W, 3) in [0, 1] -> (N, T, H, W, 3) in [0, 1]; H and W multiples of 8."""
        n, t, h, w, _ = clips.shape
        x = clips.reshape(n * t, h, w, 3)
        yuv = x @ _RGB2YUV.to(x).T + _YUV_OFFSET.to(x)
        step = qstep(self.qp)
        y = _blocks_transform(yuv[..., 0] * 255, step, self.rounding, self.temperature) / 255
        chroma = F.avg_pool2d(yuv[..., 1:].permute(0, 3, 1, 2), 2)  # (B, 2, h/2, w/2)
        c = chroma.reshape(-1, h // 2, w // 2) * 255
        c = _blocks_transform(c, step, self.rounding, self.temperature).reshape(n * t, 2, h // 2, w // 2) / 255
        c = c.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).permute(0, 2, 3, 1)
        rec = torch.cat([y[..., None], c], dim=-1) - _YUV_OFFSET.to(x)
        rgb = rec @ torch.linalg.inv(_RGB2YUV.to(torch.float64)).to(x).T
        return rgb.clamp(0, 1).reshape(n, t, h, w, 3)


def _symmetric_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """Pad the H, W axes of (B, C, H, W) mirroring with the edge repeated (scipy's mode='reflect')."""
    x = torch.cat([x[:, :, :p].flip(2), x, x[:, :, -p:].flip(2)], dim=2)
    return torch.cat([x[:, :, :, :p].flip(3), x, x[:, :, :, -p:].flip(3)], dim=3)


def residual(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """x - box_k(x) over H, W of (..., H, W, 3), as the server's blind scorer defines it."""
    shape = x.shape
    flat = x.reshape(-1, *shape[-3:]).permute(0, 3, 1, 2)
    box = F.avg_pool2d(_symmetric_pad(flat, k // 2), k, stride=1)
    return (flat - box).permute(0, 2, 3, 1).reshape(shape)


def blind_scores(clips: torch.Tensor, signature: torch.Tensor, k: int = 3) -> torch.Tensor:
    """The blind detector, differentiable: ncc(residual(clip), residual(signature)) per clip, (N,)."""
    r = residual(clips, k)
    w = residual(signature, k).expand(r.shape[1:]) if signature.shape[0] == 1 else residual(signature, k)
    r = r.reshape(len(r), -1)
    w = w.reshape(-1)
    r = r - r.mean(dim=1, keepdim=True)
    w = w - w.mean()
    return (r @ w) / (r.norm(dim=1) * w.norm() + 1e-12)


def poison(clean: torch.Tensor, signature: torch.Tensor, epsilon: float) -> torch.Tensor:
    """clip(clean + epsilon * signature, 0, 1) in float (no uint8 rounding: that is the codec's job here)."""
    return (clean + epsilon * signature).clamp(0, 1)


class RealCodec(torch.autograd.Function):
    """Forward: the server's real codec or channel (``Client.transcode``; ``options`` its keyword
    arguments: epsilon, carriers, codec or channel). Backward: straight-through
    (identity: d decoded / d input = 1) or, with a ``proxy``, the proxy's Jacobian at the input."""

    @staticmethod
    def forward(ctx: Any, signature: torch.Tensor, clean: torch.Tensor, client: Any, options: dict, proxy: Any) -> torch.Tensor:
        marked = poison(clean, signature.detach(), options["epsilon"])
        out = client.transcode(signature.detach().cpu().numpy(), **options, include_input=False)
        ctx.save_for_backward(signature.detach(), clean)
        ctx.epsilon, ctx.proxy = options["epsilon"], proxy
        ctx.mask = ((marked > 0) & (marked < 1)).to(clean)  # clipping kills the gradient
        return torch.from_numpy(out.decoded.astype(np.float32) / 255.0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        signature, clean = ctx.saved_tensors
        if ctx.proxy is None:
            g = grad * ctx.mask * ctx.epsilon
        else:
            with torch.enable_grad():
                sig = signature.clone().requires_grad_(True)
                out = ctx.proxy(poison(clean, sig, ctx.epsilon))
                (g_sig,) = torch.autograd.grad(out, sig, grad)
            return g_sig, None, None, None, None
        g = g.sum(dim=0)
        if signature.shape[0] == 1:
            g = g.sum(dim=0, keepdim=True)
        return g, None, None, None, None


def calibrate_qp_offset(clean: np.ndarray, decoded: np.ndarray, crf: float, offsets=range(-6, 13)) -> float:
    """The QP offset (qp = crf + offset) whose proxy PSNR on ``clean`` best matches the real codec's.

    ``clean`` and ``decoded``: uint8 (N, T, H, W, 3), the same carriers before and after libx264.
    """

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        return 10 * math.log10(255**2 / mse) if mse > 0 else math.inf

    target = psnr(clean, decoded)
    x = torch.from_numpy(clean.astype(np.float32) / 255)
    best = min(
        offsets,
        key=lambda o: abs(psnr(clean, (H264Proxy(crf + o, "hard")(x).numpy() * 255 + 0.5).astype(np.uint8)) - target),
    )
    return float(best)
