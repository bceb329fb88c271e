"""The deployment outcome, end to end: mark held-out videos at full size, send marked and unmarked
copies through real channels, detect, count per video.

    python benchmarks/deployment_outcome.py --signature runs/x/best.npy --epsilon 2/255 --out runs/outcome \\
        [--video FILE ...] [--segments 5] [--frames 50] [--generated 6] [--zoom 2] [--fpr 1e-3]

Test videos: each ``--video`` (default: ``bikes.mp4``, the real corpus's held-out source) cut into
``--segments`` pieces of ``--frames`` frames, and ``--generated`` camera pans over photographs
(codecloop.testing's photographs, a 128 x 120 camera upsampled ``--zoom`` times: 256 x 240 by default,
768 x 720 with ``--zoom 6``, where the 540-line messaging preset scales by 0.75; 50 frames at 25 fps; none
of them is in the real corpus, but the five photographs repeat among them). Each is
marked by ``codecloop.mark_video`` (libx264 CRF 18) and, with its unmarked copy, sent through:

* ``crf28``: the ffmpeg CLI's libx264, CRF 28, preset medium, at native size;
* ``social-crf28`` and ``messaging``: ``codecloop channel`` (at most 720 lines, CRF 28; at most 540
  lines, 15 fps, CRF 35 veryfast: the presets' absolute sizes, so these test videos keep their size),
  detected with ``size`` = the marked size and ``fps`` = the marked rate.

Reports, per channel: marked videos called marked at p < FPR (k/n, 95 % Clopper-Pearson) and the
unmarked copies called marked (false alarms). Writes ``outcome.json`` and ``outcome.md`` in --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from codecloop import detect_video, mark_video
from codecloop.testing import realistic_clip
from codecloop_wire.stats import clopper_pearson

CHANNELS = ("crf28", "social-crf28", "messaging")


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=600)


def _test_videos(out: Path, videos: list[Path], segments: int, frames: int, generated: int, zoom: int) -> list[Path]:
    found = []
    for video in videos:
        for k in range(segments):
            path = out / f"{video.stem}-{k}.mp4"
            _ffmpeg("-i", str(video), "-vf", f"select=gte(n\\,{k * frames})", "-frames:v", str(frames), "-an", "-c:v", "libx264",
                    "-crf", "12", "-pix_fmt", "yuv420p", "-r", "25", str(path))  # fmt: skip
            found.append(path)
    for seed in range(generated):
        # the photographs are small (300 lines and up): a 120 x 128 camera, upsampled 2x, fresh sensor noise
        small = realistic_clip(seed=1000 + seed, t=frames, h=120, w=128).astype(np.float32)
        big = ndimage.zoom(small, (1, zoom, zoom, 1), order=1) + np.random.default_rng(seed).normal(0, 2.0, (frames, 120 * zoom, 128 * zoom, 3))
        clip = np.clip(np.rint(big), 0, 255).astype(np.uint8)
        path = out / f"generated-{seed}.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{128 * zoom}x{120 * zoom}", "-r", "25", "-i", "-",
                        "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p", str(path)], input=clip.tobytes(), check=True)  # fmt: skip
        found.append(path)
    return found


def _channel(src: Path, channel: str, dst: Path) -> Path:
    if channel == "crf28":
        _ffmpeg("-i", str(src), "-an", "-c:v", "libx264", "-crf", "28", "-preset", "medium", "-pix_fmt", "yuv420p", str(dst))
    else:
        subprocess.run([sys.executable, "-m", "codecloop.cli", "channel", str(src), str(dst), "--channel", channel],
                       check=True, capture_output=True, timeout=600)  # fmt: skip
    return dst


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
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.video:
        from codecloop_server.corpus import real_video_dir

        args.video = [str(real_video_dir() / "bikes.mp4")]
    sig = np.load(args.signature)
    rows = []
    for src in _test_videos(out, [Path(v) for v in args.video], args.segments, args.frames, args.generated, args.zoom):
        marked = mark_video(src, out / f"{src.stem}.marked.mp4", sig, args.epsilon, threads=1)
        for channel in CHANNELS:
            for kind, video in (("marked", Path(marked.output)), ("clean", src)):
                sent = _channel(video, channel, out / f"{src.stem}.{kind}.{channel}.mp4")
                d = detect_video(sent, sig, fpr=args.fpr, size=(marked.width, marked.height), fps=marked.fps)
                rows.append({"video": src.stem, "channel": channel, "kind": kind, "z": d.z, "p_value": d.p_value, "marked": d.marked,
                             "frames": d.frames, "size": [marked.width, marked.height]})  # fmt: skip
                print(f"{src.stem:<14} {channel:<13} {kind:<7} z {d.z:7.2f} p {d.p_value:9.2e} {'MARKED' if d.marked else ''}", flush=True)
    table = [f"signature {args.signature} {tuple(sig.shape)}, ε {args.epsilon}, decision p < {args.fpr:g} per video", "",
             "| channel | marked videos called marked | 95 % CI | unmarked copies called marked | 95 % CI | median z (marked) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    summary = {}
    for channel in CHANNELS:
        mine = [r for r in rows if r["channel"] == channel]
        tp = sum(r["marked"] for r in mine if r["kind"] == "marked")
        fp = sum(r["marked"] for r in mine if r["kind"] == "clean")
        n = sum(r["kind"] == "marked" for r in mine)
        tpr_ci, fpr_ci = clopper_pearson(tp, n), clopper_pearson(fp, n)
        med = float(np.median([r["z"] for r in mine if r["kind"] == "marked"]))
        summary[channel] = {"n": n, "true_positives": tp, "tpr_ci": tpr_ci, "false_positives": fp, "fpr_ci": fpr_ci, "median_z": med}
        table.append(f"| {channel} | {tp}/{n} | [{tpr_ci[0]:.0%}, {tpr_ci[1]:.0%}] | {fp}/{n} | [{fpr_ci[0]:.0%}, {fpr_ci[1]:.0%}] | {med:.1f} |")
    (out / "outcome.json").write_text(json.dumps({"summary": summary, "videos": rows}, indent=1))
    (out / "outcome.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
