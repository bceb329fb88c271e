"""Regenerate the earlier-recipe outcome table and plots of docs/history.md (needs a running server: codecloop serve).

    python examples/outcome.py --target 127.0.0.1:50051 --out docs/outcome

Runs, on the embedded corpus, blind detector, epsilon = 2/255, libx264 CRF 28 medium, 16x112x112:
  1. the seed's recipe: gradient training through the tanh proxy, then measured on the real codec;
  2. CMA-ES through the server (lowres:7x7:rgb:t=4: a 7x7 RGB block pattern changing every 4 frames,
     588 dimensions; popsize 16, sigma0 2, 9 minutes);
  3. torch-hybrid (real libx264 forward, proxy Jacobian backward) on the same family of patterns;
and scores every result on the 72 held-out clips at FPR <= 1/64. About 20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from codecloop import Client, DatasetCarriers
from codecloop.diagnose import diagnose, table
from codecloop.optimize import Run, RunConfig
from codecloop.params import LowRes, make

EPS = 2 / 255
SHAPE = (16, 112, 112)
HOLDOUT = DatasetCarriers(split="holdout", num_clips=72)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--out", default="docs/outcome")
    ap.add_argument("--cma-minutes", type=float, default=9.0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client = Client(args.target, timeout=3600)
    client.wait_ready(300)
    results = {}

    train = DatasetCarriers(split="train", num_clips=32)
    # the seed's recipe: a full-tensor signature trained through the tanh "codec"
    # (gradient back-ends: one candidate per generation, so budget = steps + 1 generations)
    tanh_cfg = RunConfig(optimizer="proxy:tanh", epsilon=EPS, train=train, fresh_clips=False, holdout=HOLDOUT, budget=61, validate_every=10)
    tanh = Run(client, LowRes(SHAPE, (16, 112, 112), "rgb"), tanh_cfg, out / "proxy-tanh").run()
    results["1. tanh proxy (the seed's recipe)"] = tanh

    cma_cfg = RunConfig(
        optimizer="cma", epsilon=EPS, train=train, popsize=16, sigma0=2.0, budget=10**6, max_seconds=args.cma_minutes * 60, seed=0
    )
    results["2. CMA-ES on the real codec"] = Run(client, make("lowres:7x7:rgb:t=4", SHAPE), cma_cfg, out / "cma").run()

    hybrid_cfg = RunConfig(optimizer="torch-hybrid", epsilon=EPS, train=train, fresh_clips=False, holdout=HOLDOUT, budget=41, validate_every=10)
    hybrid = Run(client, LowRes(SHAPE, (4, 112 // 16, 112 // 16), "rgb"), hybrid_cfg, out / "torch-hybrid").run()
    results["3. torch hybrid (real forward, proxy backward)"] = hybrid

    lines = ["| run | training-side separation | real held-out separation | held-out TPR | held-out FPR | AUC | p | minutes |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results.items():
        h = r["holdout"]
        train_side = r["train"]["separation"]
        lines.append(f"| {name} | {train_side:.4f} | {h['separation']:.4f} | {h['tpr']:.0%} | {h['fpr']:.1%} | "
                     f"{h['auc']:.3f} | {h['p_value']:.2g} | {r['elapsed_s'] / 60:.1f} |")  # fmt: skip
    print("\n".join(lines))
    rows, rho = diagnose(client, np.load(out / "proxy-tanh" / "best.npy"), epsilon=EPS, plot=out / "diagnose.png")
    print(table(rows, rho))
    (out / "table.md").write_text("\n".join(lines) + "\n\n```\n" + table(rows, rho) + "\n```\n")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    for run in ("proxy-tanh", "cma", "torch-hybrid"):
        for png in ("fitness.png", "holdout_hist.png", "holdout_roc.png"):
            shutil.copy(out / run / png, out / f"{run}-{png}")


if __name__ == "__main__":
    main()
