"""Engine benchmark: the codec limit, the same per-clip work in-process, the server over gRPC, and the
naive ffmpeg-CLI loop, in one run.

LIMIT: libx264 encode + h264 decode of yuv420p frames (codec only). LIMIT-same-work: everything the
server does per (candidate, clip) with the clean side warm (poison, conversions, encode, decode,
features, both scores, the poisoning's squared error), in a process pool of the same size, no
server. The server's own overhead (gRPC, scheduling, IPC, statistics) is server / LIMIT-same-work.
Every path runs the very clips the server draws for ``DatasetCarriers(num_clips=N)`` (clip content
moves the encoder's cost by 10 % and more), and every pool's workers keep freed memory as the
server's do (workers.keep_freed_memory).

    python benchmarks/engine_bench.py            # full (about 6 minutes on 2 cores)
    python benchmarks/engine_bench.py --quick    # 112x112 only, smaller tables

Prints clips/s for each path, the ratios server/LIMIT and server/naive, the server's peak RSS,
how cost grows with P (candidates) and N (clips), cancellation latency, and a per-stage cost
breakdown of one clip task. Medians over repeats; ratios are taken within this one run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

import codecloop
from codecloop import Codec, DatasetCarriers
from codecloop.local import LocalServer
from codecloop_wire import defaults

N_DEFAULT, P_DEFAULT = 64, 16


def signatures(p: int, seed: int, hw: int) -> np.ndarray:
    """p random 4x4-block +-1 signatures (1, hw, hw, 3); fresh seeds defeat the result cache."""
    rng = np.random.default_rng(seed)
    small = rng.choice([-1.0, 1.0], size=(p, 1, hw // 4, hw // 4, 3)).astype(np.float32)
    return np.repeat(np.repeat(small, 4, axis=2), 4, axis=3)


# --- (a) LIMIT: PyAV CodecContext, frames already yuv420p in and out --------------------------------


def _limit_worker(args: tuple[np.ndarray, str, float]) -> int:
    import av

    clips, preset, crf = args
    n = 0
    for yuv in clips:
        h, w = yuv.shape[1] * 2 // 3, yuv.shape[2]
        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
        enc.time_base, enc.framerate, enc.gop_size, enc.thread_count = Fraction(1, 25), Fraction(25), 250, 1
        enc.options = {"crf": f"{crf:g}", "preset": preset}
        dec = av.CodecContext.create("h264", "r")
        dec.thread_count = 1
        packets = []
        for i, f in enumerate(yuv):
            frame = av.VideoFrame.from_ndarray(f, format="yuv420p")
            frame.pts = i
            packets += enc.encode(frame)
        packets += enc.encode(None)
        out = [fr.to_ndarray() for p in packets for fr in dec.decode(p)] + [fr.to_ndarray() for fr in dec.decode(None)]
        assert len(out) == len(yuv)
        n += 1
    return n


def _proc_cpu(pids: Sequence[int]) -> tuple[float, int]:
    """(user + system CPU seconds, minor page faults) summed over processes, from /proc/<pid>/stat."""
    cpu, faults = 0.0, 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        faults += int(fields[7])
    return cpu, faults


def _pool_init() -> None:
    from codecloop_server.workers import keep_freed_memory

    keep_freed_memory()


def limit_clips_per_s(yuv_clips: np.ndarray, preset: str, workers: int, repeats: int = 3) -> float:
    chunks = [yuv_clips[i::workers] for i in range(workers)]
    with mp.get_context("spawn").Pool(workers, initializer=_pool_init) as pool:
        pool.map(_limit_worker, [(c[:2], preset, 28.0) for c in chunks])  # warm the processes
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            n = sum(pool.map(_limit_worker, [(c, preset, 28.0) for c in chunks]))
            rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


# --- (a') LIMIT-same-work: the whole per-clip pipeline in-process, one process per core, no server -----

_SAME: dict[str, object] = {}


def _same_init(clips: np.ndarray, preset: str) -> None:
    """Pool initializer: this worker's copy of the clips; clean features are computed on first use."""
    _pool_init()
    _SAME.update(clips=clips, preset=preset, clean={})


