"""``codecloop epsilon`` and ``codecloop optimize --target-tpr``: ε as an output (:mod:`codecloop.epsilon`).

The smallest ε at which a signature's worst channel reaches a target TPR at a target FPR (the
null model's calibrated p-values) is searched on one split (validation by default) and read on
another (holdout by default), with the TPR-against-ε chart per channel.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from codecloop import userinput
from codecloop.client import Client
from codecloop.cliflags import CHANNEL_HELP, connect, crfs, epsilon, fraction, server_flags
from codecloop.epsilon import UNITS, epsilon_report, summary_lines
from codecloop.options import EvaluateOptions
from codecloop.types import Channel, Codec, DatasetCarriers
from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopValueError

target_tpr = fraction(0.0, 1.0, low_open=True, high_open=False)
null_target_fpr = fraction(1e-12, 0.5, low_open=False, high_open=False)


def add_search_flags(parser: argparse.ArgumentParser, optimize: bool) -> None:
    """The search's flags; ``optimize``: as optional flags of ``codecloop optimize`` (which has its
    own --target-fpr)."""
    parser.add_argument("--target-tpr", type=target_tpr, default=None if optimize else 0.95, required=False,
                        help="search the smallest ε whose worst channel reaches this TPR at --target-fpr (null model)"
                        + ("; after the run, on the validation split, read on holdout" if optimize else ""))  # fmt: skip
    parser.add_argument("--epsilon-low", type=epsilon, default="1/1020", help="smallest ε searched (default a quarter level, 1/1020)")
    parser.add_argument("--epsilon-high", type=epsilon, default="16/255", help="largest ε searched")
    parser.add_argument("--epsilon-step", type=epsilon, default="1/1020", help="the answer's resolution (default a quarter level)")
    parser.add_argument("--unit", choices=UNITS, default="clips", help="a decision per clip, or per source video (clips combined)")


def add_arguments(sub: Any) -> None:
    """The ``epsilon`` subcommand on ``sub`` (argparse's subparsers)."""
    e = sub.add_parser(
        "epsilon", help="the smallest ε at which a signature reaches a target TPR at a target FPR, and TPR against ε per channel",
        description="Bisect ε for a signature (its direction fixed, ε scaling it) on --search-split; read the ε found and "
        "the TPR-against-ε curve on --report-split. Writes epsilon.json and tpr_vs_epsilon.png in --out.",
    )  # fmt: skip
    server_flags(e)
    e.add_argument("--signature", required=True, help=".npy float array (T, H, W, 3) in [-1, 1], e.g. a run's best.npy")
    e.add_argument("--target-fpr", type=null_target_fpr, default=1e-3, help="nominal false-positive rate of the decision (null model)")
    add_search_flags(e, optimize=False)
    e.add_argument("--dataset", default=defaults.DATASET)
    e.add_argument("--search-split", default="validation")
    e.add_argument("--report-split", default="holdout", help="'none': no report split")
    e.add_argument("--clips", type=int, default=0, help="clips of each split (0 = all)")
    e.add_argument("--crf", type=float, action="append", help=f"repeat for several codec settings (default {defaults.CRF:g})")
    e.add_argument("--preset", default=defaults.PRESET)
    e.add_argument("--channel", action="append", default=[], help=CHANNEL_HELP)
    e.add_argument("--scorer", default=defaults.SCORER)
    e.add_argument("--out", required=True, help="folder for epsilon.json and tpr_vs_epsilon.png")


def check_range(args: argparse.Namespace) -> None:
    """The searched range's flags, checked before any server work (a run's search comes after the run)."""
    if not args.epsilon_low < args.epsilon_high:
        raise CodecLoopValueError(f"--epsilon-low ({args.epsilon_low:g}) must be below --epsilon-high ({args.epsilon_high:g})")
    if args.epsilon_step > args.epsilon_high - args.epsilon_low:
        raise CodecLoopValueError(f"--epsilon-step: {args.epsilon_step:g} is larger than the range searched ({args.epsilon_high - args.epsilon_low:g})")


def search(
    client: Client, signature: Any, args: argparse.Namespace, options: EvaluateOptions, search_on: DatasetCarriers, report_on: DatasetCarriers | None,
    target_fpr: float, folder: str | Path,
) -> dict[str, Any]:  # fmt: skip
    """Run the search with the flags of :func:`add_search_flags`; prints what it does and found."""
    scorer = options.scorer or defaults.SCORER
    if not any(s.name == scorer and s.null_model for s in client.info().scorers):
        raise CodecLoopValueError(f"--target-tpr: scorer {scorer!r} has no null model (a detector without a key); the search needs one")
    check_range(args)
    print(f"codecloop: searching ε in [{args.epsilon_low * 255:g}, {args.epsilon_high * 255:g}]/255 by {args.epsilon_step * 255:g}/255 for "
          f"TPR >= {args.target_tpr:g} at FPR {target_fpr:g} ({args.unit}) on {search_on.dataset}/{search_on.split}"
          + (f", read on {report_on.dataset}/{report_on.split}" if report_on is not None else ""), file=sys.stderr, flush=True)  # fmt: skip
    t0 = time.monotonic()
    out = epsilon_report(
        client, signature, target_tpr=args.target_tpr, target_fpr=target_fpr, search=search_on, report=report_on, options=options,
        low=args.epsilon_low, high=args.epsilon_high, step=args.epsilon_step, unit=args.unit, folder=folder,
    )  # fmt: skip
    for line in summary_lines(out):
        print(line)
    print(f"ε search: {time.monotonic() - t0:.1f} s; {Path(folder) / 'epsilon.json'}, {Path(folder) / 'tpr_vs_epsilon.png'}")
    return out


def run(args: argparse.Namespace) -> int:
    """``codecloop epsilon``."""
    sig = userinput.load_signature(args.signature, population=False)  # before a server starts
    check_range(args)
    with connect(args) as client:
        dataset = userinput.dataset_info(client.info(), args.dataset)
        for flag, split in (("--search-split", args.search_split), ("--report-split", args.report_split)):
            if split not in (*dataset.split_clips, "none") or (flag == "--search-split" and split == "none"):
                raise CodecLoopValueError(f"{flag}: dataset {dataset.name!r} has no split {split!r}; it has {', '.join(sorted(dataset.split_clips))}")
        search_on = DatasetCarriers(args.dataset, args.search_split, userinput.clip_count(dataset, args.search_split, args.clips))
        report_on = (
            None if args.report_split == "none" else DatasetCarriers(args.dataset, args.report_split, userinput.clip_count(dataset, args.report_split, args.clips))
        )  # fmt: skip
        options = EvaluateOptions(
            codecs=[Codec(crf=c, preset=args.preset) for c in crfs(args)],
            channels=[Channel.parse(c) for c in args.channel],
            scorer=args.scorer,
        )
        search(client, sig, args, options, search_on, report_on, args.target_fpr, args.out)
    return 0

