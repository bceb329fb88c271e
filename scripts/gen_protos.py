"""Regenerate the committed gRPC/protobuf code from proto/ (the only way it is produced).

Run with the pinned grpcio-tools (see pyproject's ``dev`` extra):  python scripts/gen_protos.py
tests/test_protos.py regenerates into a temporary folder and fails when the committed files differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "client"  # proto package codecloop.v1 -> import package codecloop.v1
PINNED_GRPCIO_TOOLS = "1.85.1"


def generate(out_root: Path = OUT_ROOT) -> list[Path]:
    """Run protoc on every proto/**/*.proto; return the files written under ``out_root``."""
    import grpc_tools

    version = getattr(grpc_tools, "__version__", None)
    if version is None:
        from importlib.metadata import version as _v

        version = _v("grpcio-tools")
    if version != PINNED_GRPCIO_TOOLS:
        raise SystemExit(f"grpcio-tools {version} installed; the committed code needs {PINNED_GRPCIO_TOOLS}")
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out_root / "codecloop" / "v1").glob("*_pb2*"))


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    sys.exit(0)