def _same_work_worker(args: tuple[list[int], np.ndarray]) -> int:
    """What the server does per (candidate, clip) with the clean side warm: poison, RGB -> yuv420p,
    libx264, h264, yuv420p -> RGB, blind features, the poisoned and the clean score, the squared
    error of the poisoning (a result field). The best loop a user could write with the same library
    code, without gRPC, scheduling, IPC, shared memory or statistics."""
    from codecloop_server import scorers
    from codecloop_server.codecs import CodecSettings
    from codecloop_server.tasks import squared_error
    from codecloop_server.transcode import transcode_rgb
    from codecloop_wire.poison import poison

    indices, sigs = args
    clips, clean = _SAME["clips"], _SAME["clean"]
    settings = CodecSettings(preset=_SAME["preset"])
    blind = scorers.worker_scorer("blind")
    params = blind.resolve_params({})
    for i in indices:
        if i not in clean:  # the warm-up pass: clean features once per clip, like the server's cache
            feats = blind.features(transcode_rgb(clips[i], settings)[0][None], params)[0]
            clean[i] = (feats, scorers.clip_stats(feats))
    n = 0
    for sig in sigs:
        tmpl = blind.template(sig, params)
        t_sq = scorers.template_sq(tmpl)
        for i in indices:
            marked = poison(clips[i], sig, 4 / 255)
            decoded, _ = transcode_rgb(marked, settings)
            squared_error(marked, clips[i])
            feats = blind.features(decoded[None], params)[0]
            scorers.ncc_from_stats(scorers.clip_stats(feats), tmpl, feats, t_sq)
            scorers.ncc_from_stats(clean[i][1], tmpl, None, t_sq)
            n += 1
    return n


def same_work_clips_per_s(
    clips: np.ndarray, preset: str, workers: int, p: int, hw: int, seed: int, repeats: int = 3
) -> tuple[float, tuple[float, float]]:
    """P candidates x N clips through the in-process pipeline, clips split across ``workers`` processes:
    (clips/s, (worker CPU ms per clip, worker minor page faults per clip)), medians over ``repeats``."""
    parts = [list(range(k, len(clips), workers)) for k in range(workers)]
    with mp.get_context("spawn").Pool(workers, initializer=_same_init, initargs=(clips, preset)) as pool:
        pool.map(_same_work_worker, [(part, signatures(1, seed - 1, hw)) for part in parts])  # warm: clean side, imports
        pids = [proc.pid for proc in pool._pool]  # type: ignore[attr-defined]
        rates, costs = [], []
        for r in range(repeats):
            sigs = signatures(p, seed + r, hw)
            before = _proc_cpu(pids)
            t = time.perf_counter()
            n = sum(pool.map(_same_work_worker, [(part, sigs) for part in parts]))
            rates.append(n / (time.perf_counter() - t))
            after = _proc_cpu(pids)
            costs.append(((after[0] - before[0]) * 1e3 / n, (after[1] - before[1]) / n))
    return statistics.median(rates), _median_pair(costs)


