"""Gradient back-ends of the run layer (torch extra): the signature trained by Adam.

Names (:mod:`codecloop.backends`), the seed's paths A and C:
  ``proxy:tanh | proxy:soft | proxy:ste``  forward and backward through the differentiable H.264
      proxy with that rounding (``proxy:tanh`` is the seed's failed recipe);
  ``torch-ste``     forward through the real libx264 (server ``Transcode``), backward identity;
  ``torch-hybrid``  forward through the real libx264, backward through the proxy's Jacobian.

One generation is one candidate, the current signature: the run scores it on the real codec like
any candidate (its log line, fitness and validation), then :meth:`GradientBackend.tell` takes one
Adam step on the differentiable blind detector's separation (mean poisoned score minus mean clean
score on the run's fixed training sample), the formula the server scores with. ``recommend`` is
the signature after that step, validated beside the one scored.

The signature is a :class:`codecloop.params.LowRes` with ``channels="rgb"`` (theta = its pre-tanh
values, (frames, h, w, 3) flattened): ``LowRes(shape, (frames, H // block, W // block), "rgb")``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from codecloop.backends import Backend, BackendContext
from codecloop.params import LowRes
from codecloop.runconfig import GradientConfig
from codecloop.torch_proxy import H264Proxy, RealCodec, blind_scores, poison
from codecloop.types import Codec
from codecloop_wire.errors import CodecLoopValueError


def _separation(clean_scores: torch.Tensor, poisoned_scores: torch.Tensor) -> torch.Tensor:
    return poisoned_scores.mean() - clean_scores.mean()


class GradientBackend(Backend):
    """Adam on a LowRes rgb signature through the proxy (``proxy:*``) or the real codec (``torch-*``)."""

    reads = frozenset({"gradient"})

    def __init__(self, name: str, context: BackendContext) -> None:
        c, param = context.config, context.param
        if not isinstance(param, LowRes) or param.channels != "rgb":
            raise CodecLoopValueError(f"optimizer {name!r}: trains a LowRes rgb parameterization (--frames, --block); got {param.describe()}")
        if len(c.codecs) + len(c.channels) != 1:
            raise CodecLoopValueError(f"optimizer {name!r}: trains through one codec setting (--crf) or one channel (--channel)")
        if c.scorer != "blind":
            raise CodecLoopValueError(f"optimizer {name!r}: its gradient is the blind scorer's; scorer {c.scorer!r}")
        settings = c.gradient or GradientConfig()
        self.name, self.param, self.epsilon = name, param, c.epsilon
        route: dict[str, Any] = {"codec": c.codecs[0]} if c.codecs else {"channel": c.channels[0]}
        clean_run = context.client.transcode(None, carriers=context.train, include_input=True, **route)
        assert clean_run.inputs is not None  # include_input=True
        self.clean = torch.from_numpy(clean_run.inputs.astype(np.float32) / 255)
        self.clean_real = torch.from_numpy(clean_run.decoded.astype(np.float32) / 255)
        crf = (c.codecs[0] if c.codecs else Codec()).resolved().crf
        if crf is None:
            raise CodecLoopValueError(f"optimizer {name!r}: the proxy's QP follows a crf; the codec setting has qp or bitrate")
        qp = crf + settings.qp_offset
        rounding = name.partition(":")[2] if name.startswith("proxy:") else "soft"
        self.proxy = H264Proxy(qp, rounding, settings.temperature)
        self.hard_proxy = H264Proxy(qp, "hard")
        self.clean_proxy = self.hard_proxy(self.clean)
        self.client, self.options = context.client, {"epsilon": c.epsilon, "carriers": context.train, **route}
        torch.manual_seed(c.seed)
        self.raw = torch.nn.Parameter(0.5 * torch.randn(*param.grid, 3))
        self.opt = torch.optim.Adam([self.raw], lr=settings.lr)
        self._fields: dict[str, float] = {}

    def _signature(self) -> torch.Tensor:
        """tanh(raw), nearest-upsampled to (T or 1, H, W, 3): the parameterization's map, in torch."""
        (t, h, w), (frames, gh, gw) = self.param.shape, self.param.grid
        x = torch.tanh(self.raw).repeat_interleave(h // gh, dim=1).repeat_interleave(w // gw, dim=2)
        return x.repeat_interleave(t // frames, dim=0) if frames > 1 else x

    def ask(self) -> list[np.ndarray]:
        return [self.raw.detach().numpy().astype(np.float64).ravel()]

    def tell(self, thetas: list[np.ndarray], losses: list[float]) -> None:
        """One Adam step from the signature just scored (its losses are the run's; the step follows
        the differentiable separation)."""
        sig = self._signature()
        if self.name.startswith("proxy:"):
            out, ref = self.proxy(poison(self.clean, sig, self.epsilon)), self.proxy(self.clean).detach()
        else:
            backward = self.proxy if self.name == "torch-hybrid" else None
            out = RealCodec.apply(sig, self.clean, self.client, self.options, backward)  # type: ignore[no-untyped-call]  # torch's own, untyped
            ref = self.clean_real
        train_sep = _separation(blind_scores(ref, sig), blind_scores(out, sig))
        with torch.no_grad():  # the proxy's view of the same signature, hard rounding: how far the proxy is off
            marked = self.hard_proxy(poison(self.clean, sig, self.epsilon))
            proxy_sep = _separation(blind_scores(self.clean_proxy, sig), blind_scores(marked, sig))
        self._fields = {"train_separation": float(train_sep.detach()), "proxy_separation": float(proxy_sep)}
        self.opt.zero_grad()
        (-train_sep).backward()  # type: ignore[no-untyped-call]  # torch's own, untyped
        self.opt.step()

    def population(self, popsize: int) -> int:
        """One: the current signature."""
        return 1

    def recommend(self) -> np.ndarray:
        return self.ask()[0]

    def log_fields(self) -> dict[str, float]:
        """``train_separation`` (the differentiable objective through this back-end's forward) and
        ``proxy_separation`` (the hard-rounding proxy's), both of the signature just scored."""
        return dict(self._fields)

    def state(self) -> bytes:
        blob = io.BytesIO()
        torch.save({"raw": self.raw.detach().clone(), "opt": self.opt.state_dict(), "rng": torch.get_rng_state()}, blob)
        return blob.getvalue()

    def load_state(self, blob: bytes) -> None:
        saved = torch.load(io.BytesIO(blob), weights_only=False)
        with torch.no_grad():
            self.raw.copy_(saved["raw"])
        self.opt.load_state_dict(saved["opt"])
        torch.set_rng_state(saved["rng"])
