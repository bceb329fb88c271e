"""The example learned detector (optional ``torch`` extra) and the exporters to the server's detector formats.

Detector contract (what ``codecloop serve --detector NAME=FILE`` loads, see docs/detectors.md):
``forward(clips)`` or ``forward(clips, keys)`` of a torch.export program (``.pt2``, the primary
format, :func:`export_program`) or of a TorchScript module (legacy, :func:`export_torchscript`), where
  clips: float32 (B, T, H, W, 3), decoded RGB after the codec, values in [0, 1] (uint8 / 255);
  keys:  float32 (B, T, H, W, 3), the candidate signature in [-1, 1] (a T = 1 signature is repeated
         over time before it is passed), present only when forward takes a second argument;
  returns float32 (B,): one score per clip, larger = "marked".

:class:`ResidualDetector` is the shipped example: the blind scorer's idea (correlate the clip's
noise residual with the signature's) with a learned residual filter in between,
``score = ncc(r + g(r), box_residual(key))``, r = 255 x - box3(255 x) per frame and channel, g a
two-layer 3x3 convolution initialised to zero (so an untrained model is the blind scorer with a
replicated border). ``scripts/train_detector.py`` trains g on real libx264 output of the embedded
corpus and exports it in both formats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim


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


def export_program(model: nn.Module, path: str, *, keyed: bool = True) -> None:
    """Save ``model`` as a torch.export program (``.pt2``, the server's primary detector format).

    Batch, frames, height and width are exported as dynamic dimensions (each >= 1), and the keys
    share the clips' dimensions, so one file serves every batch size and every dataset's clip shape.
    ``keyed``: whether ``forward`` takes (clips, keys) or clips only. The example inputs used for
    tracing, float32 (2, 2, 8, 8, 3), are not stored in the file."""
    dims = {0: Dim("batch", min=1), 1: Dim("frames", min=1), 2: Dim("height", min=1), 3: Dim("width", min=1)}
    clips = torch.rand(2, 2, 8, 8, 3)
    args = (clips, clips * 2 - 1) if keyed else (clips,)
    program = torch.export.export(model.eval(), args, dynamic_shapes=(dims,) * len(args))
    program.example_inputs = None  # tracing inputs, not part of the model: the file stays small
    torch.export.save(program, path)


def export_torchscript(model: nn.Module, path: str) -> None:
    """Save ``model`` as TorchScript (the legacy detector format: torch 2.13 deprecates TorchScript)."""
    torch.jit.save(torch.jit.script(model.eval()), path)