def _median_pair(pairs: Sequence[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(c for c, _ in pairs), statistics.median(f for _, f in pairs)


# --- (b) the server over gRPC ------------------------------------------------------------------------


class Server:
    """A ``codecloop serve`` subprocess on a free loopback port (``extra``: more serve flags), started
    by the SDK's launcher (codecloop.local.LocalServer), with a client."""

    def __init__(self, workers: int, clip_shape: tuple[int, int, int] = (16, 112, 112), extra: Sequence[str] = ()) -> None:
        self.server = LocalServer(args=["--workers", str(workers), "--clip-shape", *map(str, clip_shape), "--log-level", "WARNING", *extra])
        self.target = self.server.start()
        assert self.server.process is not None
        self.proc = self.server.process
        self.client = codecloop.Client(self.target, timeout=3600)

    def memory_mib(self, field: str) -> tuple[float, float]:
        """A /proc status field (VmHWM, VmRSS, RssAnon) of the server process, and summed over it
        and its children (workers, resource tracker), in MiB. Shared-memory pages count in every
        process that touched them (VmHWM, VmRSS); RssAnon is private memory alone."""

        def value(pid: int) -> float:
            try:
                return int(re.search(rf"{field}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024
            except (OSError, AttributeError):  # a child that just exited
                return 0.0

        # children of every thread: workers are started from the pool's threads, not the main one
        tasks = Path(f"/proc/{self.proc.pid}/task").iterdir()
        children = {int(c) for task in tasks for c in (task / "children").read_text().split()}
        main = value(self.proc.pid)
        return main, main + sum(value(c) for c in children)

    def workers(self) -> list[int]:
        """Pids of the server's child processes (its codec workers and the resource tracker)."""
        tasks = Path(f"/proc/{self.proc.pid}/task").iterdir()
        return sorted({int(c) for task in tasks for c in (task / "children").read_text().split()})

    def peak_rss_mib(self) -> tuple[float, float]:
        """(server process VmHWM, sum of VmHWM over it and its workers) in MiB."""
        return self.memory_mib("VmHWM")

    def close(self) -> None:
        self.client.close()
        self.server.stop()


def server_clips_per_s(srv: Server, p: int, n: int, preset: str, hw: int, seed: int, repeats: int = 3) -> tuple[float, dict]:
    """(clips/s, figures): the server's counters over the last repeat, and medians of CPU per clip:
    ``worker_ms`` (the codec workers), ``main_ms`` (the server process), ``client_ms`` (this
    process), ``faults`` (workers' minor page faults per clip)."""
    carriers, codec = DatasetCarriers(num_clips=n), Codec(preset=preset)
    srv.client.fitness(signatures(1, seed - 1, hw), carriers=carriers, codecs=codec)  # clean side warm
    workers, main, me = srv.workers(), [srv.proc.pid], [os.getpid()]
    rates, figures, costs = [], {}, []
    for r in range(repeats):
        before = srv.client.info().load
        cpu0 = [_proc_cpu(workers), _proc_cpu(main), _proc_cpu(me)]
        t = time.perf_counter()
        srv.client.fitness(signatures(p, seed + r, hw), carriers=carriers, codecs=codec)
        rates.append(p * n / (time.perf_counter() - t))
        cpu1 = [_proc_cpu(workers), _proc_cpu(main), _proc_cpu(me)]
        after = srv.client.info().load
        figures = {k: after[k] - before.get(k, 0) for k in ("clean_encodes", "poisoned_encodes")}
        costs.append([(b[0] - a[0]) * 1e3 / (p * n) for a, b in zip(cpu0, cpu1)] + [(cpu1[0][1] - cpu0[0][1]) / (p * n)])
    for i, k in enumerate(("worker_ms", "main_ms", "client_ms", "faults")):
        figures[k] = statistics.median(c[i] for c in costs)
    return statistics.median(rates), figures


# --- (c) the naive loop: the ffmpeg CLI per clip ------------------------------------------------------


def naive_clips_per_s(clips: np.ndarray, preset: str) -> float:
    """The seed's loop: raw frames to disk, ffmpeg encodes to mp4, ffmpeg decodes back, score."""
    t_, h, w, _ = clips[0].shape
    with tempfile.TemporaryDirectory() as tmp:
        raw, mp4, back = Path(tmp, "in.rgb"), Path(tmp, "out.mp4"), Path(tmp, "back.rgb")
        t = time.perf_counter()
        for clip in clips:
            raw.write_bytes(clip.tobytes())
            subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
                            "-s", f"{w}x{h}", "-r", "25", "-i", str(raw), "-c:v", "libx264", "-crf", "28",
                            "-preset", preset, "-threads", "1", "-pix_fmt", "yuv420p", str(mp4)], check=True)  # fmt: skip
            subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(mp4), "-f", "rawvideo",
                            "-pix_fmt", "rgb24", str(back)], check=True)  # fmt: skip
            decoded = np.fromfile(back, np.uint8).reshape(clip.shape)
            float(np.corrcoef(decoded.ravel()[:1000], clip.ravel()[:1000])[0, 1])
        return len(clips) / (time.perf_counter() - t)


# --- per-stage breakdown of one clip task ------------------------------------------------------------


