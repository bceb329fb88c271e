"""``codecloop`` command line: ``evaluate``, ``optimize``, ``diagnose``, ``info``, ``health``, ``mark``, ``detect``;
``serve`` and ``channel`` run the server's own CLIs."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import NoReturn

import numpy as np

from codecloop import detect, mark, userinput
from codecloop.objectives import NAMES
from codecloop.types import Racing
from codecloop.units import fraction_label
from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopError, CodecLoopValueError


def fraction(low: float, high: float, low_open: bool, high_open: bool, levels_hint: bool = False):
    """An argparse type: '4/255', '1/64' or '0.0157' -> float, checked to lie in the interval from
    ``low`` to ``high`` (open at an end when ``*_open``); argparse's error names the flag and the
    range. ``levels_hint``: a whole number of uint8 levels (1 < n <= 255) gets "write n/255"."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction like 1/64") from None
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            shown = text if text.strip() == f"{value:g}" else f"{text} = {value:g}"
            hint = f"; write {text}/255 for {text} levels of 255" if levels_hint and value.is_integer() and 1 < value <= 255 else ""
            raise argparse.ArgumentTypeError(f"{shown} is outside the allowed range {interval}{hint}")
        return value

    return parse


_CHANNEL_HELP = (
    "repeatable: a channel the clips go through, a server preset (social, streaming, messaging, reupload) or steps "
    "like 'resize:0.5:bicubic,libx264:crf=23' (resize:S|WxH[:filter], crop:X:Y:W:H, fps:N, <codec>[:crf=|qp=|bitrate=][:preset=]); "
    "with --channel and no --crf only the channels are used"
)


_epsilon = fraction(0.0, 1.0, low_open=True, high_open=False, levels_hint=True)
_target_fpr = fraction(0.0, 1.0, low_open=False, high_open=True)
_quantile = fraction(0.0, 1.0, low_open=True, high_open=True)
_null_fpr = fraction(1e-12, 0.5, low_open=False, high_open=False)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line (``codecloop optimize: error: argument --epsilon: ...``), exit
    code 2, without the usage block argparse prints first (``--help`` shows it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help for usage)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, unless its help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".strip()


def _fill_help(parser: argparse.ArgumentParser) -> None:
    """Options without help text get "default: ..." as their help (argparse prints no defaults for them)."""
    for action in parser._actions:
        if action.help is None and action.option_strings:
            action.help = "default: %(default)s"


def _env(flag: str, default: str | None) -> str | None:
    """A flag's default from the environment: --target <- CODECLOOP_TARGET (`codecloop health` in containers)."""
    return os.environ.get("CODECLOOP_" + flag.upper().replace("-", "_"), default)


