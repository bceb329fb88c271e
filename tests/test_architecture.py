"""The rooms stay apart: the SDK and the server share only the wire package, never each other."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _modules(package: str, folder: Path) -> list[str]:
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(folder)]) if m.name != "__main__"]


def _loaded_after_import(modules: list[str]) -> set[str]:
    """Top-level packages in sys.modules after importing ``modules`` in a fresh interpreter."""
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return set(out.stdout.split())


def test_sdk_imports_neither_server_nor_codec_stack():
    pytest.importorskip("torch")  # the SDK's torch modules are imported too
    loaded = _loaded_after_import(_modules("codecloop", ROOT / "client" / "codecloop"))
    assert "codecloop_wire" in loaded
    # (grpc itself imports grpc_reflection when it is installed, so that one is not checked)
    assert not loaded & {"codecloop_server", "av", "skimage", "skvideo", "prometheus_client"}


def test_cma_runs_without_torch():
    """torch is optional: the SDK, the CLI and the run layer import without it, and a CMA-ES back-end
    made through the registry asks and tells without loading it (only the gradient back-ends do)."""
    code = (
        "import sys\nimport codecloop, codecloop.cli, codecloop.optimize\n"
        "from codecloop import DatasetCarriers, backends\nfrom codecloop.params import make\nfrom codecloop.runconfig import RunConfig\n"
        "b = backends.create('cma', backends.BackendContext(RunConfig(popsize=4), make('dct:8:2', (16, 112, 112)), None, DatasetCarriers()))\n"
        "t = b.ask()\nb.tell(t, [float((x ** 2).sum()) for x in t])\nprint('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False"


def test_server_imports_no_sdk():
    modules = [m for m in _modules("codecloop_server", ROOT / "server" / "codecloop_server") if m != "codecloop_server.detector"]
    loaded = _loaded_after_import(modules + ["codecloop_server.detector"])
    assert "codecloop_wire" in loaded and "codecloop_server" in loaded
    assert "codecloop" not in loaded


CODEC_ROOM = ["codecs", "convert", "transcode", "reference", "versions", "x264_asm"]


def test_codec_room_imports_no_transport():
    """The codec room (ndarray in, ndarray/bytes out) and the workers' tasks import neither gRPC nor the
    protos, and of the server only each other: a worker process and a script stay free of the transport."""
    loaded = _loaded_modules([f"codecloop_server.{m}" for m in [*CODEC_ROOM, "channels", "tasks"]])
    assert "codecloop_server.transcode" in loaded and "av" in loaded
    assert not {m for m in loaded if m.split(".")[0] in {"grpc", "google"} or m.startswith("codecloop_wire.v1")}
    server = {m.split(".")[1] for m in loaded if m.startswith("codecloop_server.")}
    assert server <= {*CODEC_ROOM, "registry", "channels", "tasks", "scorers", "shm"}
    # the codec room itself needs none of the scoring or shared-memory code
    room = _loaded_modules([f"codecloop_server.{m}" for m in CODEC_ROOM])
    assert {m.split(".")[1] for m in room if m.startswith("codecloop_server.")} <= {*CODEC_ROOM, "registry"}


def _loaded_modules(modules: list[str]) -> set[str]:
    """Every module in sys.modules after importing ``modules`` in a fresh interpreter."""
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "print(' '.join(sorted(sys.modules)))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout.split())


def test_scorer_kinds_are_told_apart_in_one_place():
    """Worker scorers and detectors are two strategies behind scoring.Scoring: the registry holds
    both as scorers.Registered, and only scoring.py names the detector kind."""
    from codecloop_server import scorers, scoring
    from codecloop_server.detector import DetectorScorer

    assert not issubclass(DetectorScorer, scorers.Scorer) and issubclass(DetectorScorer, scorers.Registered)
    assert set(scoring.Scoring.__subclasses__()) == {scoring.WorkerScoring, scoring.DetectorScoring}
    server = ROOT / "server" / "codecloop_server"
    importing = sorted(p.name for p in server.glob("*.py") if re.search(r"import .*\bDetectorScorer\b", p.read_text()))
    assert importing == ["scoring.py", "server.py"]  # server.py loads the configured detectors
    engine = (server / "engine.py").read_text()
    assert "Detector" not in engine and "isinstance" not in engine
