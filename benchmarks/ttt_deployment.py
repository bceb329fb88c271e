"""Time to the deployment target (``benchmarks/time_to_target.py --target deployment``): wall-clock
seconds and clip encodes for each optimizer back-end to reach the end-to-end outcome of
benchmarks/deployment_outcome.py, per-video TPR at p < ``--fpr`` on held-out videos with no false alarm.

Each back-end runs ``codecloop optimize``'s run layer (``codecloop.run.Run``: the same config, the
same validation split that chooses the kept signature) on its own private server, one generation at
a time on the clock. After the first generation (the earliest a target can be met) and after the
first generation that ends at or past each ``--checkpoints`` time, the clock stops and the kept
signature (what the run would save in best.npy if it stopped there: the last generation validated
first when it was not, as ``Run.finish`` does, the run left as it was) is marked into the test
videos, sent through the channels and detected (benchmarks/deployment.py). The target is reached
when TPR >= ``--target-tpr`` on every channel of the mix, with no false alarm. seed-cli is the
seed's per-clip ffmpeg CLI loop (pycma, its mean kept: the seed had no validation split).

Writes ``ttt.json`` (every row), ``ttt.md`` (medians over seeds) and ``ttt.png`` (held-out TPR,
worst channel, against wall time per back-end) in ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from deployment import DEFAULT_CHANNEL, PLATFORM_MIX, DeploymentCheck, make_test_videos, reached, summarize, worst_tpr

import codecloop
from codecloop import Channel, Codec, DatasetCarriers, Racing, backends
from codecloop.cli_optimize import GRADIENT_PREFIXES
from codecloop.local import folder_dataset
from codecloop.params import LowRes, make
from codecloop.run import Run
from codecloop.runconfig import GradientConfig, RunConfig

MIXES = {"default": DEFAULT_CHANNEL, "platform": PLATFORM_MIX}
# back-end name -> (optimizer, racing); any other name is an optimizer of codecloop.backends, raced as
# `codecloop optimize` races it by default (population back-ends yes, gradient back-ends no)
ALIASES = {"defaults": ("cma", True), "no-racing": ("cma", False)}
ALL_BACKENDS = ("defaults", "no-racing", "cma:diagonal", "nevergrad:NGOpt", "torch-hybrid", "seed-cli")
# the test channels as the server runs them in training (social-crf28 is one channel of the "social" preset)
TRAIN_CHANNELS = {"social-crf28": "resize:720p,libx264:crf=28", "messaging": "messaging"}


@dataclass(frozen=True)
class Bench:
    """The settings every back-end shares."""

    dataset: str  # a dataset name, or a folder (served as a dataset by the private servers)
    epsilon: float
    train_clips: int
    popsize: int
    sigma0: float
    param: str
    crf: float
    preset: str
    checkpoints: tuple[float, ...]  # seconds on the clock, the last one the budget
    target_tpr: float
    budget: int  # evaluations, for the run layer: more than the wall budget allows
    stop_at_target: bool = False  # a run ends at its first checkpoint that meets the target


def server_client(dataset: str) -> tuple[codecloop.Client, str]:
    """A client of a fresh private server (no back-end profits from another's caches) and the dataset's name there."""
    folder = folder_dataset(dataset)
    if folder is None:
        return codecloop.Client(timeout=3600), dataset
    return codecloop.Client(timeout=3600, datasets={folder[0]: folder[1]}), folder[0]


def encodes(client: codecloop.Client) -> int:
    load = client.info().load
    return int(load.get("clean_encodes", 0) + load.get("poisoned_encodes", 0))


def mix_config(bench: Bench, mix: tuple[str, ...], gradient: bool) -> dict[str, Any]:
    """RunConfig's codecs / channels for a mix (a gradient back-end trains through one: the mix's first)."""
    if mix == DEFAULT_CHANNEL:
        return {"codecs": (Codec(crf=bench.crf, preset=bench.preset),), "channels": ()}
    return {"codecs": (), "channels": tuple(Channel.parse(TRAIN_CHANNELS[c]) for c in (mix[:1] if gradient else mix))}


class Checkpoints:
    """The deployment check at each checkpoint time, off the clock; rows of what it found."""

    def __init__(self, bench: Bench, check: DeploymentCheck, label: str) -> None:
        self.bench, self.check, self.label = bench, check, label
        self.pending = list(bench.checkpoints)
        self.rows: list[dict[str, Any]] = []

    def due(self, clock: float, generations: int) -> bool:
        """After the first generation (the earliest a target can be met: the low end's resolution is
        one generation), then at each checkpoint time."""
        return bool(self.pending) and (generations == 1 or clock >= self.pending[0])

    def record(self, clock: float, n_encodes: int, generations: int, signature: np.ndarray | None) -> None:
        """Check ``signature`` (None: no kept signature yet); every checkpoint time the clock passed is done."""
        while self.pending and clock >= self.pending[0]:
            self.pending.pop(0)
        row: dict[str, Any] = {"seconds": round(clock, 1), "encodes": n_encodes, "generations": generations}
        if signature is None:
            row |= {"channels": None, "worst_tpr": 0.0, "reached": False}
        else:
            outcome = summarize(self.check.check(signature, self.bench.epsilon), self.check.channels)
            row |= {"channels": {c: asdict(o) for c, o in outcome.items()}, "worst_tpr": worst_tpr(outcome),
                    "reached": reached(outcome, self.bench.target_tpr)}  # fmt: skip
        self.rows.append(row)
        if row["reached"] and self.bench.stop_at_target:
            self.pending.clear()  # its time to target is known; later checkpoints would only say whether it holds
        tprs = "" if row["channels"] is None else " ".join(f"{c} {o['true_positives']}/{o['n']} (fa {o['false_positives']})" for c, o in row["channels"].items())
        print(f"  {self.label}: {clock:7.1f} s, {n_encodes} encodes, {generations} generations: {tprs or 'no kept signature yet'}"
              f"{'  TARGET' if row['reached'] else ''}", file=sys.stderr, flush=True)  # fmt: skip


def kept_theta(run: Run) -> np.ndarray | None:
    """What the run would save if it stopped now: ``Run.finish`` validates the last generation first
    when it was not; done here on a copy of the run's state, then the state is put back."""
    s = run.state
    if run.validation is None or s.validated_generation >= s.generation - 1:
        theta = s.best_theta
    else:
        saved = copy.deepcopy(s)
        run.validate()
        theta, run.state = run.state.best_theta, saved
    return None if theta is None else np.asarray(theta)


