"""Which channel is the hardest, and how much epsilon each needs: a kept signature (an optimize
run's best.npy) scored on the held-out split through each channel at several budgets.

    codecloop optimize --dataset real --channel social --channel streaming --channel messaging \\
        --train-clips 12 --max-minutes 9 --out runs/mixed
    python benchmarks/channel_outcome.py --run runs/mixed --dataset real

Prints, per channel, the held-out TPR (at FPR <= 1/64) at each epsilon and the smallest epsilon of
the list that reaches TPR >= 95 % (the same signature, scaled: poisoned = clean + eps * signature).
Without --target a private server is started.
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import numpy as np

import codecloop
from codecloop import Channel, DatasetCarriers

EPSILONS = ("1/255", "2/255", "3/255", "4/255", "6/255", "8/255")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="an optimize run folder (best.npy, summary.json)")
    ap.add_argument("--dataset", default="real")
    ap.add_argument("--target", default=None)
    ap.add_argument("--epsilons", nargs="+", default=list(EPSILONS))
    ap.add_argument("--tpr", type=float, default=0.95)
    args = ap.parse_args()
    run = Path(args.run)
    sig = np.load(run / "best.npy").astype(np.float32)
    config = json.loads((run / "summary.json").read_text())["config"]
    channels = [Channel(preset=c["preset"]) if c.get("preset") else Channel.parse(c["name"]) for c in config["channels"]]
    epsilons = [float(Fraction(e)) for e in args.epsilons]
    with codecloop.Client(args.target, datasets={args.dataset: args.dataset} if Path(args.dataset).is_dir() else None) as client:
        holdout = next(d for d in client.info().datasets if d.name == Path(args.dataset).name).split_clips["holdout"]
        carriers = DatasetCarriers(Path(args.dataset).name, "holdout", holdout)
        table: dict[str, list[float]] = {}
        for eps in epsilons:
            res = client.evaluate(sig[None], epsilon=eps, carriers=carriers, channels=channels, target_fpr=1 / 64)
            for s in res.candidates[0].codecs:
                table.setdefault(s.label(), []).append(s.tpr)
    head = " | ".join(f"ε {e}" for e in args.epsilons)
    print(f"kept signature of {run}, {holdout} held-out clips of {args.dataset}, TPR at FPR <= 1/64\n")
    print(f"| channel | {head} | smallest ε with TPR ≥ {args.tpr:.0%} |\n|---|{'---|' * len(epsilons)}---|")
    for name, tprs in sorted(table.items(), key=lambda kv: -sum(kv[1])):
        need = next((e for e, t in zip(args.epsilons, tprs) if t >= args.tpr), f"> {args.epsilons[-1]}")
        print(f"| {name} | " + " | ".join(f"{t:.0%}" for t in tprs) + f" | {need} |")


if __name__ == "__main__":
    main()
