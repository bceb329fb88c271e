"""The console script, the README's pycma loop, and the engine's clean-side cache."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from codecloop import DatasetCarriers
from codecloop_server import parse
from codecloop_server.channels import Channel
from codecloop_server.codecs import CodecSettings
from codecloop_server.corpus import embedded_corpus
from codecloop_server.engine import Engine
from codecloop_server.jobs import EvaluateJob
from codecloop_wire.stats import Decision
from tests.conftest import block_signature


def run_cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "codecloop.cli", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cli_evaluate_prints_seed_table(server_target, tmp_path):
    out = run_cli("evaluate", "--target", server_target, "--random", "block8", "--clips", "4", "--epsilon", "4/255",
                  "--crf", "28", "--crf", "35", "--json", str(tmp_path / "r.json"))  # fmt: skip
    assert "clean μ±σ" in out and "poisoned μ±σ" in out and "TPR" in out
    assert "libx264 crf=28 medium" in out and "libx264 crf=35 medium" in out
    assert "Wilcoxon" in out and (tmp_path / "r.json").stat().st_size > 0
    np.save(tmp_path / "sig.npy", block_signature(3))
    out = run_cli("evaluate", "--target", server_target, "--signature", str(tmp_path / "sig.npy"), "--clips", "4")
    assert "scorer=blind" in out and "clips=4" in out


def test_cli_reports_bad_input_cleanly(server_target):
    out = subprocess.run(
        [sys.executable, "-m", "codecloop.cli", "evaluate", "--target", server_target, "--random", "pixel", "--crf", "60"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "codecs[0].crf: 60" in out.stderr


def test_readme_pycma_loop(client):
    """The README's example: pycma minimizes, so it is told -fitness."""
    cma = pytest.importorskip("cma")
    es = cma.CMAEvolutionStrategy(np.zeros(4 * 4 * 3), 0.5, {"popsize": 4, "seed": 1, "verbose": -9})
    carriers = DatasetCarriers(num_clips=4)
    for _ in range(2):
        thetas = es.ask()
        # a 4x4 RGB pattern, upsampled to 112x112 and squashed into [-1, 1]
        batch = np.stack([np.tanh(np.kron(t.reshape(4, 4, 3), np.ones((28, 28, 1))))[None] for t in thetas])
        fitness = client.fitness(batch.astype(np.float32), epsilon=4 / 255, carriers=carriers)
        es.tell(thetas, list(-fitness))
    assert es.countiter == 2 and np.isfinite(es.result.fbest)


def test_clean_work_is_done_once_per_clip():
    """P candidates on N clips cost P x N encodes once warm; a repeat costs none (result cache)."""
    ds = embedded_corpus()
    engine = Engine(workers=1)
    try:
        engine.add_dataset(ds)

        def job(seeds):
            req = DatasetCarriers(num_clips=3).to_proto()
            return EvaluateJob(
                candidates=tuple(block_signature(s) for s in seeds),
                epsilon=4 / 255,
                carriers=parse.carriers(req, {"embedded": ds}, parse.Limits()),
                channels=(Channel.of(CodecSettings(preset="ultrafast")),),
                scorer=("blind", (("kernel", 3.0),)),
                decision=Decision(target_fpr=0.0),
            )

        first = asyncio.run(engine.evaluate(job([1, 2])))
        assert engine.counters == {"clean_encodes": 3, "poisoned_encodes": 6}
        asyncio.run(engine.evaluate(job([3, 4])))  # new candidates, same clips: no clean encode
        assert engine.counters == {"clean_encodes": 3, "poisoned_encodes": 12}
        assert (engine.clean_cache.misses, engine.clean_cache.hits) == (3, 3)
        again = asyncio.run(engine.evaluate(job([2, 1])))  # seen before: answered from the result cache
        assert engine.counters == {"clean_encodes": 3, "poisoned_encodes": 12}
        assert [o.fitness for o in again] == [o.fitness for o in first[::-1]]
        assert engine.clean_cache.size_bytes == 3 * (16 * 112 * 112 * 3 * 2 + 112 * 112 * 3 * 8)  # int16 residuals + time sums
    finally:
        engine.close()


def test_sdk_retries_unavailable():
    """The SDK's gRPC retry policy re-sends a call that got UNAVAILABLE (real gRPC, loopback)."""
    from concurrent import futures

    import grpc

    import codecloop
    from codecloop_wire.v1 import codecloop_pb2 as pb
    from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc

    calls = []

    class Flaky(pb_grpc.CodecLoopServicer):
        def GetServerInfo(self, request, context):
            calls.append(1)
            if len(calls) < 3:
                context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
            return pb.ServerInfo(workers=7)

    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_CodecLoopServicer_to_server(Flaky(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with codecloop.Client(f"127.0.0.1:{port}", timeout=30) as client:
            assert client.info().workers == 7
        assert len(calls) == 3
        calls.clear()
        with codecloop.Client(f"127.0.0.1:{port}", timeout=30, max_attempts=2) as client:
            with pytest.raises(codecloop.CodecLoopUnavailableError, match="warming up"):
                client.info()
    finally:
        server.stop(None)
