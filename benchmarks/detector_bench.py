"""Detector throughput: dynamic batching vs one clip per forward pass, in one run.

    python benchmarks/detector_bench.py [--device auto|cpu|cuda] [--clips 256] [--batch 1 4 16 64]

Feeds ``--clips`` decoded-size clips (16x112x112 by default) concurrently into the server's
DynamicBatcher with the shipped example detector, for each max_batch_size, and prints clips/s
(median of ``--repeats``) and the ratio to the first max_batch_size. torch's CPU threads are the
server's (1 on CPU); on CUDA the clips travel as uint8 and are converted on the device.

It also prints whether a clip's score depends on what it was batched with: every clip's score at
each max_batch_size against its score at the first one (bit-identical, or the largest difference),
with and without ``--pad-batches``, and, on CUDA, against the same model on the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np

from codecloop_server.detector import EXAMPLE_DETECTOR, DetectorConfig, DynamicBatcher, TorchDetector


async def one_pass(batcher: DynamicBatcher, clips: np.ndarray, keys: np.ndarray) -> tuple[float, np.ndarray]:
    """All clips at once through the batcher: (clips/s, scores in clip order)."""
    start = time.perf_counter()
    scores = await asyncio.gather(*(batcher.score(c, k) for c, k in zip(clips, keys)))
    return len(clips) / (time.perf_counter() - start), np.asarray(scores)


def measure(det: TorchDetector, b: int, pad: bool, clips: np.ndarray, keys: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    """Median clips/s over ``repeats`` passes at max_batch_size ``b``, and the scores of the last pass."""
    batcher = DynamicBatcher(det, DetectorConfig("bench", "example", max_batch_size=b, max_queue_delay_us=2000, pad_batches=pad))
    batcher.warm_up(clips.shape[1:4])

    async def run() -> list[tuple[float, np.ndarray]]:
        try:
            return [await one_pass(batcher, clips, keys) for _ in range(repeats)]
        finally:
            await batcher.close()

    passes = asyncio.run(run())
    return statistics.median(rate for rate, _ in passes), passes[-1][1]


def difference(a: np.ndarray, b: np.ndarray) -> str:
    return "bit-identical" if np.array_equal(a, b) else f"max |diff| {np.abs(a - b).max():.3g}"


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
    rates, scores = {}, {}
    for b in args.batch:
        rates[b], scores[b] = measure(det, b, False, clips, keys, args.repeats)
        ref = args.batch[0]
        print(
            f"max_batch_size {b:4d}: {rates[b]:8.1f} clips/s  ({rates[b] / rates[ref]:.2f}x batch {ref}); "
            f"scores vs batch {ref}: {difference(scores[b], scores[ref])}",
            flush=True,
        )
    top = args.batch[-1]
    rate, padded = measure(det, top, True, clips[:-1], keys[:-1], 1)  # one short batch, padded to full
    print(f"--pad-batches {top}: {rate:8.1f} clips/s; scores vs unpadded: {difference(padded, scores[top][:-1])}")
    if det.device.type == "cuda":
        cpu = TorchDetector(EXAMPLE_DETECTOR, "cpu")
        n = min(args.clips, 16)
        on_cpu = np.concatenate([cpu(clips[i : i + 1], np.broadcast_to(keys[i : i + 1], clips[i : i + 1].shape).astype(np.float32)) for i in range(n)])
        print(f"CUDA vs CPU (first {n} clips, batch {args.batch[0]}): {difference(scores[args.batch[0]][:n], on_cpu)}")


if __name__ == "__main__":
    main()
