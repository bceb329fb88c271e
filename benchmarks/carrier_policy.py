"""Which carriers tell the truth about a deployed signature? (issue 20, ``serve --carriers``)

For fixed signatures, the blind scorer's clean and poisoned scores after libx264 CRF 28 (preset
medium), per 16-frame clip of each real-corpus video, on three kinds of clip:

- ``resize``: 112 x 112 carriers of the resize policy (centre crop, resize: what the report uses),
- ``native``: 112 x 112 carriers cut at the video's own pixel scale,
- ``deployed``: the whole frame at its own size, marked by the deployment rule (codecloop_wire.deploy:
  tiled, cycled from the video's first frame), encoded at that size: what ``codecloop mark`` and a
  platform's CRF 28 re-encode do.

The carrier policy whose numbers are nearest the deployed ones is the honest default.
Prints one row per (signature, kind): clips, mean clean / poisoned score, separation, the clean
spread, TPR at the highest clean score, AUC. Run: python benchmarks/carrier_policy.py [--signatures 3]
"""

from __future__ import annotations

import argparse

import numpy as np

from codecloop_server import corpus, scorers, video_source
from codecloop_server.codecs import CodecSettings
from codecloop_server.transcode import transcode_rgb
from codecloop_wire import deploy
from codecloop_wire.poison import poison


def lowres_signature(seed: int, t: int = 16, cells: int = 7, size: int = 112) -> np.ndarray:
    """A random +-1 signature of cells x cells constant blocks per frame (the optimizer's lowres:7x7:t=all family)."""
    small = np.random.default_rng(seed).choice([-1.0, 1.0], (t, cells, cells, 3))
    return np.repeat(np.repeat(small, size // cells, axis=1), size // cells, axis=2).astype(np.float32)


def scores(clips: np.ndarray, patterns: np.ndarray, eps: float, codec: CodecSettings) -> tuple[np.ndarray, np.ndarray]:
    """(clean, poisoned) blind scores of clips (N, T, H, W, 3) with per-clip patterns (N, T, H, W, 3)."""
    blind = scorers.worker_scorer("blind")
    params = blind.resolve_params({})
    clean, marked = [], []
    for clip, pattern in zip(clips, patterns):
        template = blind.template(pattern, params)
        for out, x in ((clean, clip), (marked, poison(clip, pattern, eps))):
            decoded, _ = transcode_rgb(x, codec)
            out.append(float(blind.score(blind.features(decoded[None], params), template, None)[0]))
    return np.array(clean), np.array(marked)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--signatures", type=int, default=2)
    p.add_argument("--epsilon", type=float, default=2 / 255)
    p.add_argument("--max-clips", type=int, default=8, help="clips per video")
    args = p.parse_args()
    codec = CodecSettings("libx264", crf=28)
    folder = corpus.real_video_dir()
    import av

    print("| signature | clips of | n | clean | poisoned | separation | clean sd | TPR@max clean | AUC |\n|---|---|---|---|---|---|---|---|---|")
    for seed in range(args.signatures):
        sig = lowres_signature(seed)
        for kind in ("resize", "native", "deployed"):
            clean, marked = [], []
            for name in corpus._REAL_VIDEOS:
                path = folder / name
                if kind == "deployed":
                    with av.open(str(path)) as c:
                        h, w = c.streams.video[0].codec_context.height // 2 * 2, c.streams.video[0].codec_context.width // 2 * 2
                    policy = video_source.CarrierPolicy("native")
                else:
                    h, w, policy = 112, 112, video_source.CarrierPolicy.parse(kind)
                clips = video_source.video_clips(path, 16, h, w, args.max_clips, policy)
                starts = video_source.clip_starts(video_source.count_frames(path), 16, args.max_clips)[: len(clips)]
                patterns = np.stack([deploy.pattern(sig, int(s) if kind == "deployed" else 0, 16, h, w) for s in starts])
                c_, m_ = scores(clips, patterns, args.epsilon, codec)
                clean.append(c_)
                marked.append(m_)
            c, m = np.concatenate(clean), np.concatenate(marked)
            auc = float(np.mean(m[:, None] > c[None, :]) + 0.5 * np.mean(m[:, None] == c[None, :]))
            print(f"| lowres {seed} | {kind} | {len(c)} | {c.mean():.4f} | {m.mean():.4f} | {m.mean() - c.mean():.4f} | {c.std():.4f} | "
                  f"{np.mean(m > c.max()):.0%} | {auc:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