def run_layer(bench: Bench, name: str, seed: int, mix: tuple[str, ...], marks: Checkpoints) -> dict[str, Any]:
    """One ``codecloop optimize`` run of back-end ``name`` until the last checkpoint (or its own stop)."""
    optimizer, race = ALIASES.get(name, (name, not name.startswith(GRADIENT_PREFIXES)))
    gradient = optimizer.startswith(GRADIENT_PREFIXES)
    folder = Path(tempfile.mkdtemp(prefix="ttt-run-"))
    client, dataset = server_client(bench.dataset)
    try:
        info = {d.name: d for d in client.info().datasets}[dataset]
        t, h, w = (int(x) for x in info.clip_shape)
        # the CLI's gradient signature (--frames 16 --block 1), every frame distinct when 16 does not divide T
        param = LowRes((t, h, w), (16 if t % 16 == 0 else t, h, w), "rgb") if gradient else make(bench.param, (t, h, w))
        config = RunConfig(
            optimizer=optimizer, epsilon=bench.epsilon, **mix_config(bench, mix, gradient),
            train=DatasetCarriers(dataset, "train", bench.train_clips), validation=DatasetCarriers(dataset, "validation", 0),
            validate_every=10 if gradient else 4, holdout=DatasetCarriers(dataset, "holdout", 0), popsize=bench.popsize,
            # the checkpoints end the run, not the run layer's limits; nevergrad's optimizers need a budget (NGOpt picks its algorithm by it)
            budget=bench.budget, max_seconds=10 * bench.checkpoints[-1] + 3600,
            sigma0=bench.sigma0, seed=seed, racing=Racing() if race else None, gradient=GradientConfig() if gradient else None,
        )  # fmt: skip
        run = Run(client, param, config, folder)
        start, clock, off_clock, stopped = encodes(client), 0.0, 0, None

        def checkpoint() -> None:
            nonlocal off_clock
            on_clock = encodes(client) - start - off_clock
            before = encodes(client)
            theta = kept_theta(run)
            off_clock += encodes(client) - before  # the checkpoint's validation is off the clock
            marks.record(clock, on_clock, run.state.generation, None if theta is None else run.param(theta[None])[0])

        while marks.pending:
            if (stopped := run.stop_reason()) is not None:
                if not marks.rows or marks.rows[-1]["generations"] != run.state.generation:
                    checkpoint()  # stopped by itself before the last checkpoint: its kept signature stands
                break
            t0 = time.perf_counter()
            run.step()
            clock += time.perf_counter() - t0
            if marks.due(clock, run.state.generation):
                checkpoint()
        note = "trains through the mix's first channel (gradient back-ends take one)" if gradient and len(mix) > 1 else ""
        return {"stopped": stopped, "note": note}
    finally:
        client.close()
        shutil.rmtree(folder, ignore_errors=True)


