"""What the ``codecloop`` commands share: argparse types (fractions in a range), the parser and help
format, the ``--target`` / ``--local`` flags and the checked server client they pick."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from fractions import Fraction
from typing import Any, NoReturn

from codecloop import userinput
from codecloop.client import Client
from codecloop_wire import defaults
from codecloop_wire.errors import CodecLoopValueError


def fraction(low: float, high: float, low_open: bool, high_open: bool, levels_hint: bool = False) -> Callable[[str], float]:
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


CHANNEL_HELP = (
    "repeatable: a channel the clips go through, a server preset (social, streaming, messaging, reupload) or steps "
    "like 'resize:0.5:bicubic,libx264:crf=23' (resize:S|WxH[:filter], crop:X:Y:W:H, fps:N, <codec>[:crf=|qp=|bitrate=][:preset=]); "
    "with --channel and no --crf only the channels are used"
)


epsilon = fraction(0.0, 1.0, low_open=True, high_open=False, levels_hint=True)
target_fpr = fraction(0.0, 1.0, low_open=False, high_open=True)
quantile = fraction(0.0, 1.0, low_open=True, high_open=True)
null_fpr = fraction(1e-12, 0.5, low_open=False, high_open=False)


class Parser(argparse.ArgumentParser):
    """Usage mistakes in one line (``codecloop optimize: error: argument --epsilon: ...``), exit
    code 2, without the usage block argparse prints first (``--help`` shows it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help for usage)\n")


class SubParser(Parser):
    """A subcommand's parser: its ``--help`` shows each option's default (:class:`HelpFormatter`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, unless its help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".strip()


def fill_help(parser: argparse.ArgumentParser) -> None:
    """Options without help text get "default: ..." as their help (argparse prints no defaults for them)."""
    for action in parser._actions:
        if action.help is None and action.option_strings:
            action.help = "default: %(default)s"


def env(flag: str, default: str | None) -> str | None:
    """A flag's default from the environment: --target <- CODECLOOP_TARGET (`codecloop health` in containers)."""
    return os.environ.get("CODECLOOP_" + flag.upper().replace("-", "_"), default)


def connect(args: argparse.Namespace) -> Client:
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


_TARGET_HELP = (
    "server address(es), host:port[,host:port...], checked (health SERVING, a codecloop server) or the command fails; "
    "default: the server on 127.0.0.1:50051 if it passes that check (or --wait is given), else a private local server"
)
_LOCAL_HELP = "use a private local server for this command, whatever listens on 127.0.0.1:50051"


def server_flags(parser: argparse.ArgumentParser) -> None:
    """--target or --local (one of them at most)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--target", default=None, help=_TARGET_HELP)
    group.add_argument("--local", action="store_true", help=_LOCAL_HELP)
    parser.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for the server to become SERVING")
    parser.add_argument("--strict-datasets", action="store_true",
                        help="a private server refuses a --dataset folder file that gives no clip, instead of skipping it with a warning")  # fmt: skip


def crfs(args: argparse.Namespace) -> list[float]:
    """The --crf values; none given: the default CRF, unless --channel gave channels (then only those)."""
    return args.crf or ([] if args.channel else [defaults.CRF])
