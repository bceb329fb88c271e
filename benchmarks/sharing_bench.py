"""Sharing benchmark: fair shares of 3 hammering clients, and a small call's latency under load.

    python benchmarks/sharing_bench.py [--seconds 30]

Prints each client's share of the clip tasks completed while all three run (fair = 1/3 each), and
the median latency of a 1-candidate x 4-clip request on an idle server vs while another client's
64-candidate x 64-clip population runs.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np
from engine_bench import Server, signatures

import codecloop
from codecloop import Codec, DatasetCarriers

FAST = Codec(preset="ultrafast")


def hammer(target: str, name: str, stop: threading.Event, done: dict[str, int], seed: int) -> None:
    with codecloop.Client(target, client_id=name, timeout=600) as c:
        k = 0
        while not stop.is_set():
            c.fitness(signatures(4, seed + k, 112), carriers=DatasetCarriers(num_clips=16), codecs=FAST)
            if not stop.is_set():
                done[name] += 4 * 16
            k += 1


def small_latency(c: codecloop.Client, seed: int, n: int = 5) -> float:
    times = []
    for i in range(n):
        t = time.perf_counter()
        c.fitness(signatures(1, seed + i, 112), carriers=DatasetCarriers(num_clips=4), codecs=FAST)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--samples", type=int, default=9, help="1x4 requests timed per condition (median)")
    args = ap.parse_args()
    srv = Server(args.workers, (16, 112, 112))
    try:
        srv.client.fitness(signatures(1, 1, 112), carriers=DatasetCarriers(num_clips=64), codecs=FAST)  # warm clean side
        stop, done = threading.Event(), {f"client{i}": 0 for i in range(3)}
        threads = [threading.Thread(target=hammer, args=(srv.target, n, stop, done, 10_000 * (i + 1))) for i, n in enumerate(done)]
        for t in threads:
            t.start()
        time.sleep(5)  # all three are hammering now; measure from here, on the server's own counters
        key = "dispatched_tasks{{client={}}}".format
        before = srv.client.info().load
        time.sleep(args.seconds)
        after = srv.client.info().load
        stop.set()
        for t in threads:
            t.join()
        got = {n: after.get(key(n), 0) - before.get(key(n), 0) for n in done}
        total = sum(got.values())
        print(f"3 clients hammering 4x16 requests, {args.seconds:.0f} s window, {total:.0f} clip tasks dispatched:")
        for name, n in got.items():
            print(f"  {name}: {n:.0f} tasks, share {n / total:.3f} (fair 0.333, deviation {abs(n / total - 1 / 3) * 3:.1%} of a fair share)")

        with codecloop.Client(srv.target, client_id="validation") as c:
            idle = small_latency(c, 20_000, args.samples)
            bulk = threading.Thread(
                target=lambda: codecloop.Client(srv.target, client_id="bulk", timeout=3600).fitness(
                    signatures(64, 30_000, 112), carriers=DatasetCarriers(num_clips=64), codecs=FAST
                )
            )
            bulk.start()
            while c.info().load.get("queued_tasks", 0) < 100:
                time.sleep(0.05)
            loaded = small_latency(c, 40_000, args.samples)
            still_running = bulk.is_alive()
            bulk.join()
        print(f"1x4 request latency: idle {idle * 1e3:.0f} ms, during a 64x64 population {loaded * 1e3:.0f} ms "
              f"(ratio {loaded / idle:.2f}; population still running: {still_running})")  # fmt: skip
    finally:
        srv.close()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
