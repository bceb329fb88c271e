"""Time-to-target: wall-clock seconds and clip encodes for CMA-ES to reach a held-out target, with the
same optimizer and seeds on four fitness back-ends, in one run.

  server         codecloop: one batched EvaluateSignature per generation (a private local server)
  server-racing  the same with racing (successive halving inside the request, Racing())
  local-pool     no server: the same per-clip work (poison, libx264 through PyAV, blind scores) in a
                 process pool of one process per core, one task per worker per generation (the
                 population pickled once per worker), each clip's clean side once per generation,
                 each candidate's template once per worker
  seed-cli       the seed's loop: per candidate and clip, raw frames to disk, `ffmpeg` encodes
                 (libx264, CRF, preset; the CLI's own threading), `ffmpeg` decodes, then the same
                 scores; sequential, clean clips cached for the whole run and templates computed
                 once per candidate (kinder than the seed)

Every generation: CMA-ES asks P thetas (family ``--param``), the back-end scores them on N fresh
training clips (seeded draw per generation, the same for every back-end) and CMA-ES is told the
centred separation (the optimizer's default objective; a race's order for server-racing). Then the
clock stops and the CMA-ES mean is scored through the server on the whole held-out split; the run
has reached the target when its TPR at FPR <= 1/64 is >= ``--target-tpr``. Time and encodes count
the generations only, never the held-out checks. local-pool runs the same library code as the
server, so it follows the same trajectory bit for bit (the benchmark checks it); seed-cli runs
another x264 build (the system ffmpeg) and follows its own.

    python benchmarks/time_to_target.py                 # embedded corpus, 3 seeds (about 25 minutes on 2 cores)
    python benchmarks/time_to_target.py --quick         # 2 seeds, seed-cli on 1
    python benchmarks/time_to_target.py --dataset real --train-clips 12

Prints per-seed rows and medians over seeds: seconds and encodes to the target, and the ratios
seed-cli / server, local-pool / server and server / server-racing measured in this run.

``--target deployment`` measures time to the end-to-end deployment target instead (per-video TPR at
p < 1e-3 on held-out videos after real channels; optimizer back-ends through the run layer):
benchmarks/ttt_deployment.py, ``python benchmarks/time_to_target.py --target deployment --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import codecloop
from codecloop import Codec, DatasetCarriers, Racing
from codecloop.params import make

CENTRE_WEIGHT = 1.0  # centred-separation, the optimizer's default objective


@dataclass(frozen=True)
class Setup:
    dataset: str
    train_clips: int
    holdout_clips: int
    epsilon: float
    crf: float
    preset: str
    popsize: int
    sigma0: float
    target_tpr: float
    max_generations: int


def centred(poisoned: np.ndarray, clean: np.ndarray) -> float:
    """centred-separation of one candidate from its (N,) poisoned and clean scores."""
    return float(poisoned.mean() - clean.mean()) - CENTRE_WEIGHT * abs(float(clean.mean()))


def draw_seed(seed: int, generation: int) -> int:
    """The training-clip draw of a generation (what codecloop.optimize does)."""
    return int(np.random.default_rng([seed, generation]).integers(2**31 - 1))


# --- scores, as the server computes them (blind scorer) ----------------------------------------------


def clean_features(decoded: np.ndarray) -> np.ndarray:
    from codecloop_server import scorers

    blind = scorers.worker_scorer("blind")
    return blind.features(decoded[None], blind.resolve_params({}))[0]


def templates(sigs: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Each candidate's blind template and its sum of squares, once per generation (as the server)."""
    from codecloop_server import scorers

    blind = scorers.worker_scorer("blind")
    params = blind.resolve_params({})
    out = []
    for sig in sigs:
        tmpl = blind.template(sig, params)
        out.append((tmpl, scorers.template_sq(tmpl)))
    return out


def scores(decoded: np.ndarray, clean: np.ndarray, template: tuple[np.ndarray, float]) -> tuple[float, float]:
    """(poisoned score, clean score) of one clip against a candidate's ``template``."""
    from codecloop_server import scorers

    blind = scorers.worker_scorer("blind")
    tmpl, t_sq = template
    feats = blind.features(decoded[None], blind.resolve_params({}))[0]
    poisoned = scorers.ncc_from_stats(scorers.clip_stats(feats), tmpl, feats, t_sq)
    clean_score = scorers.ncc_from_stats(scorers.clip_stats(clean), tmpl, clean if tmpl.shape[0] > 1 else None, t_sq)
    return poisoned, clean_score


