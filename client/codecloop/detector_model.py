"""The example learned detector (optional ``torch`` extra), in the server's TorchScript detector format.

Detector format (what ``codecloop serve --detector NAME=FILE`` loads, see README "Detectors"):
``forward(clips)`` or ``forward(clips, keys)`` of a TorchScript module, where
  clips: float32 (B, T, H, W, 3), decoded RGB after the codec, values in [0, 1] (uint8 / 255);
  keys:  float32 (B, T, H, W, 3), the candidate signature in [-1, 1] (a T = 1 signature is repeated
         over time before it is passed), present only when forward takes a second argument;
  returns float32 (B,): one score per clip, larger = "marked".

:class:`ResidualDetector` is the shipped example: the blind scorer's idea (correlate the clip's
noise residual with the signature's) with a learned residual filter in between,
``score = ncc(r + g(r), box_residual(key))``, r = 255 x - box3(255 x) per frame and channel, g a
two-layer 3x3 convolution initialised to zero (so an untrained model is the blind scorer with a
replicated border). ``scripts/train_detector.py`` trains g on real libx264 output of the embedded
corpus and exports it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _residual(x: torch.Tensor) -> torch.Tensor:
    """x - box3(x) over the last two axes of (N, C, H, W), border replicated."""
    return x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


class ResidualDetector(nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, hidden, 3, padding=1, padding_mode="replicate")
        self.conv2 = nn.Conv2d(hidden, 3, 3, padding=1, padding_mode="replicate")
        nn.init.zeros_(self.conv2.weight)  # start as the plain residual (the blind scorer)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, clips: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """clips (B, T, H, W, 3) in [0, 1], keys (B, T, H, W, 3) in [-1, 1] -> scores (B,) in [-1, 1]."""
        b, t, h, w, c = clips.shape
        x = clips.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w) * 255.0
        r = _residual(x)
        f = (r + self.conv2(torch.relu(self.conv1(r)))).reshape(b, -1)
        k = _residual(keys.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w)).reshape(b, -1)
        f = f - f.mean(dim=1, keepdim=True)
        k = k - k.mean(dim=1, keepdim=True)
        den = torch.sqrt((f * f).sum(dim=1) * (k * k).sum(dim=1))
        return (f * k).sum(dim=1) / den.clamp_min(1e-12)


def export(model: nn.Module, path: str) -> None:
    """Save ``model`` as TorchScript (the only model format the server loads)."""
    torch.jit.save(torch.jit.script(model.eval()), path)