def seed_cli(bench: Bench, seed: int, mix: tuple[str, ...], marks: Checkpoints) -> dict[str, Any]:
    """The seed's loop (time_to_target.SeedCliBackend: the ffmpeg CLI per candidate and clip) under
    pycma, as the clip-level benchmark runs it, until the last checkpoint; its CMA-ES mean is kept."""
    import cma
    from time_to_target import SeedCliBackend, Setup, draw_seed

    from codecloop_server import corpus

    with server_client(bench.dataset)[0] as client:  # the dataset's shape and digest, as the servers see it
        name, folder = folder_dataset(bench.dataset) or (bench.dataset, None)
        info = {d.name: d for d in client.info().datasets}[name]
    shape = (int(info.clip_shape[0]), int(info.clip_shape[1]), int(info.clip_shape[2]))
    if folder is not None:
        from codecloop_server.folder_dataset import folder_dataset as load_folder

        ds = load_folder(name, folder, shape)
    else:
        ds = corpus.embedded_corpus(shape) if name == corpus.EMBEDDED_NAME else corpus.real_corpus(shape)
    assert ds.digest == info.digest, "seed-cli's copy of the dataset is the servers'"
    # as the run layer does: a train split smaller than --train-clips is taken whole
    setup = Setup(name, min(bench.train_clips, len(ds.splits["train"])), 0, bench.epsilon, bench.crf, bench.preset, bench.popsize, bench.sigma0, bench.target_tpr, 0)
    backend = SeedCliBackend(ds, setup)
    param = make(bench.param, shape)
    np.random.seed(seed)
    es = cma.CMAEvolutionStrategy(np.zeros(param.dim), bench.sigma0, {"popsize": bench.popsize, "seed": seed + 1, "verbose": -9})
    clock, n_encodes, g = 0.0, 0, 0
    try:
        while marks.pending:
            t0 = time.perf_counter()
            thetas = es.ask()
            values, n = backend(param(np.stack(thetas)), draw_seed(seed, g))
            es.tell(thetas, [-float(v) for v in values])
            clock += time.perf_counter() - t0
            n_encodes, g = n_encodes + n, g + 1
            if marks.due(clock, g):
                marks.record(clock, n_encodes, g, param(es.mean[None])[0])
    finally:
        backend.close()
    note = f"trains through libx264 CRF {bench.crf:g} (the seed's loop knows no channel)" if mix != DEFAULT_CHANNEL else ""
    return {"stopped": None, "note": note}


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(Fraction(x)) for x in text.split(",") if x)


