"""Detector throughput: dynamic batching vs one clip per forward pass, in one run.

    python benchmarks/detector_bench.py [--device auto|cpu|cuda] [--clips 256] [--batch 1 4 16 64]

Feeds ``--clips`` decoded-size clips (16x112x112 by default) concurrently into the server's
DynamicBatcher with the shipped example detector, for each max_batch_size, and prints clips/s
(median of ``--repeats``) and the ratio to max_batch_size = 1. torch's CPU threads are the server's
(1 on CPU); on CUDA the clips travel as uint8 and are converted on the device.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np
from codecloop_server.detector import EXAMPLE_DETECTOR, DetectorConfig, DynamicBatcher, TorchDetector


async def one_pass(batcher: DynamicBatcher, clips: np.ndarray, keys: np.ndarray) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(batcher.score(c, k) for c, k in zip(clips, keys)))
    return len(clips) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--shape", type=int, nargs=3, default=(16, 112, 112), metavar=("T", "H", "W"))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    det = TorchDetector(EXAMPLE_DETECTOR, args.device)
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (args.clips, *args.shape, 3), dtype=np.uint8)
    keys = rng.choice([-1.0, 1.0], (args.clips, 1, *args.shape[1:], 3)).astype(np.float32)
    print(f"device {det.device}, {args.clips} clips of {tuple(args.shape)}, example detector")
    rates = {}
    for b in args.batch:
        batcher = DynamicBatcher(det, DetectorConfig("bench", "example", max_batch_size=b, max_queue_delay_us=2000))
        batcher.warm_up(tuple(args.shape))

        async def run():
            try:
                return [await one_pass(batcher, clips, keys) for _ in range(args.repeats)]
            finally:
                await batcher.close()

        rates[b] = statistics.median(asyncio.run(run()))
        print(f"max_batch_size {b:4d}: {rates[b]:8.1f} clips/s  ({rates[b] / rates[args.batch[0]]:.2f}x batch {args.batch[0]})", flush=True)


if __name__ == "__main__":
    main()
