"""Resume is a contract (codecloop.runcheck): a rerun into a run folder with other settings is
refused listing each difference; the same settings resume and say so; --overwrite starts afresh;
limits that leave no generation are refused by flag before anything is written."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from dataclasses import replace

import pytest

from codecloop import Codec, DatasetCarriers
from codecloop.optimize import Run, RunConfig
from codecloop.params import make
from codecloop.runcheck import RunSettingsError
from tests.conftest import error_lines

SHAPE = (16, 112, 112)
COMMON = ["--dataset", "embedded", "--train-clips", "4", "--popsize", "4", "--holdout-clips", "4", "--validation-clips", "4",
          "--validate-every", "1", "--preset", "ultrafast", "--no-progress"]  # fmt: skip


def optimize(target: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codecloop.cli", "optimize", "--target", target, *COMMON, *args], capture_output=True, text=True, timeout=300)


def test_a_rerun_with_other_settings_is_refused_the_same_resumes_overwrite_restarts(server_target, tmp_path):
    out = str(tmp_path / "run")
    first = optimize(server_target, "--budget", "4", "--epsilon", "4/255", "--param", "dct:8:3", "--out", out)
    assert first.returncode == 0, first.stderr
    assert "resuming" not in first.stderr
    # the split the run rests on, printed and recorded: the embedded corpus's photographs per split
    assert "codecloop: dataset embedded holdout: " in first.stderr
    dataset = json.loads((tmp_path / "run" / "summary.json").read_text())["dataset"]
    assert dataset["name"] == "embedded" and dataset["folder"] is None and len(dataset["digest"]) == 16
    assert [len(dataset["sources"][s]) for s in ("train", "validation", "holdout")] == [7, 3, 3]
    assert all(src["clips"] == 24 for src in dataset["sources"]["holdout"]) and dataset["skipped"] == []
    checkpoint = tmp_path / "run" / "checkpoint.pkl"
    before = checkpoint.read_bytes()

    changed = optimize(server_target, "--budget", "4", "--epsilon", "2/255", "--param", "dct:8:2", "--seed", "3", "--out", out)
    assert changed.returncode == 2, changed.stderr
    lines = error_lines(changed.stderr)
    assert "holds a run with other settings (3 differences)" in lines[0] and "--overwrite" in lines[0]
    assert lines[1:] == [
        "  epsilon (--epsilon): 4/255 in the run folder, 2/255 now",
        "  parameterization (--param): DCT(shape=(16, 112, 112), block=8, coeffs=3, channels='luma', per_block=False) in the run folder, "
        "DCT(shape=(16, 112, 112), block=8, coeffs=2, channels='luma', per_block=False) now",
        "  seed (--seed): 0 in the run folder, 3 now",
    ]
    assert "Traceback" not in changed.stderr and checkpoint.read_bytes() == before  # refused before touching anything

    # the same settings with a larger budget (a limit, not a setting): continues where it stopped
    resumed = optimize(server_target, "--budget", "8", "--epsilon", "4/255", "--param", "dct:8:3", "--out", out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"codecloop: resuming {out} at generation 1 (4 evaluations, " in resumed.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["generations"] == 2 and summary["evaluations"] == 8
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 8

    fresh = optimize(server_target, "--budget", "4", "--epsilon", "2/255", "--param", "dct:8:2", "--out", out, "--overwrite")
    assert fresh.returncode == 0, fresh.stderr
    assert "resuming" not in fresh.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["generations"] == 1 and summary["config"]["epsilon"] == 2 / 255
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize(
    "args,message",
    [(["--budget", "2"], "--budget: 2 evaluations are fewer than one generation (--popsize 4)"),
     (["--max-minutes", "0.05"], "--max-minutes: 0.05 (3 s) leaves"),
     (["--out", "FILE"], "is a file, not a run folder")],
)  # fmt: skip
def test_limits_that_leave_no_generation_are_refused_by_flag_and_write_nothing(server_target, tmp_path, args, message):
    (tmp_path / "FILE").write_text("not a folder")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "run")]
    run = optimize(server_target, *args, *out)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert len(error_lines(run.stderr)) == 1 and "Traceback" not in run.stderr
    assert not (tmp_path / "run").exists()


def test_sdk_run_refuses_other_settings_and_an_old_checkpoint_is_compared_by_config(client, tmp_path):
    config = RunConfig(
        epsilon=4 / 255, codecs=(Codec(preset="ultrafast"),), train=DatasetCarriers(num_clips=4),
        validation=DatasetCarriers(split="validation", num_clips=4), holdout=DatasetCarriers(split="holdout", num_clips=4),
        popsize=4, budget=4,
    )  # fmt: skip
    Run(client, make("dct:8:2", SHAPE), config, tmp_path).run(progress=False)
    with pytest.raises(RunSettingsError) as err:
        Run(client, make("dct:8:2", SHAPE), replace(config, popsize=6, budget=6), tmp_path)
    assert err.value.differences == ["popsize (--popsize): 4 in the run folder, 6 now"]
    assert Run(client, make("dct:8:2", SHAPE), replace(config, budget=100), tmp_path).resumed  # a limit may change
    # a checkpoint written before settings were stored: its config is what is compared
    blob = pickle.loads((tmp_path / "checkpoint.pkl").read_bytes())
    del blob["settings"]
    (tmp_path / "checkpoint.pkl").write_bytes(pickle.dumps(blob))
    with pytest.raises(RunSettingsError, match=r"epsilon \(--epsilon\): 4/255 in the run folder, 2/255 now"):
        Run(client, make("dct:8:2", SHAPE), replace(config, epsilon=2 / 255), tmp_path)
    assert Run(client, make("dct:8:2", SHAPE), config, tmp_path).resumed
    assert not Run(client, make("dct:8:3", SHAPE), config, tmp_path, overwrite=True).resumed
    assert not (tmp_path / "checkpoint.pkl").exists() and not (tmp_path / "summary.json").exists()
