"""Channels benchmark: per codec and per channel, clips/s through the server vs the same channel's
in-process limit on the same clips, in one run.

    python benchmarks/channel_bench.py            # every codec and preset channel (about 6 minutes on 2 cores)
    python benchmarks/channel_bench.py --quick    # fewer clips and repeats

LIMIT: the channel's own code (``channels.Channel.apply``: conversions, encode, decode, resizes) on
the clean clips, one process per worker, no server, no poisoning or scoring. SERVER: a population
of P candidates on the same N clips through ``EvaluateSignature`` with that channel (clean side
warm), P x N / seconds: poisoning, scoring, IPC, gRPC and statistics included. Medians of repeats.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import numpy as np
from engine_bench import Server, signatures

from codecloop import Channel, Codec, DatasetCarriers


def _limit_worker(args: tuple[np.ndarray, str]) -> int:

    clips, preset_channel = args
    channel = _server_channel(preset_channel)
    for clip in clips:
        channel.apply(clip)
    return len(clips)


def _server_channel(spec: str):
    """The server's Channel object for a preset channel name or one codec name (its defaults)."""
    from codecloop_server import channels
    from codecloop_server.codecs import CodecSettings

    for p in channels.PRESETS.values():
        for c in p.channels:
            if c.name == spec:
                return c
    return channels.Channel.of(CodecSettings(spec))


def limit_clips_per_s(pool, clips: np.ndarray, spec: str, workers: int, repeats: int) -> float:
    chunks = [clips[i::workers] for i in range(workers)]
    pool.map(_limit_worker, [(c[:1], spec) for c in chunks])  # warm
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = sum(pool.map(_limit_worker, [(c, spec) for c in chunks]))
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def server_clips_per_s(srv: Server, channel: Channel, p: int, n: int, seed: int, repeats: int) -> float:
    carriers = DatasetCarriers(num_clips=n)
    srv.client.fitness(signatures(1, seed - 1, 112), carriers=carriers, channels=channel)  # clean side warm
    rates = []
    for r in range(repeats):
        t = time.perf_counter()
        srv.client.fitness(signatures(p, seed + r, 112), carriers=carriers, channels=channel)
        rates.append(p * n / (time.perf_counter() - t))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    n, p, repeats = (8, 4, 2) if args.quick else (16, 8, 3)
    codecs = ["libx264", "libx265", "libvpx-vp9", "libsvtav1"]
    preset_channels = ["social-crf28", "vp9-540", "av1-540", "messaging", "reupload"]
    srv = Server(args.workers)
    try:
        clips = _dataset_clips(n)
        rows = []
        with mp.get_context("spawn").Pool(args.workers) as pool:
            resolved = {c.name: c for pr in srv.client.info().channel_presets for c in pr.channels}
            for spec in codecs + preset_channels:
                channel = Channel((Codec(codec=spec),), name=spec) if spec in codecs else resolved[spec]
                limit = limit_clips_per_s(pool, clips, spec, args.workers, repeats)
                server = server_clips_per_s(srv, channel, p, n, 7000 + 10 * len(rows), repeats)
                rows.append((spec, limit, server))
                print(f"{spec:<14} LIMIT {limit:7.1f} clips/s  server {server:7.1f} clips/s  ratio {server / limit:.2f}", flush=True)
    finally:
        srv.close()
    print(f"\n{args.workers} workers, 16x112x112 embedded clips, N = {n}, P = {p}, medians of {repeats}")
    print("| channel | LIMIT clips/s | server clips/s | server / LIMIT |\n|---|---|---|---|")
    for spec, limit, server in rows:
        print(f"| {spec} | {limit:.1f} | {server:.1f} | {server / limit:.2f} |")


def _dataset_clips(n: int) -> np.ndarray:
    """The first n clips of the embedded train split (what DatasetCarriers(num_clips=n) selects)."""
    from codecloop_server.corpus import embedded_corpus

    ds = embedded_corpus()
    ids = ds.select("train", n, 0)
    return ds.clips[np.asarray(ids)]


if __name__ == "__main__":
    main()