def random_signature(kind: str, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A random +-1 signature (1, H, W, 3): ``pixel`` i.i.d. or ``blockN`` constant N x N blocks."""
    _, h, w = shape
    block = 1 if kind == "pixel" else int(kind.removeprefix("block"))
    rng = np.random.default_rng(seed)
    small = rng.choice([-1.0, 1.0], size=(1, -(-h // block), -(-w // block), 3)).astype(np.float32)
    return np.repeat(np.repeat(small, block, axis=1), block, axis=2)[:, :h, :w]


def _client(args: argparse.Namespace):
    """The checked Client of the server this command uses, named on stderr (codecloop.serverpick):
    ``--target``, ``--local``, a ``--dataset`` folder (a private server), else the server on
    127.0.0.1:50051 when it is a SERVING codecloop server, else a private one."""
    from codecloop import serverpick
    from codecloop.local import folder_dataset

    if getattr(args, "dataset", None):
        userinput.check_dataset_arg(args.dataset)
    folder = folder_dataset(args.dataset) if getattr(args, "dataset", None) else None
    if args.target is not None and folder is not None and folder[0] != args.dataset:
        raise CodecLoopValueError(
            f"dataset: {args.dataset!r} is a folder; a server at --target serves its own datasets "
            "(codecloop serve --dataset NAME=FOLDER there, then --dataset NAME), or drop --target to serve the folder locally"
        )
    if args.target is None and folder is not None:
        args.dataset = folder[0]
    strict = ("--strict-datasets",) if getattr(args, "strict_datasets", False) else ()
    return serverpick.pick(args.target, getattr(args, "local", False), getattr(args, "wait", 0.0), folder, strict)


def _health(args: argparse.Namespace) -> int:
    """Exit 0 when the server reports SERVING (the container HEALTHCHECK and exec probes use this)."""
    from codecloop import serverpick

    print(f"codecloop: server {args.target}", file=sys.stderr, flush=True)
    try:
        with serverpick.connect(args.target) as client:
            status = client.health(args.service, timeout=args.timeout)
    except Exception as err:  # unreachable, refused, TLS failure: all mean "not healthy"
        print(f"codecloop health: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


_TARGET_HELP = (
    "server address(es), host:port[,host:port...], checked (health SERVING, a codecloop server) or the command fails; "
    "default: the server on 127.0.0.1:50051 if it passes that check (or --wait is given), else a private local server"
)
_LOCAL_HELP = "use a private local server for this command, whatever listens on 127.0.0.1:50051"


def _server_flags(parser: argparse.ArgumentParser) -> None:
    """--target or --local (one of them at most)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--target", default=None, help=_TARGET_HELP)
    group.add_argument("--local", action="store_true", help=_LOCAL_HELP)
    parser.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for the server to become SERVING")
    parser.add_argument("--strict-datasets", action="store_true",
                        help="a private server refuses a --dataset folder file that gives no clip, instead of skipping it with a warning")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="codecloop", description="Real-codec (libx264) evaluation of video signatures.")
    # every subcommand's --help shows the defaults
    sub = p.add_subparsers(dest="command", required=True, parser_class=functools.partial(_Parser, formatter_class=_HelpFormatter))

    # `codecloop serve` is the server's own CLI (codecloop_server.cli), run as `python -m codecloop_server`
    sub.add_parser("serve", help="run the gRPC server (python -m codecloop_server; its --help lists the flags)", add_help=False)
    sub.add_parser("channel", help="run a server channel preset on a video file at its own size (INPUT OUTPUT --channel NAME)", add_help=False)
    e = sub.add_parser("evaluate", help="evaluate a signature and print the detection table")
    _server_flags(e)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--signature", help=".npy of (T, H, W, 3) or a population (P, T, H, W, 3), values in [-1, 1]")
    src.add_argument("--random", choices=["pixel", "block4", "block8", "block16"], help="a random +-1 signature")
    e.add_argument("--seed", type=int, default=0, help="seed of --random")
    e.add_argument("--epsilon", type=_epsilon, default=fraction_label(defaults.EPSILON))
    e.add_argument("--crf", type=float, action="append", help=f"repeat for several codec settings (default {defaults.CRF:g})")
    e.add_argument("--channel", action="append", default=[], help=_CHANNEL_HELP)
    e.add_argument("--preset", default=defaults.PRESET)
    e.add_argument("--gop", type=int, default=defaults.GOP)
    e.add_argument("--fps", type=int, default=defaults.FPS)
    e.add_argument("--scorer", default=defaults.SCORER)
    e.add_argument("--dataset", default=defaults.DATASET, help="a dataset the server serves, or (no --target) a folder of videos to serve")
    e.add_argument("--split", default=defaults.SPLIT)
    e.add_argument("--clips", type=int, default=defaults.NUM_CLIPS, help=f"clips drawn from --split; 0 = all of them (default {defaults.NUM_CLIPS})")
    e.add_argument("--clip-seed", type=int, default=defaults.SEED)
    rule = e.add_mutually_exclusive_group()
    rule.add_argument("--threshold", type=float, help="explicit decision threshold (instead of --target-fpr)")
    rule.add_argument("--target-fpr", type=_target_fpr, default=fraction_label(defaults.TARGET_FPR), help="calibrate the threshold on the clean scores to this FPR")
    e.add_argument("--fpr", type=_null_fpr, action="append", help="an operating point of the null model (repeat; default 1e-2 1e-3 1e-4 1e-6): TPR at p < FPR")
    e.add_argument("--no-null", action="store_true", help="skip the null model (per-clip p-values and TPR at fixed FPRs)")
    e.add_argument("--per-clip", action="store_true", help="print every clip's scores")
    e.add_argument("--json", help="also write the full result as JSON to this path")

    o = sub.add_parser(
        "optimize", help="optimize a signature on the real codec (pycma / nevergrad / torch)",
        description="Search a signature on the real codec; the kept one is chosen on the validation split and "
        "reported on train / validation / held-out clips at --target-fpr (summary.json, plots).",
    )  # fmt: skip
    _server_flags(o)
    o.add_argument(
        "--optimizer", default="cma",
        help="cma (full covariance), cma:diagonal (separable CMA-ES), nevergrad:<name> (NGOpt, CMA, TwoPointsDE, PSO, ...), torch-ste, torch-hybrid, proxy:tanh|soft|ste",
    )  # fmt: skip
    o.add_argument("--param", default="lowres:7x7:rgb:t=all", help="lowres:HxW[:rgb][:t=N|t=all], tiled:HxW[:rgb], dct:B:K[:per_block][:rgb]")
    o.add_argument("--epsilon", type=_epsilon, default=fraction_label(defaults.EPSILON), help="L-inf budget, a number or a fraction")
    o.add_argument("--crf", type=float, action="append", help=f"repeat for several codec settings; the worst decides (default {defaults.CRF:g})")
    o.add_argument("--channel", action="append", default=[], help=_CHANNEL_HELP + "; torch modes: one channel")
    o.add_argument("--preset", default=defaults.PRESET)
    o.add_argument("--scorer", default=defaults.SCORER)
    o.add_argument("--objective", default="centred-separation", choices=NAMES, help="see codecloop.objectives")
    o.add_argument("--target-fpr", type=_target_fpr, default=fraction_label(defaults.TARGET_FPR), help="deployed false-positive rate: objective and reports")
    o.add_argument("--margin-quantile", type=_quantile, default="0.1", help="margin objectives: low quantile of poisoned scores")
    o.add_argument("--centre-weight", type=float, default=1.0, help="centred-*: weight of |mean clean score|")
    o.add_argument("--dataset", default=defaults.DATASET, help="a dataset the server serves, or (no --target) a folder of videos to serve")
    o.add_argument("--train-clips", type=int, default=defaults.NUM_CLIPS, help="training clips per generation; 0 or more than the split holds = all of it")
    o.add_argument("--fresh-clips", action=argparse.BooleanOptionalAction, default=True,
                   help="draw a different seeded subset of the train split each generation")  # fmt: skip
    o.add_argument("--validation-split", default="validation", help="split the kept signature is chosen on; 'none': by training objective")
    o.add_argument("--validation-clips", type=int, default=0, help="0 = the whole validation split; at most its size")
    o.add_argument("--validate-every", type=int, default=None,
                   help="validation period: generations (default 4), torch modes: steps (default 10)")  # fmt: skip
    o.add_argument("--holdout-clips", type=int, default=0, help="0 = the whole holdout split; at most its size")
    o.add_argument("--popsize", type=int, default=16)
    o.add_argument("--racing", nargs="?", const="", default=None, metavar="SPEC",
                   help="race each generation (successive halving): SPEC = first_clips=N,eta=N,finalists=N, any subset; "
                   "bare --racing: the server's defaults (4, 2, 1)")  # fmt: skip
    o.add_argument("--budget", type=int, default=None, help="evaluations (candidates); default: no limit but --max-minutes")
    o.add_argument("--max-minutes", type=float, default=9.0, help="wall-clock limit, final validation and held-out report included")
    o.add_argument("--patience", type=int, default=0, help="stop after this many generations without a better kept signature (0: never)")
    o.add_argument("--sigma0", type=float, default=2.0, help="initial step size (cma) / mutation sigma (nevergrad)")
    o.add_argument("--seed", type=int, default=0, help="optimizer and training-clip draws")
    o.add_argument("--out", required=True, help="run folder; one holding a run is resumed if its settings are the same (else refused)")
    o.add_argument("--overwrite", action="store_true", help="start afresh in --out, removing a run already there")
    o.add_argument("--no-progress", action="store_true")
    o.add_argument("--steps", type=int, default=60, help="torch modes: gradient steps")
    o.add_argument("--lr", type=float, default=0.1, help="torch modes: Adam learning rate")
    o.add_argument("--frames", type=int, default=16, help="torch modes: distinct signature frames (1 = static)")
    o.add_argument("--block", type=int, default=1, help="torch modes: spatial block size (1 = full resolution)")

    d = sub.add_parser("diagnose", help="proxy (each rounding) vs real codec statistics for a signature")
    _server_flags(d)
    d.add_argument("--signature", required=True, help=".npy (T, H, W, 3) in [-1, 1]")
    d.add_argument("--epsilon", type=_epsilon, default=fraction_label(defaults.EPSILON))
    d.add_argument("--crf", type=float, default=defaults.CRF)
    d.add_argument("--preset", default=defaults.PRESET)
    d.add_argument("--clips", type=int, default=defaults.NUM_CLIPS, help=f"clips drawn from --split; 0 = all of them (default {defaults.NUM_CLIPS})")
    d.add_argument("--split", default=defaults.SPLIT)
    d.add_argument("--random", type=int, default=20, help="random signatures for the rank correlation")
    d.add_argument("--qp-offset", type=float, default=5.0)
    d.add_argument("--plot", default="diagnose.png")

    h = sub.add_parser("health", help="exit 0 when the server's gRPC health status is SERVING")
    h.add_argument("--target", default=_env("target", "127.0.0.1:" + (_env("port", "50051") or "50051")))
    h.add_argument("--service", default="", help="health service name ('' = the whole server)")
    h.add_argument("--timeout", type=float, default=5.0)

    mark.add_arguments(sub.add_parser("mark", help="add a signature to a video file at its own size, frame rate and length"))
    detect.add_arguments(sub.add_parser("detect", help="test video files for a signature: score, p-value and decision per video"))

    i = sub.add_parser("info", help="print the server's versions, datasets, scorers and limits")
    _server_flags(i)
    i.add_argument("--dataset", default=None, help="list this dataset (a name, or a folder to serve privately): each file -> split, clips, skipped files")
    for sp in sub.choices.values():
        _fill_help(sp)
    return p


