"""``codecloop serve`` / ``python -m codecloop_server``: the server's command line.

Every flag's default can come from the environment, ``--max-batch-size`` from
``CODECLOOP_MAX_BATCH_SIZE`` (containers, Kubernetes); the flag wins over the variable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default."""


def _env(flag: str, default: str | None) -> str | None:
    """A flag's default from the environment: --max-batch-size <- CODECLOOP_MAX_BATCH_SIZE."""
    return os.environ.get("CODECLOOP_" + flag.upper().replace("-", "_"), default)


def _env_list(flag: str, parse) -> list:
    """A repeatable flag's default from a comma-separated environment variable."""
    text = _env(flag, None)
    return [parse(item) for item in text.split(",") if item] if text else []


def _dataset_arg(text: str) -> tuple[str, str]:
    """NAME=FOLDER, split at the first ``=``: a dataset name has no ``=`` (corpus.check_dataset_name),
    so the folder may contain any character, ``=`` included."""
    from codecloop_server.corpus import check_dataset_name

    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"--dataset takes NAME=FOLDER, got {text!r}")
    try:
        check_dataset_name(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--dataset {text!r}: {err}") from None
    return name, folder


def _detector_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--detector takes NAME=FILE (a torch.export .pt2, a legacy TorchScript file, or 'example'), got {text!r}")
    return name, path


def build_parser() -> argparse.ArgumentParser:
    s = argparse.ArgumentParser(
        prog="codecloop serve", description="Run the codecloop gRPC server (every flag's default: env CODECLOOP_<FLAG>).",
        formatter_class=_HelpFormatter,
    )  # fmt: skip
    s.add_argument("--host", default=_env("host", "127.0.0.1"))
    s.add_argument("--port", type=int, default=_env("port", "50051"))
    s.add_argument("--workers", type=int, default=_env("workers", None), help="codec worker processes (default: CPU cores)")
    s.add_argument("--dataset", type=_dataset_arg, action="append", default=_env_list("dataset", _dataset_arg), metavar="NAME=FOLDER")
    s.add_argument(
        "--clip-shape", type=int, nargs=3, default=None, metavar=("T", "H", "W"),
        help="clip shape of the datasets (default 16 112 112; a folder of (N,T,H,W,3) .npy keeps its own)",
    )  # fmt: skip
    s.add_argument("--max-clips-per-source", type=int, default=_env("max-clips-per-source", "32"),
                   help="clips taken from one video, spread over its whole length")  # fmt: skip
    s.add_argument("--carriers", default=_env("carriers", "resize"), metavar="POLICY",
                   help="how video frames become clip frames (real corpus, folder datasets): resize (centre crop + resize to H x W), "
                   "native (an H x W crop at the video's own pixel scale) or native:L (after scaling to at most L lines)")  # fmt: skip
    s.add_argument("--strict-datasets", action="store_true",
                   help="a --dataset folder file that gives no clip (unreadable, no video stream, too short) is an error, not skipped")  # fmt: skip
    s.add_argument("--clean-cache-mib", type=int, default=_env("clean-cache-mib", "2048"))
    s.add_argument("--result-cache-entries", type=int, default=_env("result-cache-entries", "200000"), help="0 turns it off")
    s.add_argument("--max-queued-tasks", type=int, default=_env("max-queued-tasks", "100000"), help="queued clip tasks before UNAVAILABLE")
    s.add_argument("--metrics-port", type=int, default=_env("metrics-port", None), help="serve Prometheus metrics on this port (0: any free)")
    s.add_argument(
        "--detector", type=_detector_arg, action="append", default=_env_list("detector", _detector_arg), metavar="NAME=FILE",
        help="serve a detector (torch.export .pt2, or legacy TorchScript) as scorer NAME (FILE 'example': the shipped example); needs torch",
    )  # fmt: skip
    s.add_argument("--detector-device", default=_env("detector-device", "auto"), choices=["auto", "cpu", "cuda"])
    s.add_argument("--max-batch-size", type=int, default=_env("max-batch-size", "4"), help="detector clips per forward pass")
    s.add_argument("--max-queue-delay-us", type=int, default=_env("max-queue-delay-us", "2000"), help="detector batch gathering time")
    s.add_argument("--pad-batches", action="store_true", help="pad every detector forward to --max-batch-size clips")
    s.add_argument("--max-client-queued-tasks", type=int, default=_env("max-client-queued-tasks", "20000"),
                   help="clip tasks one client may have queued (RESOURCE_EXHAUSTED past it)")  # fmt: skip
    s.add_argument("--max-concurrent-rpcs", type=int, default=_env("max-concurrent-rpcs", "64"))
    s.add_argument("--max-client-calls", type=int, default=_env("max-client-calls", "16"), help="calls in progress per client")
    s.add_argument("--max-request-memory-mib", type=int, default=_env("max-request-memory-mib", "4096"),
                   help="memory charged to the requests in progress, in all (docs/operations.md: Memory bound; docs/limits.md)")  # fmt: skip
    s.add_argument("--max-worker-memory-mib", type=int, default=_env("max-worker-memory-mib", "2048"),
                   help="a codec worker's memory for one clip task, its base included; bigger channels are refused (docs/limits.md)")  # fmt: skip
    s.add_argument("--task-timeout-s", type=float, default=_env("task-timeout-s", "600"),
                   help="a clip task running longer means a hung worker: it is killed and replaced (0: no limit)")  # fmt: skip
    s.add_argument("--tls-cert", default=_env("tls-cert", None), help="PEM certificate chain: serve TLS")
    s.add_argument("--tls-key", default=_env("tls-key", None), help="PEM private key of --tls-cert")
    s.add_argument("--tls-client-ca", default=_env("tls-client-ca", None), help="PEM CA of client certificates: mutual TLS")
    s.add_argument("--token-file", default=_env("token-file", None), help="require 'authorization: Bearer <token in this file>'")
    s.add_argument(
        "--allow-insecure", action="store_true", default=_env("allow-insecure", "") in ("1", "true", "yes"),
        help="allow plaintext on a non-loopback --host",
    )  # fmt: skip
    s.add_argument(
        "--x264-asm", default=_env("x264-asm", "auto"), choices=["auto", "AVX2", "AVX", "SSE4.2", "SSSE3", "native"],
        help="x264 SIMD level; auto = the fastest deterministic one this CPU has (docs/codecs-and-channels.md: Determinism)",
    )  # fmt: skip
    s.add_argument("--log-level", default=_env("log-level", "INFO"))
    s.add_argument("--exit-with-parent", action="store_true", help="stop when the process that started the server dies (codecloop.local)")
    s.add_argument("--parent-pid", type=int, default=None,
                   help="with --exit-with-parent: the parent's pid (default: this process's parent when it starts); "
                        "given, a parent that died while this process was still importing is noticed too")  # fmt: skip

    for action in s._actions:
        if action.help is None:
            action.help = " "  # so that the formatter prints its default
    return s


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import faulthandler

    from codecloop_server.server import serve

    faulthandler.enable()  # a crash in native code (FFmpeg, gRPC core, torch) still leaves a Python stack

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(serve(_server_config(args), exit_with_parent=args.exit_with_parent, parent_pid=args.parent_pid))
    except (ValueError, OSError) as err:  # bad configuration: say what, no traceback
        print(f"codecloop serve: {err}", file=sys.stderr)
        return 2
    return 0


def _server_config(args: argparse.Namespace):
    """The ServerConfig of ``codecloop serve`` flags (ValueError on inconsistent settings)."""
    from codecloop_server.detector import DetectorConfig
    from codecloop_server.parse import Limits
    from codecloop_server.security import SecurityConfig
    from codecloop_server.server import ServerConfig

    return ServerConfig(
        host=args.host,
        port=args.port,
        workers=args.workers,
        datasets=dict(args.dataset),
        clip_shape=tuple(args.clip_shape) if args.clip_shape else None,
        max_clips_per_source=args.max_clips_per_source,
        carriers=args.carriers,
        strict_datasets=args.strict_datasets,
        clean_cache_bytes=args.clean_cache_mib << 20,
        result_cache_entries=args.result_cache_entries,
        max_client_queued_tasks=args.max_client_queued_tasks,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_request_memory_bytes=args.max_request_memory_mib << 20,
        task_timeout_s=args.task_timeout_s or None,
        limits=Limits(max_client_calls=args.max_client_calls, max_worker_memory_bytes=args.max_worker_memory_mib << 20),
        security=SecurityConfig(args.tls_cert, args.tls_key, args.tls_client_ca, args.token_file, args.allow_insecure),
        max_queued_tasks=args.max_queued_tasks,
        metrics_port=args.metrics_port,
        x264_asm=args.x264_asm,
        detectors=tuple(
            DetectorConfig(name, path, args.detector_device, args.max_batch_size, args.max_queue_delay_us, args.pad_batches)
            for name, path in args.detector
        ),
    )


def main(argv: list[str] | None = None) -> int:
    return _serve(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