def main(argv: list[str] | None = None) -> None:
    import ttt_report

    ap = argparse.ArgumentParser(prog="time_to_target.py --target deployment", description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default=",".join(ALL_BACKENDS), help="comma-separated: defaults (cma, raced: the CLI's defaults), no-racing "
                    "(cma, every candidate on every clip), any optimizer name of codecloop.backends (cma:diagonal, nevergrad:NGOpt: raced "
                    "as the CLI races them; torch-hybrid), seed-cli")  # fmt: skip
    ap.add_argument("--dataset", default="real", help="a dataset name, or a folder of videos (served by the private servers)")
    ap.add_argument("--channel", action="append", choices=sorted(MIXES), help="default: libx264 CRF 28; platform: social-crf28 + messaging (repeatable)")
    ap.add_argument("--minutes", type=float, default=4.0, help="wall budget per run (the last checkpoint)")
    ap.add_argument("--checkpoints", default="1,2,4", help="minutes, comma-separated; those past --minutes are dropped, --minutes is added")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epsilon", default="2/255")
    ap.add_argument("--train-clips", type=int, default=32)
    ap.add_argument("--popsize", type=int, default=16)
    ap.add_argument("--sigma0", type=float, default=2.0)
    ap.add_argument("--param", default="lowres:7x7:rgb:t=all")
    ap.add_argument("--crf", type=float, default=28.0, help="the default mix's training codec (and seed-cli's)")
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--budget", type=int, default=3200, help="evaluations per run (the run layer's budget; nevergrad's optimizers need one): "
                    "more than the wall budget allows")  # fmt: skip
    ap.add_argument("--target-tpr", type=float, default=0.95)
    ap.add_argument("--stop-at-target", action="store_true", help="end each run at its first checkpoint that meets the target "
                    "(medians of time to target over many runs, cheaply; the rows then stop there)")  # fmt: skip
    ap.add_argument("--fpr", type=float, default=1e-3)
    ap.add_argument("--video", action="append", default=[], help="test video(s) to cut into --segments (default: bikes.mp4, held out of the real corpus)")
    ap.add_argument("--segments", type=int, default=5)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--generated", type=int, default=6)
    ap.add_argument("--zoom", type=int, default=2)
    ap.add_argument("--out", default="runs/ttt-deployment")
    ap.add_argument("--quick", action="store_true", help="seed 0, 1 minute, defaults + seed-cli, 8 training clips, 3 test videos")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.minutes, args.checkpoints, args.backends = "0", 1.0, "0.5", "defaults,seed-cli"
        args.train_clips, args.segments, args.generated = 8, 2, 1
    names = [b for b in args.backends.split(",") if b]
    for name in names:
        if name != "seed-cli" and name not in ALIASES:
            backends.require(name)  # an unknown name fails here, before any server starts
    if "seed-cli" in names and shutil.which("ffmpeg") is None:
        raise SystemExit("seed-cli needs the ffmpeg CLI, or leave it out of --backends")
    checkpoints = tuple(sorted({m * 60 for m in _floats(args.checkpoints) if 0 < m < args.minutes} | {args.minutes * 60}))
    bench = Bench(args.dataset, float(Fraction(args.epsilon)), args.train_clips, args.popsize, args.sigma0, args.param, args.crf, args.preset,
                  checkpoints, args.target_tpr, args.budget, args.stop_at_target)  # fmt: skip
    out = Path(args.out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    if not args.video:
        from codecloop_server.corpus import real_video_dir

        args.video = [str(real_video_dir() / "bikes.mp4")]
    videos = make_test_videos(out / "videos", [Path(v) for v in args.video], args.segments, args.frames, args.generated, args.zoom)
    mixes = args.channel or ["default"]
    setup = asdict(bench) | {"fpr": args.fpr, "videos": len(videos), "seeds": args.seeds, "backends": names, "mixes": mixes}
    rows = []
    for mix in mixes:
        check = DeploymentCheck(videos, MIXES[mix], out / "videos" / mix, args.fpr)
        for seed in (int(s) for s in args.seeds.split(",")):
            for name in names:
                marks = Checkpoints(bench, check, f"{mix} {name} seed {seed}")
                extra = seed_cli(bench, seed, MIXES[mix], marks) if name == "seed-cli" else run_layer(bench, name, seed, MIXES[mix], marks)
                row = ttt_report.summarize_row({"mix": mix, "channels": list(MIXES[mix]), "backend": name, "seed": seed, **extra, "checkpoints": marks.rows})
                rows.append(row)
                print(f"{mix} {name} seed {seed}: reached={row['reached']} seconds={row['seconds_to_target']} encodes={row['encodes_to_target']} "
                      f"worst-channel TPR by checkpoint {[c['worst_tpr'] for c in row['checkpoints']]}", flush=True)  # fmt: skip
                (out / "ttt.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1, default=str))  # every row as it comes
    table = ttt_report.markdown(rows, setup)
    (out / "ttt.md").write_text("\n".join(table) + "\n")
    ttt_report.plot(rows, setup, out / "ttt.png")
    print("\n".join(table))
    print(f"\nwrote {out / 'ttt.json'}, {out / 'ttt.md'}, {out / 'ttt.png'}")