def _evaluate(args: argparse.Namespace) -> int:
    from codecloop import Channel, Codec, DatasetCarriers

    sig = userinput.load_signature(args.signature) if args.signature else None  # before a server starts
    with _client(args) as client:
        dataset = userinput.dataset_info(client.info(), args.dataset)
        for skipped in dataset.skipped:
            print(f"codecloop: dataset {dataset.name}: skipped {skipped.name}: {skipped.reason}", file=sys.stderr, flush=True)
        clips = userinput.clip_count(dataset, args.split, args.clips)
        carriers = DatasetCarriers(dataset=args.dataset, split=args.split, num_clips=clips, seed=args.clip_seed)
        if sig is not None:
            population = sig[None] if sig.ndim == 4 else sig
        else:
            population = random_signature(args.random, tuple(dataset.clip_shape), args.seed)[None]
        codecs = [Codec(crf=c, preset=args.preset, gop=args.gop, fps=args.fps) for c in _crfs(args)]
        offered = any(s.name == args.scorer and s.null_model for s in client.info().scorers)
        if args.fpr and not offered:
            print(f"codecloop evaluate: --fpr: scorer {args.scorer!r} has no null model (detectors); drop --fpr", file=sys.stderr)
            return 2
        result = client.evaluate(
            population,
            epsilon=args.epsilon,
            carriers=carriers,
            codecs=codecs,
            channels=[Channel.parse(c) for c in args.channel],
            scorer=args.scorer,
            threshold=args.threshold,
            target_fpr=None if args.threshold is not None else args.target_fpr,
            per_clip_scores=args.per_clip or bool(args.json),
            null_model=False if args.no_null or not offered else (tuple(args.fpr) if args.fpr else True),
        )
    print(result.table())
    if args.per_clip:
        for i, cand in enumerate(result.candidates):
            for s in cand.codecs:
                print(f"candidate {i} {s.label()} clean:    " + " ".join(f"{v:.3f}" for v in s.clean_scores))
                print(f"candidate {i} {s.label()} poisoned: " + " ".join(f"{v:.3f}" for v in s.poisoned_scores))
                if s.poisoned_p_values is not None and s.clean_p_values is not None:
                    print(f"candidate {i} {s.label()} clean p:    " + " ".join(f"{v:.1e}" for v in s.clean_p_values))
                    print(f"candidate {i} {s.label()} poisoned p: " + " ".join(f"{v:.1e}" for v in s.poisoned_p_values))
    if args.json:
        from codecloop import jsonutil

        jsonutil.write(args.json, result)
    return 0


