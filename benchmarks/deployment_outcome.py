"""The deployment outcome, end to end: mark held-out videos at full size, send marked and unmarked
copies through real channels, detect, count per video.

    python benchmarks/deployment_outcome.py --signature runs/x/best.npy --epsilon 2/255 --out runs/outcome \\
        [--video FILE ...] [--segments 5] [--frames 50] [--generated 6] [--zoom 2] [--fpr 1e-3] [--null N]

Test videos: each ``--video`` (default: ``bikes.mp4``, the real corpus's held-out source) cut into
``--segments`` pieces of ``--frames`` frames, and ``--generated`` camera pans over photographs
(codecloop.testing's photographs, a 128 x 120 camera upsampled ``--zoom`` times: 256 x 240 by default,
768 x 720 with ``--zoom 6``, where the 540-line messaging preset scales by 0.75; 50 frames at 25 fps; none
of them is in the real corpus, but the five photographs repeat among them). Each is
marked by ``codecloop.mark_video`` (libx264 CRF 18) and, with its unmarked copy, sent through:

* ``crf28``: the ffmpeg CLI's libx264, CRF 28, preset medium, at native size;
* ``social-crf28`` and ``messaging``: ``codecloop channel`` (at most 720 lines, CRF 28; at most 540
  lines, 15 fps, CRF 35 veryfast: the presets' absolute sizes, so these test videos keep their size),
  detected with ``size`` = the marked size and ``fps`` = the marked rate (benchmarks/deployment.py, shared
with benchmarks/time_to_target.py ``--target deployment``).

Reports, per channel: marked videos called marked at p < FPR (k/n, 95 % Clopper-Pearson) and the
unmarked copies called marked (false alarms). With ``--null N``, N more unmarked generated pans
(other photographs and camera paths) go through every channel: false alarms k/n and whether their z
follow N(0, 1), the null model's claim (mean, sd, max, Kolmogorov-Smirnov p). Writes ``outcome.json``
and ``outcome.md`` in --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
from deployment import CHANNELS, DeploymentCheck, make_test_videos, null_check, null_table, summarize, table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--signature", required=True)
    p.add_argument("--epsilon", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--video", action="append", default=[])
    p.add_argument("--segments", type=int, default=5)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--generated", type=int, default=6)
    p.add_argument("--zoom", type=int, default=2, help="generated videos: 128x120 camera times this (2: 256x240, 6: 768x720)")
    p.add_argument("--fpr", type=float, default=1e-3)
    p.add_argument("--null", type=int, default=0, metavar="N",
                   help="also N unmarked generated pans (other photographs and paths, same size), through every channel: false alarms "
                   "and the z distribution against N(0, 1)")  # fmt: skip
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.video:
        from codecloop_server.corpus import real_video_dir

        args.video = [str(real_video_dir() / "bikes.mp4")]
    sig = np.load(args.signature)
    videos = make_test_videos(out, [Path(v) for v in args.video], args.segments, args.frames, args.generated, args.zoom)
    rows = DeploymentCheck(videos, CHANNELS, out, args.fpr, log=True).check(sig, args.epsilon)
    outcome = summarize(rows, CHANNELS)
    summary = {channel: asdict(o) for channel, o in outcome.items()}
    lines = [f"signature {args.signature} {tuple(sig.shape)}, ε {args.epsilon}, decision p < {args.fpr:g} per video", "", *table(outcome)]
    null = null_check(out, args.null, args.frames, args.zoom, CHANNELS, sig, args.fpr, log=True) if args.null else None
    if null is not None:
        lines += ["", f"null check: {args.null} more unmarked generated pans ({128 * args.zoom}x{120 * args.zoom}, {args.frames} frames)", "",
                  *null_table(null, args.fpr)]  # fmt: skip
    (out / "outcome.json").write_text(json.dumps({"summary": summary, "videos": rows, "null_check": null}, indent=1))
    (out / "outcome.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
