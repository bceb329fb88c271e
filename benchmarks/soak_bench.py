"""Soak benchmark: several clients hammer one server for a while; throughput and memory over time.

    python benchmarks/soak_bench.py [--minutes 10] [--clients 3] [--workers 2]

Each client sends fresh 4-candidate x 16-clip populations (ultrafast; every signature new, so the
result cache keeps filling up to its bound) and, every 5th call, a 1-candidate call on a new random
set of clips (the clean cache keeps filling up to its bound). Every minute it prints clips/s in
that minute and the resident memory of the server and of the server plus its workers (VmRSS,
which counts the shared corpus pages once per process that touched them, and RssAnon, the private
memory where a leak would show). The
server runs with small cache bounds (--clean-cache-mib 64, --result-cache-entries 20000) so that
the bounds are reached within the run: RSS must level off, not grow.
"""

from __future__ import annotations

import argparse
import threading
import time

from engine_bench import Server, signatures

import codecloop
from codecloop import Codec, DatasetCarriers


def memory(srv: Server) -> tuple[float, float, float]:
    """(server VmRSS, server + workers VmRSS, server + workers RssAnon) in MiB."""
    main, total = srv.memory_mib("VmRSS")
    return main, total, srv.memory_mib("RssAnon")[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    srv = Server(args.workers, extra=["--clean-cache-mib", "64", "--result-cache-entries", "20000"])
    target = srv.target
    stop = threading.Event()
    done = [0]
    lock = threading.Lock()

    def client(i: int) -> None:
        with codecloop.Client(target, client_id=f"soak{i}", timeout=600) as c:
            k = 0
            while not stop.is_set():
                k += 1
                if k % 5 == 0:
                    c.fitness(signatures(1, 10**6 * i + k, 112), carriers=DatasetCarriers(num_clips=8, seed=k * 31 + i), codecs=Codec(preset="ultrafast"))
                    n = 8
                else:
                    c.fitness(signatures(4, 10**6 * i + k, 112), carriers=DatasetCarriers(num_clips=16), codecs=Codec(preset="ultrafast"))
                    n = 64
                with lock:
                    done[0] += n

    start_rss = memory(srv)
    print(f"start: RSS server {start_rss[0]:.0f} MiB, +workers {start_rss[1]:.0f} MiB, private {start_rss[2]:.0f} MiB", flush=True)
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()
    t0, last = time.monotonic(), 0
    try:
        for minute in range(1, int(args.minutes) + 1):
            time.sleep(max(0.0, t0 + 60 * minute - time.monotonic()))
            with lock:
                now = done[0]
            main_rss, total, private = memory(srv)
            load = codecloop.Client(target).info().load
            print(f"minute {minute:2d}: {(now - last) / 60:6.1f} clips/s   RSS server {main_rss:5.0f} MiB, +workers {total:5.0f} MiB, "
                  f"private {private:5.0f} MiB   "
                  f"clean cache {load['clean_cache_bytes'] / 2**20:5.1f} MiB", flush=True)  # fmt: skip
            last = now
    finally:
        stop.set()
        for t in threads:
            t.join(120)
        end_rss = memory(srv)
        print(f"end: RSS server {end_rss[0]:.0f} MiB, +workers {end_rss[1]:.0f} MiB, private {end_rss[2]:.0f} MiB; "
              f"{done[0]} clips in {time.monotonic() - t0:.0f} s")
        srv.close()


if __name__ == "__main__":
    main()
