"""``codecloop`` command line: ``evaluate``, ``optimize``, ``diagnose``, ``info``, ``health``, ``mark``, ``detect``;
``serve`` and ``channel`` run the server's own CLIs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn

import numpy as np

from codecloop import cli_epsilon, cli_optimize, detect, mark, userinput
from codecloop.cliflags import CHANNEL_HELP, Parser, SubParser, connect, crfs, env, epsilon, fill_help, fraction, null_fpr, server_flags, target_fpr
from codecloop.units import fraction_label
from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopError

__all__ = ["build_parser", "fraction", "main", "random_signature"]


def random_signature(kind: str, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A random +-1 signature (1, H, W, 3): ``pixel`` i.i.d. or ``blockN`` constant N x N blocks."""
    _, h, w = shape
    block = 1 if kind == "pixel" else int(kind.removeprefix("block"))
    rng = np.random.default_rng(seed)
    small = rng.choice([-1.0, 1.0], size=(1, -(-h // block), -(-w // block), 3)).astype(np.float32)
    return np.repeat(np.repeat(small, block, axis=1), block, axis=2)[:, :h, :w]


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


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="codecloop", description="Real-codec (libx264) evaluation of video signatures.")
    # every subcommand's --help shows the defaults
    sub = p.add_subparsers(dest="command", required=True, parser_class=SubParser)

    # `codecloop serve` is the server's own CLI (codecloop_server.cli), run as `python -m codecloop_server`
    sub.add_parser("serve", help="run the gRPC server (python -m codecloop_server; its --help lists the flags)", add_help=False)
    sub.add_parser("channel", help="run a server channel preset on a video file at its own size (INPUT OUTPUT --channel NAME)", add_help=False)
    e = sub.add_parser("evaluate", help="evaluate a signature and print the detection table")
    server_flags(e)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--signature", help=".npy of (T, H, W, 3) or a population (P, T, H, W, 3), values in [-1, 1]")
    src.add_argument("--random", choices=["pixel", "block4", "block8", "block16"], help="a random +-1 signature")
    e.add_argument("--seed", type=int, default=0, help="seed of --random")
    e.add_argument("--epsilon", type=epsilon, default=fraction_label(defaults.EPSILON))
    e.add_argument("--crf", type=float, action="append", help=f"repeat for several codec settings (default {defaults.CRF:g})")
    e.add_argument("--channel", action="append", default=[], help=CHANNEL_HELP)
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
    rule.add_argument("--target-fpr", type=target_fpr, default=fraction_label(defaults.TARGET_FPR), help="calibrate the threshold on the clean scores to this FPR")
    e.add_argument("--fpr", type=null_fpr, action="append", help="an operating point of the null model (repeat; default 1e-2 1e-3 1e-4 1e-6): TPR at p < FPR")
    e.add_argument("--no-null", action="store_true", help="skip the null model (per-clip p-values and TPR at fixed FPRs)")
    e.add_argument("--per-clip", action="store_true", help="print every clip's scores")
    e.add_argument("--json", help="also write the full result as JSON to this path")

    cli_optimize.add_arguments(sub)

    d = sub.add_parser("diagnose", help="proxy (each rounding) vs real codec statistics for a signature")
    server_flags(d)
    d.add_argument("--signature", required=True, help=".npy (T, H, W, 3) in [-1, 1]")
    d.add_argument("--epsilon", type=epsilon, default=fraction_label(defaults.EPSILON))
    d.add_argument("--crf", type=float, default=defaults.CRF)
    d.add_argument("--preset", default=defaults.PRESET)
    d.add_argument("--clips", type=int, default=defaults.NUM_CLIPS, help=f"clips drawn from --split; 0 = all of them (default {defaults.NUM_CLIPS})")
    d.add_argument("--split", default=defaults.SPLIT)
    d.add_argument("--random", type=int, default=20, help="random signatures for the rank correlation")
    d.add_argument("--qp-offset", type=float, default=5.0)
    d.add_argument("--plot", default="diagnose.png")

    h = sub.add_parser("health", help="exit 0 when the server's gRPC health status is SERVING")
    h.add_argument("--target", default=env("target", "127.0.0.1:" + (env("port", "50051") or "50051")))
    h.add_argument("--service", default="", help="health service name ('' = the whole server)")
    h.add_argument("--timeout", type=float, default=5.0)

    mark.add_arguments(sub.add_parser("mark", help="add a signature to a video file at its own size, frame rate and length"))
    cli_epsilon.add_arguments(sub)
    detect.add_arguments(sub.add_parser("detect", help="test video files for a signature: score, p-value and decision per video"))

    i = sub.add_parser("info", help="print the server's versions, datasets, scorers and limits")
    server_flags(i)
    i.add_argument("--dataset", default=None, help="list this dataset (a name, or a folder to serve privately): each file -> split, clips, skipped files")
    for sp in sub.choices.values():
        fill_help(sp)
    return p


def _evaluate(args: argparse.Namespace) -> int:
    from codecloop import Channel, Codec, DatasetCarriers

    sig = userinput.load_signature(args.signature) if args.signature else None  # before a server starts
    with connect(args) as client:
        dataset = userinput.dataset_info(client.info(), args.dataset)
        for skipped in dataset.skipped:
            print(f"codecloop: dataset {dataset.name}: skipped {skipped.name}: {skipped.reason}", file=sys.stderr, flush=True)
        clips = userinput.clip_count(dataset, args.split, args.clips)
        carriers = DatasetCarriers(dataset=args.dataset, split=args.split, num_clips=clips, seed=args.clip_seed)
        if sig is not None:
            population = sig[None] if sig.ndim == 4 else sig
        else:
            population = random_signature(args.random, (dataset.clip_shape[0], dataset.clip_shape[1], dataset.clip_shape[2]), args.seed)[None]
        codecs = [Codec(crf=c, preset=args.preset, gop=args.gop, fps=args.fps) for c in crfs(args)]
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
                assert s.clean_scores is not None and s.poisoned_scores is not None  # per_clip_scores=True
                print(f"candidate {i} {s.label()} clean:    " + " ".join(f"{v:.3f}" for v in s.clean_scores))
                print(f"candidate {i} {s.label()} poisoned: " + " ".join(f"{v:.3f}" for v in s.poisoned_scores))
                if s.poisoned_p_values is not None and s.clean_p_values is not None:
                    print(f"candidate {i} {s.label()} clean p:    " + " ".join(f"{v:.1e}" for v in s.clean_p_values))
                    print(f"candidate {i} {s.label()} poisoned p: " + " ".join(f"{v:.1e}" for v in s.poisoned_p_values))
    if args.json:
        from codecloop import jsonutil

        jsonutil.write(args.json, result)
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from codecloop import Codec, DatasetCarriers
    from codecloop.diagnose import diagnose, table

    sig = userinput.load_signature(args.signature, population=False)
    with connect(args) as client:
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


def _info(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from codecloop import datasetview

    with connect(args) as client:
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
        commands = {"evaluate": _evaluate, "optimize": cli_optimize.run, "diagnose": _diagnose, "info": _info, "health": _health, "mark": mark.run, "detect": detect.run,
                    "epsilon": cli_epsilon.run}  # fmt: skip
        code = commands[args.command](args)
        if code == 130:  # a run cut short by Ctrl-C, reported: leave as an interrupted process does (below)
            _exit_interrupted()
        return code
    except CodecLoopError as err:
        print(f"codecloop: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the with-blocks above have closed clients and stopped a local server
        _exit_interrupted()


def _exit_interrupted() -> NoReturn:
    print("codecloop: interrupted", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # exit now: an RPC interrupted mid-call can leave gRPC threads that hold up interpreter
    # shutdown; a private server still running would stop itself (serve --exit-with-parent)
    os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
