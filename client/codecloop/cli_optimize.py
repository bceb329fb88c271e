"""``codecloop optimize``: its flags, the run it starts (any back-end of :mod:`codecloop.backends`,
one run layer: :mod:`codecloop.run`) and the report it prints."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from codecloop import backends, cli_epsilon, userinput
from codecloop.cliflags import CHANNEL_HELP, connect, crfs, epsilon, quantile, server_flags, target_fpr
from codecloop.objectives import COUNTS, FROM_MEANS, NAMES
from codecloop.options import EvaluateOptions
from codecloop.types import Racing
from codecloop.units import fraction_label
from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopValueError

GRADIENT_PREFIXES = ("torch-", "proxy:")  # the gradient back-ends' names (codecloop.gradient)


def add_arguments(sub: Any) -> None:
    """The ``optimize`` subcommand and its flags on ``sub`` (argparse's subparsers)."""
    o = sub.add_parser(
        "optimize", help="optimize a signature on the real codec (pycma / nevergrad / torch)",
        description="Search a signature on the real codec; the kept one is chosen on the validation split and "
        "reported on train / validation / held-out clips at --target-fpr (summary.json, plots).",
    )  # fmt: skip
    server_flags(o)
    o.add_argument("--optimizer", default="cma", metavar="NAME",
                   help="a registered back-end (codecloop.backends): " + backends.describe())  # fmt: skip
    o.add_argument("--param", default="lowres:7x7:rgb:t=all", help="lowres:HxW[:rgb][:t=N|t=all], tiled:HxW[:rgb], dct:B:K[:per_block][:rgb]")
    o.add_argument("--epsilon", type=epsilon, default=fraction_label(defaults.EPSILON), help="L-inf budget, a number or a fraction")
    o.add_argument("--crf", type=float, action="append", help=f"repeat for several codec settings; the worst decides (default {defaults.CRF:g})")
    o.add_argument("--channel", action="append", default=[], help=CHANNEL_HELP + "; gradient back-ends: one channel")
    o.add_argument("--preset", default=defaults.PRESET)
    o.add_argument("--scorer", default=defaults.SCORER)
    o.add_argument("--objective", default="centred-separation", choices=NAMES, help="see codecloop.objectives")
    o.add_argument("--target-fpr", type=target_fpr, default=fraction_label(defaults.TARGET_FPR), help="deployed false-positive rate: objective and reports")
    o.add_argument("--margin-quantile", type=quantile, default="0.1", help="margin objectives: low quantile of poisoned scores")
    o.add_argument("--centre-weight", type=float, default=1.0, help="centred-*: weight of |mean clean score|")
    o.add_argument("--dataset", default=defaults.DATASET, help="a dataset the server serves, or (no --target) a folder of videos to serve")
    o.add_argument("--train-clips", type=int, default=defaults.NUM_CLIPS, help="training clips per generation; 0 or more than the split holds = all of it")
    o.add_argument("--fresh-clips", action=argparse.BooleanOptionalAction, default=True,
                   help="draw a different seeded subset of the train split each generation")  # fmt: skip
    o.add_argument("--validation-split", default="validation", help="split the kept signature is chosen on; 'none': by training objective")
    o.add_argument("--validation-clips", type=int, default=0, help="0 = the whole validation split; at most its size")
    o.add_argument("--validate-every", type=int, default=None,
                   help="validation period in generations (default 4; gradient back-ends: steps, default 10)")  # fmt: skip
    o.add_argument("--holdout-clips", type=int, default=0, help="0 = the whole holdout split; at most its size")
    o.add_argument("--popsize", type=int, default=16)
    race = o.add_mutually_exclusive_group()
    race.add_argument("--racing", nargs="?", const="", default=None, metavar="SPEC",
                      help="race each generation (successive halving): SPEC = first_clips=N,eta=N,finalists=N, any subset; "
                      f"bare --racing: the server's defaults ({defaults.RACE_FIRST_CLIPS}, {defaults.RACE_ETA}, {defaults.RACE_FINALISTS}). "
                      "Default: on with those defaults wherever a race can run "
                      "(population back-ends, objective separation / centred-separation, the population in one request)")  # fmt: skip
    race.add_argument("--no-racing", action="store_true", help="every candidate on every training clip (no race)")
    o.add_argument("--lead-channel", type=int, default=None, metavar="K",
                   help="with several --crf / --channel: every candidate through the hardest one only, the best K through all "
                   "(the worst decides for them); default: every candidate through all")  # fmt: skip
    o.add_argument("--budget", type=int, default=None, help="evaluations (candidates); default: no limit but --max-minutes")
    o.add_argument("--max-minutes", type=float, default=9.0, help="wall-clock limit, final validation and held-out report included")
    o.add_argument("--patience", type=int, default=0, help="stop after this many generations without a better kept signature (0: never)")
    o.add_argument("--sigma0", type=float, default=2.0, help="initial step size (cma) / mutation sigma (nevergrad)")
    o.add_argument("--seed", type=int, default=0, help="optimizer and training-clip draws")
    o.add_argument("--out", required=True, help="run folder; one holding a run is resumed if its settings are the same (else refused)")
    o.add_argument("--overwrite", action="store_true", help="start afresh in --out, removing a run already there")
    o.add_argument("--no-progress", action="store_true")
    o.add_argument("--steps", type=int, default=60, help="gradient back-ends: Adam steps (the run has steps + 1 generations: one candidate each)")
    o.add_argument("--lr", type=float, default=0.1, help="gradient back-ends: Adam learning rate")
    o.add_argument("--frames", type=int, default=16, help="gradient back-ends: distinct signature frames (1 = static)")
    o.add_argument("--block", type=int, default=1, help="gradient back-ends: spatial block size (1 = full resolution)")
    cli_epsilon.add_search_flags(o, optimize=True)


def racing(spec: str) -> Racing:
    """``first_clips=4,eta=2,finalists=2`` (any subset; empty: the server's defaults) -> Racing, the
    ranges checked as the server checks them (first_clips at most the clips is checked there)."""
    fields: dict[str, int] = {}
    for part in filter(None, spec.split(",")):
        name, _, value = part.partition("=")
        if name not in ("first_clips", "eta", "finalists") or not value.isdigit():
            raise CodecLoopValueError(f"--racing: {part!r}; use first_clips=N, eta=N, finalists=N separated by commas")
        fields[name] = int(value)
    if not 2 <= fields.get("eta", 2) <= 16:
        raise CodecLoopValueError(f"--racing: eta={fields['eta']} is outside the allowed range [2, 16]")
    for name in ("first_clips", "finalists"):
        if fields.get(name, 1) < 1:
            raise CodecLoopValueError(f"--racing: {name}={fields[name]} must be >= 1")
    return Racing(**fields)


def check_racing_flags(args: argparse.Namespace, gradient: bool) -> Racing | None:
    """``--racing`` parsed (None without it), and what it cannot be combined with refused, before a
    server starts or a folder is written."""
    if args.racing is None:
        return None
    race = racing(args.racing)
    if gradient:
        raise CodecLoopValueError(f"--racing: the gradient back-end {args.optimizer!r} evaluates one candidate per step; there is nothing to race")
    if args.objective not in FROM_MEANS:
        raise CodecLoopValueError(f"--racing: a race ranks by separation or centred-separation; --objective {args.objective!r} is neither")
    return race


def racing_choice(
    args: argparse.Namespace, gradient: bool, shape: tuple[int, int, int], max_message_bytes: int, train_clips: int | None = None,
) -> tuple[Racing | None, str]:
    """The run's race and the line that says so. ``--racing [SPEC]`` asks for one (refused where it
    cannot run), ``--no-racing`` for none; by default a race with the server's defaults wherever one
    can run, because it reached the same held-out targets in less time (docs/optimize.md, "Racing").
    ``shape``: the clips' (T, H, W); ``max_message_bytes``: the client's request limit;
    ``train_clips``: the training clips a generation gets (None: unknown, the server checks)."""
    if args.no_racing:
        return None, "racing off (--no-racing): every candidate on every training clip"
    asked = check_racing_flags(args, gradient)
    if args.racing is None and gradient:
        return None, ""  # one candidate per step: nothing to race, nothing to say
    if args.racing is None and args.objective not in FROM_MEANS:
        return None, f"racing off: --objective {args.objective} ranks by more than a mean (a race needs separation or centred-separation)"
    t, h, w = shape
    population_bytes = args.popsize * (t * h * w * 3 * 4 + 64)  # float32 candidates, as the run sends them
    too_big = population_bytes > max_message_bytes - (2 << 20)
    size = f"{args.popsize} candidates of {t}x{h}x{w} ({population_bytes >> 20} MiB) need more than one request (limit {max_message_bytes >> 20} MiB)"
    if asked is not None:
        if too_big:
            raise CodecLoopValueError(f"--racing: {size}, and a race needs the whole population in one; give a smaller --popsize or --no-racing")
        if train_clips is not None and asked.first_clips is not None and asked.first_clips > train_clips:
            raise CodecLoopValueError(f"--racing: first_clips={asked.first_clips} is more than the {train_clips} training clips a generation gets")
        return asked, f"racing on (--racing {args.racing or 'with the server defaults'})"
    if too_big:
        return None, f"racing off: {size}, and a race needs the whole population in one; --popsize smaller to race"
    return Racing(), (f"racing on (the default: successive halving, {defaults.RACE_FIRST_CLIPS} clips first, eta {defaults.RACE_ETA}, "
                      f"{defaults.RACE_FINALISTS} finalist); --no-racing to score every candidate on every clip")  # fmt: skip


def _gradient_param(args: argparse.Namespace, shape: tuple[int, int, int]) -> Any:
    """The gradient back-ends' signature: --frames distinct frames of --block x --block blocks, rgb."""
    from codecloop.params import LowRes

    if len(args.channel) > 1 or (args.channel and args.crf):
        raise CodecLoopValueError("channel: gradient back-ends train through one codec setting (--crf) or one channel (--channel)")
    t, h, w = shape
    if args.frames < 1 or args.block < 1 or t % args.frames or h % args.block or w % args.block:
        raise CodecLoopValueError(f"frames/block: {args.frames}/{args.block} must divide the clips' T/H, W = {t}/{h}, {w}")
    return LowRes(shape, (args.frames, h // args.block, w // args.block), "rgb")


def run(args: argparse.Namespace) -> int:
    """``codecloop optimize``: a run in ``--out`` (resumed when it holds one with the same settings),
    its report printed; 130 when Ctrl-C cut it short (the report then covers the last checkpoint)."""
    from codecloop import Channel, Codec, DatasetCarriers, datasetview
    from codecloop.objectives import Objective
    from codecloop.params import make
    from codecloop.run import REPORT_OVERHEAD_S, Run
    from codecloop.runconfig import GradientConfig, RunConfig

    started = time.monotonic()  # --max-minutes counts from here: a local server's start-up is in it
    backends.require(args.optimizer)  # before a server starts
    check_racing_flags(args, args.optimizer.startswith(GRADIENT_PREFIXES))
    if args.target_tpr is not None:
        cli_epsilon.check_range(args)
    gradient = args.optimizer.startswith(GRADIENT_PREFIXES)
    if not gradient and args.budget is not None and args.budget < args.popsize:
        raise CodecLoopValueError(f"--budget: {args.budget} evaluations are fewer than one generation (--popsize {args.popsize})")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CodecLoopValueError(f"--out: {args.out} is a file, not a run folder")
    with connect(args) as client:
        dataset = userinput.dataset_info(client.info(), args.dataset)
        shape = (int(dataset.clip_shape[0]), int(dataset.clip_shape[1]), int(dataset.clip_shape[2]))
        for line in datasetview.split_lines(dataset):  # the split this run rests on, visible whenever it changes
            print(f"codecloop: {line}", file=sys.stderr, flush=True)
        max_seconds = args.max_minutes * 60 - (time.monotonic() - started)
        if max_seconds <= REPORT_OVERHEAD_S:
            raise CodecLoopValueError(
                f"--max-minutes: {args.max_minutes:g} ({args.max_minutes * 60:.0f} s) leaves {max_seconds:.0f} s after the server's "
                f"start-up, no time for one generation and the final report (about {REPORT_OVERHEAD_S:.0f} s); give more"
            )
        param = _gradient_param(args, shape) if gradient else make(args.param, shape)
        split = dataset.split_clips.get("train", 0)
        per_generation = split if args.train_clips <= 0 else min(args.train_clips, split)
        race, race_line = racing_choice(args, gradient, shape, client.max_message_bytes, per_generation)
        config = RunConfig(
            optimizer=args.optimizer,
            epsilon=args.epsilon,
            codecs=tuple(Codec(crf=c, preset=args.preset) for c in crfs(args)),
            channels=tuple(Channel.parse(c) for c in args.channel),
            scorer=args.scorer,
            objective=Objective(args.objective, args.target_fpr, args.margin_quantile, args.centre_weight),
            train=DatasetCarriers(args.dataset, "train", args.train_clips),
            fresh_clips=args.fresh_clips,
            validation=None if args.validation_split == "none" else DatasetCarriers(args.dataset, args.validation_split, args.validation_clips),
            validate_every=args.validate_every or (10 if gradient else 4),
            holdout=DatasetCarriers(args.dataset, "holdout", args.holdout_clips),
            popsize=args.popsize,
            budget=args.steps + 1 if gradient else args.budget,  # a gradient generation: one candidate, one step
            max_seconds=max_seconds,
            patience=args.patience,
            sigma0=args.sigma0,
            seed=args.seed,
            racing=race,
            lead_channel=args.lead_channel,
            gradient=GradientConfig(lr=args.lr) if gradient else None,
        )
        run = Run(client, param, config, args.out, overwrite=args.overwrite)  # refuses other settings in --out, before anything is said
        if race_line:
            print(f"codecloop: {race_line}", file=sys.stderr, flush=True)
        if run.resumed:
            limits = "--steps and --max-minutes" if gradient else "--max-minutes and --budget"
            print(f"codecloop: {run.resume_note()}; {limits} count the whole run, over every resume", file=sys.stderr, flush=True)
        if args.target_tpr is not None and run.validation is None:
            raise CodecLoopValueError("--target-tpr: the ε search needs a validation split (not --validation-split none)")
        summary = run.run(progress=not args.no_progress)
        interrupted = (summary["stopped"] or {}).get("by") == "interrupt"
        print_summary(summary, args.out)
        if args.target_tpr is not None and not interrupted and run.validation is not None:
            import numpy as np

            options = EvaluateOptions(codecs=config.codecs, channels=config.channels, scorer=config.scorer)
            best = np.load(Path(args.out) / "best.npy")
            cli_epsilon.search(client, best, args, options, run.validation, run.holdout, args.target_fpr, args.out)
    return 130 if interrupted else 0


def print_summary(summary: dict[str, Any], folder: str) -> None:
    """The run's report on stdout: what was kept and why the run stopped, each split's statistics, fidelity."""
    sel, stopped = summary["selected"], summary["stopped"] or {}
    why = stopped.get("by", "-") + (f" ({', '.join(stopped['conditions'])})" if stopped.get("conditions") else "")
    print(f"{summary['generations']} generations, {summary['evaluations']} evaluations, {summary['elapsed_s']} s, stopped by {why}; "
          f"kept: generation {sel['generation']} {sel['candidate']} by {sel['by']}")  # fmt: skip
    tied = [c for c in stopped.get("conditions", ()) if c in ("tolflatfitness", "tolfun")]
    if tied and summary["objective"] in COUNTS:
        # pycma stops when the values tie (a whole generation, or the recent ones' range under 1e-11): a
        # count objective on few clips does that as soon as every candidate scores the same count, which
        # reads like a bug without this line
        counts = "clips" if summary["objective"] == "tpr" else "clean-poisoned clip pairs"
        print(f"  ({' / '.join(tied)}: the candidates' objective values tied; {summary['objective']} counts {counts}, and on "
              f"{summary['train']['clips_per_generation']} training clips every candidate had the same count. A continuous objective "
              "(centred-separation, the default) or more --train-clips would rank them.)")  # fmt: skip
    print(f"objective {summary['objective']}, statistics at FPR <= {fraction_label(summary['target_fpr'])}:")
    for split in ("train", "validation", "holdout"):
        h = summary[split]
        if h is None:
            print(f"{split:>10}: - ({summary['validation_note'] or 'not validated'})")
            continue
        psnr = "inf" if h["psnr_db"] is None else f"{h['psnr_db']:.1f}"
        ci = h.get("tpr_ci") or (0.0, 1.0)
        print(
            f"{split:>10} ({h['clips']} clips, {h['codec']}): objective {h['objective']:.4f} "
            f"TPR {h.get('true_positives', '?')}/{h.get('num_clips', '?')} = {h['tpr']:.0%} [{ci[0]:.0%}, {ci[1]:.0%}] "
            f"FPR {h.get('false_positives', '?')}/{h.get('num_clips', '?')} "
            f"clean {h['clean_mean']:.4f}±{h['clean_std']:.4f} poisoned {h['poisoned_mean']:.4f}±{h['poisoned_std']:.4f} "
            f"sep {h['separation']:.4f} AUC {h['auc']:.3f} p {h['p_value']:.2g} PSNR {psnr} dB"
        )
        for unit, key in (("clips", "tpr_at_fpr"), ("videos", "video_tpr_at_fpr")):
            points = [p for p in h.get(key) or [] if p["fpr"] == 1e-3]
            if points:
                p = points[0]
                print(f"{'':>12}null model, {unit}: TPR at p < 1e-3 {p['true_positives']}/{p['n']} "
                      f"[{p['tpr_ci'][0]:.0%}, {p['tpr_ci'][1]:.0%}], clean called marked {p['false_positives']}/{p['n']}")  # fmt: skip
    f = summary["fidelity"]
    if "note" in f:
        print(f"fidelity: {f['note']}")
    else:
        parts = [f"{name.replace('_', ' ')}: PSNR {_db(f[name]['psnr_db'])} SSIM {f[name]['ssim']:.4f}" for name in ("before_codec", "after_codec")]
        print(f"fidelity ({f['clips']} {f['split']} clips, {f['codec']}; marked vs clean; luma SSIM, 11x11 Gaussian): " + "; ".join(parts))
    print(f"run folder: {folder} (log.jsonl, checkpoint.pkl, best.npy, summary.json, signature.png, frames.png, *.png)")


def _db(value: float | None) -> str:
    """A PSNR in dB; None (identical images) is infinite."""
    return "inf dB" if value is None else f"{value:.1f} dB"