def _crfs(args: argparse.Namespace) -> list[float]:
    """The --crf values; none given: the default CRF, unless --channel gave channels (then only those)."""
    return args.crf or ([] if args.channel else [defaults.CRF])


def _split_size(client, dataset: str, split: str) -> int:
    """Clips in ``split`` of ``dataset`` on the server (CodecLoopValueError naming what is missing)."""
    return int(userinput.clip_count(userinput.dataset_info(client.info(), dataset), split, 0))


def _train(args: argparse.Namespace, client) -> int:
    from codecloop import Channel, Codec, DatasetCarriers
    from codecloop.train import TrainConfig, train_signature

    if len(args.channel) > 1 or (args.channel and args.crf):
        raise CodecLoopValueError("channel: torch modes train through one codec setting (--crf) or one channel (--channel)")
    channel = Channel.parse(args.channel[0]) if args.channel else None
    holdout_clips = args.holdout_clips or _split_size(client, args.dataset, "holdout")
    train_clips = min(args.train_clips, _split_size(client, args.dataset, "train"))  # an upper bound, as for optimize
    config = TrainConfig(
        mode=args.optimizer,
        epsilon=args.epsilon,
        codec=Codec(crf=(args.crf or [defaults.CRF])[0], preset=args.preset),
        channel=channel,
        train=DatasetCarriers(args.dataset, "train", train_clips),
        holdout=DatasetCarriers(args.dataset, "holdout", holdout_clips),
        holdout_fpr=args.target_fpr,
        steps=args.steps,
        lr=args.lr,
        validate_every=args.validate_every or 10,
        frames=args.frames,
        block=args.block,
        seed=args.seed,
    )

    def resumed(note: str) -> None:
        print(f"codecloop: {note}; --steps counts the whole run, over every resume", file=sys.stderr, flush=True)

    summary = train_signature(client, config, args.out, progress=not args.no_progress, overwrite=args.overwrite, on_resume=resumed)
    h = summary["holdout"]
    print(json.dumps({"elapsed_s": summary["elapsed_s"], "final": summary["final"]}))
    print(
        f"held-out {h['codec']}: clean {h['clean_mean']:.4f}±{h['clean_std']:.4f} poisoned {h['poisoned_mean']:.4f}"
        f"±{h['poisoned_std']:.4f} sep {h['separation']:.4f} TPR {h['tpr']:.0%} FPR {h['fpr']:.0%} AUC {h['auc']:.3f}"
    )
    print(f"run folder: {args.out} (log.jsonl, best.npy, summary.json, *.png)")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from codecloop import Codec, DatasetCarriers
    from codecloop.diagnose import diagnose, table

    sig = userinput.load_signature(args.signature, population=False)
    with _client(args) as client:
        clips = userinput.clip_count(userinput.dataset_info(client.info(), defaults.DATASET), args.split, args.clips)
        rows, rho = diagnose(
            client,
            sig,
            epsilon=args.epsilon,
            codec=Codec(crf=args.crf, preset=args.preset),
            carriers=DatasetCarriers(split=args.split, num_clips=clips),
            qp_offset=args.qp_offset,
            random=args.random,
            plot=args.plot,
        )
    print(table(rows, rho))
    print(f"plot: {args.plot}")
    return 0


