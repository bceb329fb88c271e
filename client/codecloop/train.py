"""Gradient training of a full-resolution signature (torch extra), validated on the real codec.

Modes (the seed's paths A and C):
  ``proxy:tanh | proxy:soft | proxy:ste``  forward and backward through the differentiable H.264
      proxy with that rounding (``proxy:tanh`` is the seed's failed recipe);
  ``torch-ste``     forward through the real libx264 (server ``Transcode``), backward identity;
  ``torch-hybrid``  forward through the real libx264, backward through the proxy's Jacobian.

The objective is the differentiable blind detector's separation (mean poisoned score minus mean
clean score over the training clips), the same formula the server scores with. Every
``validate_every`` steps the current signature is scored by the server on the real codec, and the
proxy's separation (hard rounding) is logged beside it.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codecloop import runcheck
from codecloop.client import Client
from codecloop.rundir import RunFolder
from codecloop.torch_proxy import H264Proxy, RealCodec, blind_scores, poison
from codecloop.types import Channel, Codec, DatasetCarriers
from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopValueError

MODES = ("proxy:tanh", "proxy:soft", "proxy:ste", "torch-ste", "torch-hybrid")


@dataclass
class TrainConfig:
    mode: str = "torch-hybrid"
    epsilon: float = defaults.EPSILON
    codec: Codec = Codec()
    channel: Channel | None = None  # a channel instead of codec: forward (torch-ste/hybrid) and validation through it
    train: DatasetCarriers = DatasetCarriers(split="train", num_clips=16)
    holdout: DatasetCarriers = DatasetCarriers(split="holdout", num_clips=72)
    holdout_fpr: float = defaults.TARGET_FPR
    steps: int = 60
    lr: float = 0.1
    validate_every: int = 10
    qp_offset: float = 5.0  # proxy QP = crf + qp_offset; calibrated at CRF 28 (calibrate_qp_offset, docs/history.md)
    temperature: float = 0.3  # of the tanh / soft rounding
    frames: int = 16  # distinct signature frames, dividing T (each held T/frames frames); 1 = static
    block: int = 1  # spatial block size of the trained pattern; 1 = full resolution
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CodecLoopValueError(f"mode: {self.mode!r} is not one of {MODES}")


def _separation(clean_scores: torch.Tensor, poisoned_scores: torch.Tensor) -> torch.Tensor:
    return poisoned_scores.mean() - clean_scores.mean()


def train_signature(
    client: Client,
    config: TrainConfig,
    folder: str | Path,
    progress: bool = True,
    overwrite: bool = False,
    on_resume: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train, log (log.jsonl), save best.npy / summary.json / plots in ``folder``; return the summary.

    After every validation step the signature and Adam's state go to ``checkpoint.pt``; calling
    again with the same folder and settings resumes from there (log lines after it are dropped);
    other settings raise :class:`codecloop.runcheck.RunSettingsError` (``steps`` may differ);
    ``overwrite`` removes the old run's files first; ``on_resume`` is told what a resume continues
    (folder, step, seconds used).
    """
    run = RunFolder(folder, "checkpoint.pt")
    settings = runcheck.settings(config)
    if overwrite and run.path.is_dir():
        runcheck.clear(run.path)
    ckpt = torch.load(io.BytesIO(run.read_checkpoint()), weights_only=False) if run.has_checkpoint() else None
    if ckpt is not None:
        runcheck.check(run.path, ckpt.get("settings"), settings)
    torch.manual_seed(config.seed)
    clean_run = client.transcode(None, carriers=config.train, codec=config.codec, channel=config.channel, include_input=True)
    clean = torch.from_numpy(clean_run.inputs.astype(np.float32) / 255)
    clean_real = torch.from_numpy(clean_run.decoded.astype(np.float32) / 255)
    _, t, h, w, _ = clean.shape
    qp = config.codec.resolved().crf + config.qp_offset
    rounding = config.mode.split(":")[1] if config.mode.startswith("proxy:") else "soft"
    proxy = H264Proxy(qp, rounding, config.temperature)
    hard_proxy = H264Proxy(qp, "hard")
    clean_proxy = hard_proxy(clean)
    if t % config.frames or h % config.block or w % config.block:
        raise CodecLoopValueError(f"frames/block: {config.frames}/{config.block} must divide the clips' T/H, W = {t}/{h}, {w}")
    raw = torch.nn.Parameter(0.5 * torch.randn(config.frames, h // config.block, w // config.block, 3))

    def signature() -> torch.Tensor:
        """tanh(raw), nearest-upsampled to (T or 1, H, W, 3)."""
        x = torch.tanh(raw).repeat_interleave(config.block, dim=1).repeat_interleave(config.block, dim=2)
        return x.repeat_interleave(t // config.frames, dim=0) if config.frames > 1 else x

    opt = torch.optim.Adam([raw], lr=config.lr)
    options = {"epsilon": config.epsilon, "carriers": config.train, "codec": config.codec, "channel": config.channel}
    route = {"codecs": config.codec} if config.channel is None else {"channels": config.channel}  # where evaluations go
    history: list[dict[str, float]] = []
    best: tuple[float, np.ndarray | None] = (-np.inf, None)
    first_step, elapsed = 0, 0.0
    run.create()
    if ckpt is not None:  # resume: state after the last checkpointed optimizer step
        with torch.no_grad():
            raw.copy_(ckpt["raw"])
        opt.load_state_dict(ckpt["opt"])
        first_step, history, best, elapsed = ckpt["next_step"], ckpt["history"], ckpt["best"], ckpt["elapsed"]
        if on_resume is not None:
            on_resume(f"resuming {run.path} at step {first_step} ({elapsed:.0f} s used)")
        run.log.keep(lambda entry: entry["step"] < first_step)
    else:
        run.log.clear()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=first_step, unit="step", desc=config.mode)
    start = time.monotonic() - elapsed
    for step in range(first_step, config.steps + 1):
        sig = signature()
        if config.mode.startswith("proxy:"):
            out, ref = proxy(poison(clean, sig, config.epsilon)), proxy(clean).detach()
        else:
            out = RealCodec.apply(sig, clean, client, options, proxy if config.mode == "torch-hybrid" else None)
            ref = clean_real
        train_sep = _separation(blind_scores(ref, sig), blind_scores(out, sig))
        entry: dict[str, float] = {"step": step, "train_separation": float(train_sep.detach())}
        if step % config.validate_every == 0 or step == config.steps:
            with torch.no_grad():
                proxy_sep = _separation(blind_scores(clean_proxy, sig), blind_scores(hard_proxy(poison(clean, sig, config.epsilon)), sig))
            real = client.evaluate(sig.detach().numpy()[None], epsilon=config.epsilon, carriers=config.train, **route)
            s = real.candidates[0].codecs[0]
            entry |= {"proxy_separation": float(proxy_sep), "real_separation": s.separation, "real_tpr": s.tpr}
            if s.separation > best[0]:
                best = (s.separation, sig.detach().numpy().copy())
            history.append(entry)
        run.log.append(entry)
        if step == config.steps:
            break
        opt.zero_grad()
        (-train_sep).backward()
        opt.step()
        if step % config.validate_every == 0:
            state = {"raw": raw.detach().clone(), "opt": opt.state_dict(), "next_step": step + 1, "history": history,
                     "best": best, "elapsed": time.monotonic() - start, "settings": settings}  # fmt: skip
            blob = io.BytesIO()
            torch.save(state, blob)
            run.write_checkpoint(blob.getvalue())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(train_sep=f"{float(train_sep.detach()):.4f}", real_sep=f"{history[-1]['real_separation']:.4f}")
    if bar is not None:
        bar.close()
    run.save_best(best[1])
    held = client.evaluate(best[1][None], epsilon=config.epsilon, carriers=config.holdout, target_fpr=config.holdout_fpr,
                           per_clip_scores=True, **route)  # fmt: skip
    s = held.candidates[0].codecs[0]
    summary = {
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "elapsed_s": round(time.monotonic() - start, 1),
        "best_real_train_separation": best[0],
        "final": history[-1],
        "holdout": {k: v for k, v in asdict(s).items() if k not in ("clean_scores", "poisoned_scores", "channel")} | {"codec": s.label()},
    }
    run.write_summary(summary)
    from codecloop import plots

    plots.train_plots(run.path, history, s, config.epsilon, config.holdout_fpr)
    return summary
