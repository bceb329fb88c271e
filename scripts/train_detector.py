"""Train the example detector on real libx264 output of the embedded corpus; export it as .pt2 and TorchScript.

    python scripts/train_detector.py --out server/codecloop_server/models/example_detector.pt2

writes the torch.export program (the server's primary detector format) to --out and the same model
as legacy TorchScript next to it, with the suffix .pt (--torchscript-out to choose another name).

Data: every training clip of the embedded corpus is poisoned with a random block signature
(cell 4 to 28 pixels, constant or changing every 4 frames; epsilon 2/255 or 4/255) and sent,
poisoned and clean, through the real encoder (CRF 23, 28 or 35, preset medium). The model
(codecloop.detector_model.ResidualDetector) learns its residual filter on random 4-frame 64x64
crops, maximising the separation of poisoned and clean scores over their spread. The held-out
photographs' clips (CRF 28, epsilon 2/255) are scored before and after training; the script prints
both. Deterministic for a given --seed on one machine (torch CPU, one thread).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from codecloop.detector_model import ResidualDetector, export_program, export_torchscript
from codecloop_server.codecs import CodecSettings
from codecloop_server.corpus import embedded_corpus
from codecloop_server.transcode import transcode_rgb
from codecloop_wire.poison import poison


def random_signature(rng: np.random.Generator, t: int, h: int, w: int) -> np.ndarray:
    """float32 (T or 1, H, W, 3) in [-1, 1]: +-1 blocks of a random cell size."""
    cell = int(rng.choice([4, 7, 8, 14, 16, 28]))
    frames = 1 if rng.random() < 0.5 else t // 4
    small = rng.choice([-1.0, 1.0], size=(frames, -(-h // cell), -(-w // cell), 3))
    sig = np.repeat(np.repeat(small, cell, axis=1), cell, axis=2)[:, :h, :w]
    return np.repeat(sig, t // frames, axis=0).astype(np.float32) if frames > 1 else sig.astype(np.float32)


def make_pairs(clips: np.ndarray, rng: np.random.Generator, crfs: list[float], epsilons: list[float]):
    """(clean decoded, poisoned decoded, key (T, H, W, 3)) per clip, through the real codec."""
    out = []
    for clip in clips:
        t, h, w, _ = clip.shape
        sig = np.broadcast_to(random_signature(rng, t, h, w), clip.shape).astype(np.float32)
        settings = CodecSettings(crf=float(rng.choice(crfs)))
        eps = float(rng.choice(epsilons))
        clean, _ = transcode_rgb(clip, settings)
        marked, _ = transcode_rgb(poison(clip, sig, eps), settings)
        out.append((clean, marked, sig))
    return out


def separation(model: torch.nn.Module, pairs) -> tuple[float, float]:
    """(mean poisoned - mean clean score, fraction of poisoned above the max clean score)."""
    with torch.no_grad():
        sc = torch.cat([model(torch.from_numpy(c[None]).float() / 255, torch.from_numpy(k[None])) for c, _, k in pairs])
        sp = torch.cat([model(torch.from_numpy(m[None]).float() / 255, torch.from_numpy(k[None])) for _, m, k in pairs])
    return float(sp.mean() - sc.mean()), float((sp > sc.max()).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the torch.export program to write (.pt2)")
    ap.add_argument("--torchscript-out", type=Path, default=None, help="the legacy TorchScript file to write (default: --out with the suffix .pt)")
    ap.add_argument("--clips", type=int, default=168, help="training clips (of the 168 in the train split)")
    ap.add_argument("--holdout-clips", type=int, default=72)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16, help="pairs per step")
    ap.add_argument("--hidden", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.out.suffix != ".pt2":
        ap.error(f"--out {args.out}: a torch.export program's file name ends in .pt2")
    torchscript_out = args.torchscript_out or args.out.with_suffix(".pt")

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    ds = embedded_corpus()
    t0 = time.perf_counter()
    train = make_pairs(ds.clips[ds.splits["train"][: args.clips]], rng, [23.0, 28.0, 35.0], [2 / 255, 4 / 255])
    holdout = make_pairs(ds.clips[ds.splits["holdout"][: args.holdout_clips]], rng, [28.0], [2 / 255])
    print(f"encoded {2 * (len(train) + len(holdout))} clips in {time.perf_counter() - t0:.1f} s", flush=True)

    model = ResidualDetector(args.hidden)
    before = separation(model, holdout)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t, h, w, _ = train[0][0].shape
    for step in range(args.steps):
        idx = rng.choice(len(train), size=min(args.batch, len(train)), replace=False)
        t0_, y0, x0 = int(rng.integers(0, t - 3)), int(rng.integers(0, h - 63)), int(rng.integers(0, w - 63))
        crop = (slice(t0_, t0_ + 4), slice(y0, y0 + 64), slice(x0, x0 + 64))
        clean = torch.from_numpy(np.stack([train[i][0][crop] for i in idx])).float() / 255
        marked = torch.from_numpy(np.stack([train[i][1][crop] for i in idx])).float() / 255
        keys = torch.from_numpy(np.stack([train[i][2][crop] for i in idx]))
        sc, sp = model(clean, keys), model(marked, keys)
        loss = -(sp.mean() - sc.mean()) / torch.sqrt(sp.var() + sc.var() + 1e-4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d} loss {loss.item():.4f}", flush=True)
    after = separation(model, holdout)
    print(f"holdout ({len(holdout)} clips, CRF 28, eps 2/255): separation {before[0]:.4f} -> {after[0]:.4f}, "
          f"poisoned above every clean score {before[1]:.0%} -> {after[1]:.0%} (untrained -> trained)")  # fmt: skip
    export_program(model, str(args.out))
    export_torchscript(model, str(torchscript_out))
    print(f"wrote {args.out} (torch.export) and {torchscript_out} (TorchScript, legacy)")


if __name__ == "__main__":
    main()
