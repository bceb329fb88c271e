"""Which search family generalizes? Random signatures of each parameterization on held-out footage.

    python benchmarks/family_bench.py --dataset real --epsilon 2/255 --signatures 32 \
        --param lowres:7x7:rgb:t=4 lowres:14x14:rgb lowres:14x14:rgb:t=4

For each ``--param`` family, draws ``--signatures`` random signatures (theta ~ N(0, s^2), s =
``--scale``, like a CMA-ES population at sigma0 = s), scores them on the whole held-out split
(libx264 ``--crf`` (28) medium, blind scorer) and prints, over the signatures, the median and quartiles of
the held-out TPR at FPR <= 1/64, of the separation and of the clean scores' spread. What an optimizer
starts from, and the spread it can select from, before any fitting to training clips.
"""

from __future__ import annotations

import argparse

import numpy as np

from codecloop import Client, Codec, DatasetCarriers
from codecloop.cli import fraction
from codecloop.params import make


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=None, help="default: a private local server")
    ap.add_argument("--dataset", default="real")
    ap.add_argument("--split", default="holdout")
    ap.add_argument("--epsilon", type=fraction(0.0, 1.0, low_open=True, high_open=False, levels_hint=True), default="2/255")
    ap.add_argument("--signatures", type=int, default=32)
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--crf", type=float, default=28.0)
    ap.add_argument("--param", nargs="+", default=["lowres:7x7:rgb:t=4", "lowres:14x14:rgb", "lowres:14x14:rgb:t=4"])
    args = ap.parse_args()
    with Client(args.target, timeout=3600) as client:
        info = next(d for d in client.info().datasets if d.name == args.dataset)
        carriers = DatasetCarriers(args.dataset, args.split, info.split_clips[args.split])
        print(f"{args.dataset} {args.split} ({carriers.num_clips} clips), CRF {args.crf:g} medium, epsilon {args.epsilon:.5f}, {args.signatures} signatures per family")
        print(f"{'family':<24} {'dim':>5}  {'TPR@1/64 q25/med/q75':>22}  {'sep med':>8}  {'clean std med':>13}")
        for spec in args.param:
            param = make(spec, tuple(info.clip_shape))
            thetas = np.random.default_rng(args.seed).standard_normal((args.signatures, param.dim)) * args.scale
            result = client.evaluate(np.concatenate([param(t) for t in thetas]), epsilon=args.epsilon, carriers=carriers, codecs=Codec(crf=args.crf), target_fpr=1 / 64)
            stats = [c.codecs[0] for c in result.candidates]
            tpr = np.array([s.tpr for s in stats])
            q25, med, q75 = np.percentile(tpr, [25, 50, 75])
            sep = np.median([s.separation for s in stats])
            cstd = np.median([s.clean_std for s in stats])
            print(f"{spec:<24} {param.dim:>5}  {q25:>6.0%} {med:>6.0%} {q75:>6.0%}  {sep:>8.4f}  {cstd:>13.4f}", flush=True)


if __name__ == "__main__":
    main()
