"""The committed generated code is exactly what scripts/gen_protos.py produces from proto/."""

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh(tmp_path):
    pytest.importorskip("grpc_tools")
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    written = gen.generate(tmp_path)
    assert {p.name for p in written} == {"codecloop_pb2.py", "codecloop_pb2.pyi", "codecloop_pb2_grpc.py"}
    committed = ROOT / "wire" / "codecloop_wire" / "v1"
    for p in written:
        assert p.read_bytes() == (committed / p.name).read_bytes(), f"{p.name} is stale: run scripts/gen_protos.py"
    shutil.rmtree(tmp_path / "codecloop_wire")
