"""What x264's SIMD level does to results: repeatability, speed and detection statistics per level.

    python benchmarks/simd_levels.py [--clips 32] [--repeats 12] [--signatures 4]

For each level (the determinism class AVX2 / AVX / SSE4.2 / SSSE3, then SSE2, no asm, and x264's
own detection, which is AVX-512 on this machine class) on the same real-looking 16x112x112 clips
(codecloop.testing), CRF 28 medium, threads=1:
* distinct decoded answers over --repeats encodes of each of 4 clips (1 = repeatable);
* median ms per transcode (swscale + encode + decode), and its ratio to AVX2;
* for --signatures random 8x8-block signatures at epsilon 2/255, the blind scorer's separation and
  TPR at FPR <= 1/64 over --clips clips, and how far they move from the AVX2 numbers: what a user
  whose own pipeline runs x264 at another level should expect.

Benchmark only: levels outside the class are set by overriding the encoder options here; the
server refuses them.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time

import numpy as np

from codecloop.cli import random_signature
from codecloop.testing import realistic_clip
from codecloop_server import scorers, transcode
from codecloop_server.codecs import CodecSettings
from codecloop_wire import stats
from codecloop_wire.poison import poison

LEVELS = {"AVX2": "asm=AVX2", "AVX": "asm=AVX", "SSE4.2": "asm=SSE4.2", "SSSE3": "asm=SSSE3",
          "SSE2": "asm=SSE2", "no-asm": "no-asm=1", "x264 detects (AVX-512 here)": ""}  # fmt: skip


def transcoder(params: str):
    """transcode_rgb with x264-params ``params`` (empty: x264's own CPU detection)."""
    settings = CodecSettings(x264_asm="native")
    plain = transcode._encoder

    def encoder(s, w, h):
        ctx = plain(s, w, h)
        if params:
            ctx.options = {**ctx.options, "x264-params": params}
        return ctx

    def run(clip: np.ndarray) -> np.ndarray:
        transcode._encoder = encoder
        try:
            return transcode.transcode_rgb(clip, settings)[0]
        finally:
            transcode._encoder = plain

    return run


def scores(run, clips: list[np.ndarray], sigs: list[np.ndarray], eps: float) -> list[tuple[np.ndarray, np.ndarray]]:
    blind = scorers.worker_scorer("blind")
    params = blind.resolve_params({})
    clean_feats = [blind.features(run(c)[None], params)[0] for c in clips]
    out = []
    for sig in sigs:
        tmpl = blind.template(sig, params)
        clean = np.array([scorers.ncc(f[None], tmpl)[0] for f in clean_feats])
        poisoned = np.array([scorers.ncc(blind.features(run(poison(c, sig, eps))[None], params), tmpl)[0] for c in clips])
        out.append((clean, poisoned))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--signatures", type=int, default=4)
    args = ap.parse_args()
    clips = [realistic_clip(100 + i, cut=i % 3 == 0) for i in range(args.clips)]
    sigs = [random_signature("block8", (1, 112, 112), s) for s in range(args.signatures)]
    decision = stats.Decision(target_fpr=1 / 64)
    print(f"{len(clips)} clips 16x112x112, CRF 28 medium, eps 2/255, blind scorer, {len(sigs)} block8 signatures, TPR at FPR <= 1/64")
    print(f"{'level':<28} {'distinct/4 clips':>16} {'ms/clip':>8} {'x AVX2':>7} {'sep (mean)':>11} {'TPR (mean)':>11} "
          f"{'max |dsep|':>11} {'max |dTPR|':>11} {'scores moved':>13}")  # fmt: skip
    ref = None
    for name, params in LEVELS.items():
        run = transcoder(params)
        distinct = [len({hashlib.sha256(run(clips[i]).tobytes()).hexdigest() for _ in range(args.repeats)}) for i in range(4)]
        times = []
        for c in clips[:16]:
            t0 = time.perf_counter()
            run(c)
            times.append((time.perf_counter() - t0) * 1e3)
        ms = statistics.median(times)
        result = scores(run, clips, sigs, 2 / 255)
        st = [stats.detection_stats(c, p, decision) for c, p in result]
        seps, tprs = np.array([s["separation"] for s in st]), np.array([s["tpr"] for s in st])
        if ref is None:
            ref = (ms, seps, tprs, result)
        moved = np.mean([np.mean(c != rc) / 2 + np.mean(p != rp) / 2 for (c, p), (rc, rp) in zip(result, ref[3])])
        print(f"{name:<28} {'/'.join(map(str, distinct)):>16} {ms:>8.1f} {ms / ref[0]:>7.2f} {seps.mean():>11.4f} {tprs.mean():>11.2f} "
              f"{np.abs(seps - ref[1]).max():>11.4f} {np.abs(tprs - ref[2]).max():>11.2f} {moved:>12.0%}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
