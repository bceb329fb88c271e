"""Scale-out benchmark: one optimizer client spread over 1, 2 and 3 server replicas (round_robin).

    python benchmarks/replicas_bench.py [--workers-per-replica 1] [--candidates 12] [--clips 32]

Starts three replicas on loopback (each with --workers-per-replica codec workers), then times
``fitness`` of a fresh population (P candidates x N clips, 112x112, CRF 28 medium) through a Client
given the first 1, 2 and 3 addresses; prints clips/s (median of --repeats) and the ratio to one
replica. Clean sides are warmed first on every replica, so only poisoned encodes are timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from engine_bench import Server, signatures

import codecloop
from codecloop import Codec, DatasetCarriers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers-per-replica", type=int, default=1)
    ap.add_argument("--candidates", type=int, default=12)
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    carriers, codec = DatasetCarriers(num_clips=args.clips), Codec()
    servers = [Server(args.workers_per_replica, (16, 112, 112)) for _ in range(3)]
    try:
        for srv in servers:  # clean side cached everywhere
            srv.client.fitness(signatures(1, 1, 112), carriers=carriers, codecs=codec)
        print(f"{os.cpu_count()} cores; replicas x {args.workers_per_replica} worker(s); P={args.candidates} x N={args.clips}, 112x112 medium")
        base = None
        for k in (1, 2, 3):
            rates = []
            with codecloop.Client([s.target for s in servers[:k]], timeout=3600) as client:
                for _ in range(4 * k):  # connect every subchannel: round_robin picks among READY ones only
                    client.info()
                for r in range(args.repeats):
                    t = time.perf_counter()
                    client.fitness(signatures(args.candidates, 1000 * k + r, 112), carriers=carriers, codecs=codec)
                    rates.append(args.candidates * args.clips / (time.perf_counter() - t))
            rate = statistics.median(rates)
            base = base or rate
            print(f"{k} replica(s): {rate:7.1f} clips/s  ({rate / base:.2f}x one replica)", flush=True)
    finally:
        for srv in servers:
            srv.close()


if __name__ == "__main__":
    main()