def stage_breakdown(clip: np.ndarray) -> dict[str, float]:
    """Median milliseconds of each stage of a poisoned clip task, in this process (one core)."""
    from codecloop_server import scorers
    from codecloop_server.codecs import CodecSettings
    from codecloop_server.transcode import transcode_rgb
    from codecloop_wire.poison import poison

    sig = signatures(1, 7, clip.shape[1])[0]
    blind = scorers.worker_scorer("blind")
    params = blind.resolve_params({})
    tmpl = blind.template(sig, params)
    settings = CodecSettings()
    marked = poison(clip, sig, 4 / 255)
    decoded, _ = transcode_rgb(marked, settings)
    features = blind.features(decoded[None], params)
    from codecloop_server.convert import rgb_to_yuv420p, yuv420p_frames, yuv420p_to_rgb
    from codecloop_server.reference import transcode_yuv
    from codecloop_server.tasks import squared_error

    yuv = rgb_to_yuv420p(marked)
    stages = {
        "poison": lambda: poison(clip, sig, 4 / 255),
        "rgb->yuv420p, 16 swscale calls": lambda: rgb_to_yuv420p(marked),
        "rgb->yuv420p frames, one swscale call": lambda: yuv420p_frames(marked),
        "yuv420p->rgb, 16 swscale calls": lambda: yuv420p_to_rgb(yuv),
        "libx264 encode + h264 decode (LIMIT)": lambda: transcode_yuv(yuv, settings),
        "whole fused transcode_rgb": lambda: transcode_rgb(marked, settings),
        "scorer features": lambda: blind.features(decoded[None], params),
        "2 scores (poisoned, clean)": lambda: (blind.score(features, tmpl, None), blind.score(features, tmpl, None)),
        "squared error of the poisoning": lambda: squared_error(marked, clip),
    }
    out = {}
    for name, fn in stages.items():
        fn()
        times = []
        for _ in range(7):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        out[name] = statistics.median(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="112x112 only, smaller scaling table")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args()
    from codecloop_server.convert import rgb_to_yuv420p
    from codecloop_server.corpus import embedded_corpus

    w = args.workers
    print(f"codecloop engine benchmark: {w} workers, {os.cpu_count()} cores, P={P_DEFAULT} x N={N_DEFAULT} clips of 16 frames, CRF 28")
    configs = [(112, "medium"), (112, "ultrafast")] + ([] if args.quick else [(224, "medium")])
    rows = []
    for hw in sorted({c[0] for c in configs}):
        ds = embedded_corpus((16, hw, hw))
        clips = ds.clips[ds.select("train", N_DEFAULT, defaults.SEED)]  # what DatasetCarriers(num_clips=N) draws
        yuv = np.stack([rgb_to_yuv420p(c) for c in clips])
        srv = Server(w, (16, hw, hw))
        try:
            for size, preset in configs:
                if size != hw:
                    continue
                limit = limit_clips_per_s(yuv, preset, w)
                same, same_cost = same_work_clips_per_s(clips, preset, w, P_DEFAULT, hw, seed=3000)
                rate, figures = server_clips_per_s(srv, P_DEFAULT, N_DEFAULT, preset, hw, seed=1000)
                naive = naive_clips_per_s(clips[:8], preset) if shutil.which("ffmpeg") and hw == 112 else float("nan")
                rows.append((f"{hw}x{hw} {preset}", limit, same, rate, naive, figures, same_cost))
            if hw == 112:
                rss = srv.peak_rss_mib()
                scaling = []
                for n in (16, 64):
                    for p in (1, 4, 16, 64):
                        if args.quick and p * n > 1024:
                            continue
                        r, _ = server_clips_per_s(srv, p, n, "ultrafast", hw, seed=5000 + 100 * p + n, repeats=1)
                        scaling.append((p, n, r, p * n / r))
                # cancellation: a 64 x 64 request with a 1 s deadline, then a 1 x 4 request
                idle = []
                for s in range(3):
                    t = time.perf_counter()
                    srv.client.fitness(signatures(1, 9000 + s, hw), carriers=DatasetCarriers(num_clips=4))
                    idle.append(time.perf_counter() - t)
                try:
                    srv.client.fitness(signatures(64, 9100, hw), carriers=DatasetCarriers(num_clips=64), timeout=1.0)
                except codecloop.CodecLoopServerError:
                    pass
                t = time.perf_counter()
                srv.client.fitness(signatures(1, 9200, hw), carriers=DatasetCarriers(num_clips=4))
                after_cancel = time.perf_counter() - t
                rss = max(rss, srv.peak_rss_mib())
                breakdown = stage_breakdown(clips[0])
        finally:
            srv.close()

    print("\n| clips | LIMIT clips/s | LIMIT-same-work clips/s | server clips/s | naive CLI clips/s | server/LIMIT | server/same-work | "
          "server/naive | encodes in a warm generation |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, limit, same, rate, naive, deltas, _ in rows:
        print(f"| {name} | {limit:.1f} | {same:.1f} | {rate:.1f} | {naive:.1f} | {rate / limit:.2f} | {rate / same:.2f} | {rate / naive:.1f} | "
              f"{int(deltas['poisoned_encodes'])} poisoned + {int(deltas['clean_encodes'])} clean (P x N = {P_DEFAULT * N_DEFAULT}) |")  # fmt: skip
    print(f"\nCPU per clip (median ms; {w} workers on {os.cpu_count()} cores: the server and client processes share the cores with the workers):")
    print("| clips | same-work workers | server workers | server process | client process | minor faults per clip, same-work / server workers |")
    print("|---|---|---|---|---|---|")
    for name, _, _, _, _, f, (same_ms, same_faults) in rows:
        print(f"| {name} | {same_ms:.1f} | {f['worker_ms']:.1f} | {f['main_ms']:.2f} | {f['client_ms']:.2f} | {same_faults:.0f} / {f['faults']:.0f} |")
    print(f"\nserver peak RSS (VmHWM), 112x112 server: main process {rss[0]:.0f} MiB, main + {w} workers {rss[1]:.0f} MiB "
          "(shared-memory pages count in every process that touches them)")  # fmt: skip
    print("\ncost growth, 112x112 ultrafast (clean side warm):\n| P | N | clips/s | seconds |\n|---|---|---|---|")
    for p, n, r, s in scaling:
        print(f"| {p} | {n} | {r:.1f} | {s:.2f} |")
    print(f"\ncancellation: 1x4 request on an idle server {statistics.median(idle) * 1e3:.0f} ms (median of 3); "
          f"right after a 64x64 request hit its 1 s deadline {after_cancel * 1e3:.0f} ms")
    print("\none clip task, 112x112 medium, one core (median ms):")
    for k, v in breakdown.items():
        print(f"  {k:40s} {v:6.2f}")


if __name__ == "__main__":
    main()
