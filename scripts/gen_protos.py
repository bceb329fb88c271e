"""Regenerate the committed gRPC/protobuf code from proto/ (the only way it is produced).

Run with the pinned grpcio-tools (see pyproject's ``dev`` extra):  python scripts/gen_protos.py
tests/test_protos.py regenerates into a temporary folder and fails when the committed files differ.

protoc names Python modules after the proto's path (codecloop/v1/codecloop.proto -> codecloop.v1);
the code lives in the wire package that SDK and server share, so the module paths in the generated
files are rewritten to ``codecloop_wire.v1`` (the proto package, ``codecloop.v1``, is unchanged).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "wire"  # -> wire/codecloop_wire/v1/
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
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *protos]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out = out_root / "codecloop_wire" / "v1"
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / "codecloop" / "v1").glob("*_pb2*")):
            text = src.read_text()
            text = text.replace("from codecloop.v1 import", "from codecloop_wire.v1 import")
            text = text.replace("'codecloop.v1.codecloop_pb2'", "'codecloop_wire.v1.codecloop_pb2'")
            (out / src.name).write_text(text)
            written.append(out / src.name)
    return written


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    sys.exit(0)
