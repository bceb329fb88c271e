"""Which objective, measured on training (or validation) clips, predicts a signature's held-out TPR?

    python benchmarks/objectives_bench.py --dataset embedded --epsilon 2/255 --signatures 64

Draws random signatures of the default search family (``lowres:7x7:rgb:t=4``, theta ~ N(0, s^2),
s = --scale, like a CMA-ES population with sigma0 = s), scores each on up to 32 training clips,
the validation split and the held-out split (libx264 CRF 28 medium, blind scorer), and prints
Spearman's rank correlation, over the signatures, between each objective on the training /
validation clips and the held-out TPR at FPR 1/64 and held-out separation. An objective that ranks
candidates the way held-out footage does is one an optimizer can follow without fitting the
training clips.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats as sps

from codecloop import Client, DatasetCarriers
from codecloop.cli import fraction
from codecloop.objectives import NAMES, Objective
from codecloop.params import make

FPR = 1 / 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--dataset", default="embedded")
    ap.add_argument("--epsilon", type=fraction(0.0, 1.0, low_open=True, high_open=False, levels_hint=True), default="2/255")
    ap.add_argument("--signatures", type=int, default=64)
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    client = Client(args.target, timeout=3600)
    info = next(d for d in client.info().datasets if d.name == args.dataset)
    param = make("lowres:7x7:rgb:t=4", tuple(info.clip_shape))
    thetas = np.random.default_rng(args.seed).standard_normal((args.signatures, param.dim)) * args.scale
    signatures = param(thetas)
    scores = {}
    for split in ("train", "validation", "holdout"):
        n = min(32, info.split_clips[split]) if split == "train" else info.split_clips[split]
        r = client.evaluate(signatures, epsilon=args.epsilon, carriers=DatasetCarriers(args.dataset, split, n), target_fpr=FPR,
                            per_clip_scores=True)  # fmt: skip
        scores[split] = [(c.codecs[0].clean_scores, c.codecs[0].poisoned_scores) for c in r.candidates]
        print(f"{split}: {n} clips")

    def per(split: str, objective: Objective) -> np.ndarray:
        return np.array([objective.scores(c, p) for c, p in scores[split]])

    held_tpr, held_sep = per("holdout", Objective("tpr", FPR)), per("holdout", Objective("separation"))
    print(f"held-out TPR at FPR 1/64 over the signatures: {held_tpr.min():.0%} .. {held_tpr.max():.0%}, mean {held_tpr.mean():.0%}")
    print(f"{'objective':>20}  {'on clips of':>10}  rho(held-out TPR)  rho(held-out separation)")
    for name in NAMES:
        for split in ("train", "validation"):
            v = per(split, Objective(name, FPR))
            tpr_rho, sep_rho = sps.spearmanr(v, held_tpr).statistic, sps.spearmanr(v, held_sep).statistic
            print(f"{name:>20}  {split:>10}  {tpr_rho:+17.2f}  {sep_rho:+24.2f}")


if __name__ == "__main__":
    main()