# --- back-ends: (P, T', H, W, 3) signatures + a draw seed -> (P,) values to rank, encodes ---------------


class ServerBackend:
    """One batched call per generation to its own private local server (started here, warm)."""

    def __init__(self, client: codecloop.Client, setup: Setup, racing: Racing | None) -> None:
        self.client, self.setup, self.racing = client, setup, racing
        client.info()  # start the private server before the clock runs

    def close(self) -> None:
        self.client.close()

    def __call__(self, sigs: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
        s = self.setup
        before = self.client.info().load
        result = self.client.evaluate(
            sigs, epsilon=s.epsilon, carriers=DatasetCarriers(s.dataset, "train", s.train_clips, seed), codecs=Codec(crf=s.crf, preset=s.preset),
            racing=self.racing,
        )  # fmt: skip
        after = self.client.info().load
        encodes = sum(int(after[k] - before.get(k, 0)) for k in ("clean_encodes", "poisoned_encodes"))
        if result.raced:
            return result.race_fitness, encodes
        values = [min(c.separation - CENTRE_WEIGHT * abs(c.clean_mean) for c in cand.codecs) for cand in result.candidates]
        return np.array(values), encodes


_LOCAL: dict = {}


def _local_init(clips: np.ndarray, crf: float, preset: str, epsilon: float) -> None:
    _LOCAL.update(clips=clips, crf=crf, preset=preset, epsilon=epsilon)


def _local_clips(args: tuple[list[int], np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """This worker's clips, every candidate: each clip's clean side once, then each poisoned clip
    through PyAV's libx264. Per clip: ((P,) poisoned scores, (P,) clean scores)."""
    from codecloop_server.codecs import CodecSettings
    from codecloop_server.transcode import transcode_rgb
    from codecloop_wire.poison import poison

    indices, sigs = args
    settings = CodecSettings(crf=_LOCAL["crf"], preset=_LOCAL["preset"])
    tmpls = templates(sigs)
    out = []
    for index in indices:
        clip = _LOCAL["clips"][index]
        clean = clean_features(transcode_rgb(clip, settings)[0])
        both = [scores(transcode_rgb(poison(clip, sig, _LOCAL["epsilon"]), settings)[0], clean, t) for sig, t in zip(sigs, tmpls)]
        out.append((np.array([p for p, _ in both]), np.array([c for _, c in both])))
    return out


class LocalPoolBackend:
    """The best loop a user could write without the server: a process pool, the clips split evenly
    over one task per worker, so the population is pickled once per worker per generation."""

    def __init__(self, dataset, setup: Setup, workers: int) -> None:
        self.ds, self.setup, self.workers = dataset, setup, workers
        self.pool = mp.get_context("spawn").Pool(workers, _local_init, (dataset.clips, setup.crf, setup.preset, setup.epsilon))
        self.pool.map(_local_clips, [([0], np.zeros((1, 1, *dataset.clip_shape[1:], 3), np.float32))] * workers)  # imports, warm

    def __call__(self, sigs: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
        ids = [int(i) for i in self.ds.select("train", self.setup.train_clips, seed)]
        parts = [ids[k :: self.workers] for k in range(self.workers)]
        done = dict(zip((i for part in parts for i in part), (r for rs in self.pool.map(_local_clips, [(part, sigs) for part in parts]) for r in rs)))
        poisoned = np.stack([done[i][0] for i in ids], axis=1)  # (P, N)
        clean = np.stack([done[i][1] for i in ids], axis=1)
        return np.array([centred(p, c) for p, c in zip(poisoned, clean)]), len(ids) * (len(sigs) + 1)

    def close(self) -> None:
        self.pool.terminate()


class SeedCliBackend:
    """The seed's fitness loop: the ffmpeg CLI per candidate and clip, sequential."""

    def __init__(self, dataset, setup: Setup) -> None:
        self.ds, self.setup = dataset, setup
        self.tmp = Path(tempfile.mkdtemp(prefix="ttt-cli-"))
        self.clean: dict[int, np.ndarray] = {}

    def _codec(self, clip: np.ndarray) -> np.ndarray:
        t, h, w, _ = clip.shape
        raw, mp4, back = self.tmp / "in.rgb", self.tmp / "out.mp4", self.tmp / "back.rgb"
        raw.write_bytes(clip.tobytes())
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", "25",
                        "-i", str(raw), "-c:v", "libx264", "-crf", f"{self.setup.crf:g}", "-preset", self.setup.preset,
                        "-pix_fmt", "yuv420p", str(mp4)], check=True)  # fmt: skip
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(mp4), "-f", "rawvideo", "-pix_fmt", "rgb24", str(back)], check=True)
        return np.fromfile(back, np.uint8).reshape(clip.shape)

    def __call__(self, sigs: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
        from codecloop_wire.poison import poison

        ids = [int(i) for i in self.ds.select("train", self.setup.train_clips, seed)]
        tmpls = templates(sigs)
        encodes = 0
        poisoned, clean = np.zeros((len(sigs), len(ids))), np.zeros((len(sigs), len(ids)))
        for j, i in enumerate(ids):
            clip = self.ds.clips[i]
            if i not in self.clean:
                self.clean[i] = clean_features(self._codec(clip))
                encodes += 1
            for k, sig in enumerate(sigs):
                poisoned[k, j], clean[k, j] = scores(self._codec(poison(clip, sig, self.setup.epsilon)), self.clean[i], tmpls[k])
                encodes += 1
        return np.array([centred(p, c) for p, c in zip(poisoned, clean)]), encodes

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- the optimizer loop ------------------------------------------------------------------------------


def run(backend, client: codecloop.Client, setup: Setup, seed: int, shape: tuple[int, int, int], param_spec: str) -> dict:
    """CMA-ES until the held-out target (or max_generations): seconds of the generations (ask, fitness,
    tell) and of the fitness calls alone, and encodes."""
    import cma

    param = make(param_spec, shape)
    np.random.seed(seed)
    es = cma.CMAEvolutionStrategy(np.zeros(param.dim), setup.sigma0, {"popsize": setup.popsize, "seed": seed + 1, "verbose": -9})
    clock, fitness_s, encodes, trace = 0.0, 0.0, 0, []
    holdout = DatasetCarriers(setup.dataset, "holdout", setup.holdout_clips, 0)
    for g in range(setup.max_generations):
        t0 = time.perf_counter()
        thetas = es.ask()
        sigs = param(np.stack(thetas))
        t1 = time.perf_counter()
        values, n = backend(sigs, draw_seed(seed, g))
        fitness_s += time.perf_counter() - t1
        es.tell(thetas, [-float(v) for v in values])
        clock += time.perf_counter() - t0
        encodes += n
        # the clock is stopped: the held-out check is the same for every back-end
        check = client.evaluate(param(es.mean[None]), epsilon=setup.epsilon, carriers=holdout, codecs=Codec(crf=setup.crf, preset=setup.preset))
        tpr = min(c.tpr for c in check.candidates[0].codecs)
        trace.append(round(tpr, 4))
        print(f"  generation {g}: {clock:.1f} s, {encodes} encodes, held-out TPR {tpr:.3f}", file=sys.stderr, flush=True)
        if tpr >= setup.target_tpr:
            return {"reached": True, "generations": g + 1, "seconds": clock, "fitness_s": fitness_s, "encodes": encodes, "trace": trace}
    return {"reached": False, "generations": setup.max_generations, "seconds": clock, "fitness_s": fitness_s, "encodes": encodes, "trace": trace}


def _median(rows: list[dict], key: str) -> float:
    """Median over seeds; a seed that never reached the target counts as infinite."""
    return statistics.median([r[key] if r["reached"] else math.inf for r in rows])


def main() -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--target", choices=("clip", "deployment"), default="clip")
    known, rest = pre.parse_known_args()
    if known.target == "deployment":  # the end-to-end target: benchmarks/ttt_deployment.py
        import ttt_deployment

        ttt_deployment.main(rest)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=("clip", "deployment"), default="clip",
                    help="clip: held-out clip-level TPR (this page); deployment: --target deployment --help")  # fmt: skip
    ap.add_argument("--dataset", default="embedded")
    ap.add_argument("--train-clips", type=int, default=32)
    ap.add_argument("--holdout-clips", type=int, default=0, help="0: the whole holdout split")
    ap.add_argument("--epsilon", type=float, default=2 / 255)
    ap.add_argument("--crf", type=float, default=28)
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--param", default="lowres:7x7:rgb:t=all")
    ap.add_argument("--popsize", type=int, default=16)
    ap.add_argument("--sigma0", type=float, default=2.0)
    ap.add_argument("--target-tpr", type=float, default=0.9)
    ap.add_argument("--max-generations", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cli-seeds", type=int, default=None, help="run seed-cli on the first K seeds only (default: all)")
    ap.add_argument("--arms", nargs="+", default=["server", "server-racing", "local-pool", "seed-cli"])
    ap.add_argument("--quick", action="store_true", help="seeds 0 1, seed-cli on seed 0 only")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.cli_seeds = [0, 1], 1
    if "seed-cli" in args.arms and shutil.which("ffmpeg") is None:
        raise SystemExit("seed-cli needs the ffmpeg CLI (apt-get install -y ffmpeg), or leave it out of --arms")

    from codecloop_server import corpus

    workers = os.cpu_count() or 1
    with codecloop.Client(timeout=3600) as client:  # the held-out checks (clock stopped), for every arm
        info = {d.name: d for d in client.info().datasets}[args.dataset]
        shape = tuple(info.clip_shape)
        holdout_clips = args.holdout_clips or info.split_clips["holdout"]
        setup = Setup(args.dataset, args.train_clips, holdout_clips, args.epsilon, args.crf, args.preset, args.popsize, args.sigma0,
                      args.target_tpr, args.max_generations)  # fmt: skip
        ds = corpus.embedded_corpus(shape) if args.dataset == corpus.EMBEDDED_NAME else corpus.real_corpus(shape)
        assert ds.digest == info.digest, "the benchmark's copy of the dataset is the server's"
        print(f"{args.dataset} {shape}, {args.train_clips} training clips per generation, held-out {holdout_clips} clips; "
              f"P={args.popsize}, eps={args.epsilon * 255:.3g}/255, libx264 CRF {args.crf:g} {args.preset}; target: held-out TPR >= "
              f"{args.target_tpr:.0%} at FPR <= 1/64 for the CMA-ES mean; {workers} cores, {client.info().workers} server workers")  # fmt: skip
        rows: dict[str, list[dict]] = {arm: [] for arm in args.arms}
        for seed in args.seeds:
            for arm in args.arms:
                if arm == "seed-cli" and args.cli_seeds is not None and args.seeds.index(seed) >= args.cli_seeds:
                    continue
                # a fresh server per run: no arm or seed profits from another's cached clean clips or results
                if arm == "server":
                    backend = ServerBackend(codecloop.Client(timeout=3600), setup, None)
                elif arm == "server-racing":
                    backend = ServerBackend(codecloop.Client(timeout=3600), setup, Racing(centre_weight=CENTRE_WEIGHT))
                elif arm == "local-pool":
                    backend = LocalPoolBackend(ds, setup, workers)
                elif arm == "seed-cli":
                    backend = SeedCliBackend(ds, setup)
                else:
                    raise SystemExit(f"--arms: unknown {arm!r}")
                try:
                    row = run(backend, client, setup, seed, shape, args.param)
                finally:
                    backend.close()
                rows[arm].append({"seed": seed, **row})
                print(f"seed {seed} {arm:<14} reached={row['reached']!s:<5} generations={row['generations']:>3} "
                      f"seconds={row['seconds']:8.1f} (fitness calls {row['fitness_s']:.1f}) encodes={row['encodes']:>6} "
                      f"({row['seconds'] / row['generations']:.1f} s/generation) "
                      f"held-out TPR by generation {row['trace']}", flush=True)  # fmt: skip
        if "server" in rows and "local-pool" in rows:
            same = [a["trace"] == b["trace"] for a, b in zip(rows["server"], rows["local-pool"])]
            print(f"local-pool follows the server's trajectory (same held-out TPRs every generation): {same}")
        print("\nmedian over seeds (a seed that missed the target counts as infinite):")
        med = {arm: (_median(r, "seconds"), _median(r, "encodes"), _median(r, "generations")) for arm, r in rows.items() if r}
        for arm, (sec, enc, gens) in med.items():
            print(f"  {arm:<14} {sec:8.1f} s  {enc:8.0f} encodes  {gens:5.1f} generations  ({len(rows[arm])} seeds)")
        if "server" in med:
            s_sec, s_enc, _ = med["server"]
            for arm, label in (("seed-cli", "seed-cli / server"), ("local-pool", "local-pool / server")):
                if arm in med:
                    print(f"  time {label}: {med[arm][0] / s_sec:.2f}")
            if "server-racing" in med:
                print(f"  server / server-racing: time {s_sec / med['server-racing'][0]:.2f}, encodes {s_enc / med['server-racing'][1]:.2f}")
        if args.out:
            Path(args.out).write_text(json.dumps({"setup": setup.__dict__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
