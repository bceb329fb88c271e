"""An optimizer run spread over three server replicas (round_robin), one of them killed mid-run:
the run completes, every evaluation is logged exactly once, and the results equal a one-server run."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import codecloop
from codecloop import Codec, DatasetCarriers
from codecloop.optimize import Run, RunConfig
from codecloop.params import make
from tests.conftest import _start_server

CONFIG = RunConfig(
    optimizer="cma",
    epsilon=4 / 255,
    codecs=(Codec(preset="medium"),),
    train=DatasetCarriers(num_clips=12),
    holdout=DatasetCarriers(split="holdout", num_clips=8),
    popsize=6,
    budget=36,
    seed=5,
)


def _log(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_run_survives_a_killed_replica(tmp_path, server_target):
    servers = [_start_server(["--workers", "1"]) for _ in range(3)]
    targets = [t for _, t in servers]
    param = make("lowres:7x7", (16, 112, 112))
    try:
        with codecloop.Client(targets, timeout=300) as client:
            assert client.replicas == 3
            for _ in range(6):  # connect every replica: round_robin picks among connected ones only
                client.info()
            run = Run(client, param, CONFIG, tmp_path / "spread")
            done = threading.Event()
            result = {}
            thread = threading.Thread(target=lambda: (result.update(run.run(progress=False)), done.set()))
            thread.start()
            victim_proc, victim = servers[2]
            with codecloop.Client(victim, timeout=30) as probe:  # kill it while it holds work
                while not done.is_set() and probe.info().load.get("tasks_in_flight", 0) == 0:
                    time.sleep(0.01)
            os.killpg(victim_proc.pid, signal.SIGKILL)
            killed_at = len(_log(tmp_path / "spread")) if (tmp_path / "spread" / "log.jsonl").exists() else 0
            thread.join(600)
            assert done.is_set(), "the run did not finish"
        assert killed_at < CONFIG.budget, "the replica was killed after the run ended"
        for target in targets[:2]:  # the survivors both did part of the work
            with codecloop.Client(target) as c:
                assert c.info().load.get("poisoned_encodes", 0) > 0
        spread = _log(tmp_path / "spread")
        assert [e["evaluation"] for e in spread] == list(range(CONFIG.budget))  # each exactly once
        # the same run on one server gives the same fitness for every evaluation
        with codecloop.Client(server_target, timeout=300) as single:
            Run(single, param, CONFIG, tmp_path / "single").run(progress=False)
        assert [e["fitness"] for e in spread] == [e["fitness"] for e in _log(tmp_path / "single")]
        assert result["evaluations"] == CONFIG.budget
    finally:
        for proc, _ in servers:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