def _racing(spec: str) -> Racing:
    """``first_clips=4,eta=2,finalists=2`` (any subset; empty: the server's defaults) -> Racing."""
    fields: dict[str, int] = {}
    for part in filter(None, spec.split(",")):
        name, _, value = part.partition("=")
        if name not in ("first_clips", "eta", "finalists") or not value.isdigit():
            raise CodecLoopValueError(f"--racing: {part!r}; use first_clips=N, eta=N, finalists=N separated by commas")
        fields[name] = int(value)
    return Racing(**fields)


def _optimize(args: argparse.Namespace) -> int:
    from codecloop import Channel, Codec, DatasetCarriers, datasetview
    from codecloop.objectives import Objective
    from codecloop.optimize import REPORT_OVERHEAD_S, Run, RunConfig
    from codecloop.params import make

    started = time.monotonic()  # --max-minutes counts from here: a local server's start-up is in it
    if args.budget is not None and args.budget < args.popsize:
        raise CodecLoopValueError(f"--budget: {args.budget} evaluations are fewer than one generation (--popsize {args.popsize})")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CodecLoopValueError(f"--out: {args.out} is a file, not a run folder")
    with _client(args) as client:
        if args.optimizer.startswith(("torch-", "proxy:")):
            return _train(args, client)
        dataset = userinput.dataset_info(client.info(), args.dataset)
        shape = tuple(dataset.clip_shape)
        for line in datasetview.split_lines(dataset):  # the split this run rests on, visible whenever it changes
            print(f"codecloop: {line}", file=sys.stderr, flush=True)
        max_seconds = args.max_minutes * 60 - (time.monotonic() - started)
        if max_seconds <= REPORT_OVERHEAD_S:
            raise CodecLoopValueError(
                f"--max-minutes: {args.max_minutes:g} ({args.max_minutes * 60:.0f} s) leaves {max_seconds:.0f} s after the server's "
                f"start-up, no time for one generation and the final report (about {REPORT_OVERHEAD_S:.0f} s); give more"
            )
        config = RunConfig(
            optimizer=args.optimizer,
            epsilon=args.epsilon,
            codecs=tuple(Codec(crf=c, preset=args.preset) for c in _crfs(args)),
            channels=tuple(Channel.parse(c) for c in args.channel),
            scorer=args.scorer,
            objective=Objective(args.objective, args.target_fpr, args.margin_quantile, args.centre_weight),
            train=DatasetCarriers(args.dataset, "train", args.train_clips),
            fresh_clips=args.fresh_clips,
            validation=None if args.validation_split == "none" else DatasetCarriers(args.dataset, args.validation_split, args.validation_clips),
            validate_every=args.validate_every or 4,
            holdout=DatasetCarriers(args.dataset, "holdout", args.holdout_clips),
            popsize=args.popsize,
            budget=args.budget,
            max_seconds=max_seconds,
            patience=args.patience,
            sigma0=args.sigma0,
            seed=args.seed,
            racing=None if args.racing is None else _racing(args.racing),
        )
        run = Run(client, make(args.param, shape), config, args.out, overwrite=args.overwrite)
        if run.resumed:
            print(f"codecloop: {run.resume_note()}; --max-minutes and --budget count the whole run, over every resume",
                  file=sys.stderr, flush=True)  # fmt: skip
        summary = run.run(progress=not args.no_progress)
    sel = summary["selected"]
    print(f"{summary['generations']} generations, {summary['evaluations']} evaluations, {summary['elapsed_s']} s; "
          f"kept: generation {sel['generation']} {sel['candidate']} by {sel['by']}")  # fmt: skip
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
    print(f"run folder: {args.out} (log.jsonl, checkpoint.pkl, best.npy, summary.json, signature.png, frames.png, *.png)")
    return 0


def _db(value: float | None) -> str:
    """A PSNR in dB; None (identical images) is infinite."""
    return "inf dB" if value is None else f"{value:.1f} dB"


def _info(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from codecloop import datasetview

    with _client(args) as client:
        info = client.info()
    if args.dataset:
        print("\n".join(datasetview.lines(userinput.dataset_info(info, args.dataset))))
        return 0
    out = MessageToDict(info.message)
    for d in out.get("datasets", ()):
        d["clipShape"] = [int(x) for x in d.get("clipShape", ())]  # int64 fields are strings in proto JSON
    print(json.dumps(out, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # the server's CLI, in its own process image: the SDK never imports the server
        os.execv(sys.executable, [sys.executable, "-m", "codecloop_server", *argv[1:]])
    if argv[:1] == ["channel"]:  # a server channel preset on a file (codecloop_server.file_channel), likewise
        os.execv(sys.executable, [sys.executable, "-m", "codecloop_server.file_channel", *argv[1:]])
    args = build_parser().parse_args(argv)

    try:
        commands = {"evaluate": _evaluate, "optimize": _optimize, "diagnose": _diagnose, "info": _info, "health": _health, "mark": mark.run,
                    "detect": detect.run}
        return commands[args.command](args)
    except CodecLoopError as err:
        print(f"codecloop: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the with-blocks above have closed clients and stopped a local server
        print("codecloop: interrupted", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # exit now: an RPC interrupted mid-call can leave gRPC threads that hold up interpreter
        # shutdown; a private server still running would stop itself (serve --exit-with-parent)
        os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
