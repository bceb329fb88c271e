"""Parameterizations and the resumable pycma / nevergrad loops against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from codecloop import Codec, DatasetCarriers, Racing
from codecloop.optimize import Run, RunConfig
from codecloop.params import DCT, Identity, LowRes, Tiled, make
from codecloop_wire.errors import CodecLoopValueError

SHAPE = (16, 112, 112)


@pytest.mark.parametrize(
    "spec,dim,frames",
    [("lowres:14x14", 196, 1), ("lowres:7x7:rgb:t=4", 7 * 7 * 3 * 4, 16), ("lowres:7x7:rgb:t=all", 7 * 7 * 3 * 16, 16), ("tiled:8x8:rgb", 192, 1), ("dct:8:6", 6, 1),
     ("dct:8:3:per_block", 14 * 14 * 3, 1)],
)  # fmt: skip
def test_parameterizations(spec, dim, frames):
    p = make(spec, SHAPE)
    assert p.dim == dim
    theta = np.random.default_rng(0).standard_normal((3, dim)) * 3
    x = p(theta)
    assert x.shape == (3, frames, 112, 112, 3) and x.dtype == np.float32
    assert np.abs(x).max() <= 1.0
    np.testing.assert_array_equal(p(theta[1]), x[1:2])  # one theta = a batch of one


def test_parameterization_structure():
    x = LowRes(SHAPE, (1, 14, 14))(np.arange(196.0) / 196)[0, 0]
    assert np.all(x[:8, :8] == x[0, 0]) and x[0, 0, 0] == x[0, 0, 1] == x[0, 0, 2]  # 8x8 blocks, luma
    t = Tiled(SHAPE, (8, 8), "rgb")(np.random.default_rng(1).standard_normal(192))[0, 0]
    np.testing.assert_array_equal(t[:8, :8], t[8:16, 16:24])
    d = DCT(SHAPE, 8, 1)(np.array([1.0]))[0, 0]  # the DC basis function alone: a constant
    assert np.ptp(d) < 1e-6
    full = Identity((2, 16, 16))
    sig = np.random.default_rng(2).uniform(-0.9, 0.9, (1, full.dim))
    np.testing.assert_allclose(full(sig).reshape(-1), sig[0], atol=1e-6)
    with pytest.raises(CodecLoopValueError, match="grid"):
        LowRes(SHAPE, (1, 15, 14))


@pytest.mark.parametrize("grid,channels", [((1, 14, 14), "luma"), ((4, 7, 7), "rgb"), ((16, 7, 7), "rgb"), ((16, 112, 112), "luma"), ((2, 8, 4), "rgb")])
def test_lowres_is_its_definition_bit_for_bit(grid, channels):
    """LowRes squashes its grid and copies it out (cheap); the definition upsamples theta first and
    squashes every pixel. Nearest upsampling only copies, so the two are equal to the last bit."""
    p = LowRes(SHAPE, grid, channels)
    theta = np.random.default_rng(4).standard_normal((5, p.dim)) * 3
    t, h, w = grid
    x = theta.reshape(5, t, h, w, -1)
    x = np.repeat(np.repeat(np.repeat(x, SHAPE[0] // t, axis=1), SHAPE[1] // h, axis=2), SHAPE[2] // w, axis=3)
    x = np.repeat(x, 3 // x.shape[-1], axis=-1)[:, : 1 if t == 1 else None]
    got = p(theta)
    assert got.flags.c_contiguous and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.tanh(x).astype(np.float32))


# 4 clips of the embedded corpus's validation split (photographs that neither train nor holdout uses)
VALIDATION = DatasetCarriers(split="validation", num_clips=4, seed=1)


def _config(optimizer: str, budget: int, **kw) -> RunConfig:
    base = RunConfig(
        optimizer=optimizer,
        epsilon=4 / 255,
        codecs=(Codec(preset="ultrafast"),),
        train=DatasetCarriers(num_clips=4),
        validation=VALIDATION,
        validate_every=2,
        holdout=DatasetCarriers(split="holdout", num_clips=8),
        popsize=4,
        budget=budget,
        seed=3,
    )
    return replace(base, **kw)


def _log(folder, split: str = "train") -> list[dict]:
    name = "log.jsonl" if split == "train" else "validation.jsonl"
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def _strict(text: str) -> dict:
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"summary.json holds {c}: not strict JSON"))


@pytest.mark.parametrize("optimizer", ["cma", "nevergrad:TwoPointsDE"])
def test_run_resumes_without_losing_or_repeating(client, tmp_path, optimizer):
    param = make("lowres:7x7", SHAPE)
    straight = Run(client, param, _config(optimizer, 12), tmp_path / "a")
    summary = straight.run(progress=False)
    assert summary["evaluations"] == 12 and summary["generations"] == 3
    for name in ("best.npy", "summary.json", "fitness.png", "holdout_hist.png", "holdout_roc.png", "checkpoint.pkl"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    assert np.load(tmp_path / "a" / "best.npy").shape == (1, 112, 112, 3)
    assert summary["holdout"]["codec"] == "libx264 crf=28 ultrafast"
    versions = client.info().versions  # the x264 level and build are archived with the numbers
    assert (summary["holdout"]["x264_asm"], summary["holdout"]["x264_build"]) == (versions["x264_asm"], versions["x264"])

    # the same run, killed after its first generation, plus a half-logged second generation
    Run(client, param, _config(optimizer, 12), tmp_path / "b").step()
    with (tmp_path / "b" / "log.jsonl").open("a") as f:
        f.write(json.dumps({"generation": 1, "index": 0, "evaluation": 4, "fitness": 9.9}) + "\n")
    with (tmp_path / "b" / "validation.jsonl").open("a") as f:
        f.write(json.dumps({"generation": 1, "candidate": "best", "fitness": 9.9}) + "\n")
    resumed = Run(client, param, _config(optimizer, 12), tmp_path / "b")
    assert resumed.state.generation == 1 and len(_log(tmp_path / "b")) == 4  # the untold line is gone
    assert _log(tmp_path / "b", "validation") == []  # and so is the validation of that generation
    again = resumed.run(progress=False)
    assert [e["evaluation"] for e in _log(tmp_path / "b")] == list(range(12))  # every evaluation exactly once
    # the same evaluations and validations as uninterrupted (generation 1 and, at the end, 2 validated)
    assert _log(tmp_path / "a") == _log(tmp_path / "b") and _log(tmp_path / "a", "validation") == _log(tmp_path / "b", "validation")
    assert [(e["generation"], e["candidate"]) for e in _log(tmp_path / "a", "validation")] == [(1, "best"), (1, "mean"), (2, "best"), (2, "mean")]
    assert again["holdout"] == summary["holdout"] and again["selected"] == summary["selected"]


def test_fresh_training_clips_each_generation(client, tmp_path):
    param = make("dct:8:2", SHAPE)

    def clip_ids(folder, **kw) -> list[list[int]]:
        run = Run(client, param, replace(_config("cma", 100, **kw), popsize=2), folder)
        for _ in range(3):
            run.step()
        return [h["clip_ids"] for h in run.state.history]

    first = clip_ids(tmp_path / "a")
    assert all(len(ids) == 4 for ids in first)
    assert first[0] != first[1] and first[1] != first[2] and first[0] != first[2]  # a different draw each generation
    assert clip_ids(tmp_path / "b") == first  # reproducible: seeded by (run seed, generation)
    assert clip_ids(tmp_path / "c", seed=4) != first
    fixed = clip_ids(tmp_path / "d", fresh_clips=False)
    assert fixed[0] == fixed[1] == fixed[2] == list(client.evaluate(param(np.zeros((1, 2))), carriers=DatasetCarriers(num_clips=4),
                                                                     codecs=Codec(preset="ultrafast")).clip_ids)  # fmt: skip


def test_kept_signature_is_the_best_on_validation(client, tmp_path):
    config = _config("cma", 16, validate_every=1)
    summary = Run(client, make("lowres:7x7", SHAPE), config, tmp_path).run(progress=False)
    validated = _log(tmp_path, "validation")
    assert len(validated) == 2 * 4  # generation best and CMA mean, every generation
    best = max(validated, key=lambda e: e["fitness"])  # the first of equals, like the run's strict '>'
    assert summary["selected"] == {"by": "validation", "generation": best["generation"], "candidate": best["candidate"], "score": best["fitness"]}
    assert summary["validation"]["objective"] == best["fitness"] and summary["validation"]["tpr"] == best["tpr"]
    # best.npy is that candidate: scored again on the validation clips it gives the same objective
    again = client.evaluate(np.load(tmp_path / "best.npy")[None], epsilon=config.epsilon, carriers=config.validation, codecs=config.codecs,
                            target_fpr=config.objective.target_fpr, per_clip_scores=True)  # fmt: skip
    assert config.objective(again)[0] == best["fitness"]


def test_without_validation_the_best_training_objective_is_kept(client, tmp_path):
    # and a clip count larger than the split means the whole split (small real datasets)
    config = replace(_config("cma", 8), validation=None, holdout=DatasetCarriers(split="holdout", num_clips=10**6))
    summary = Run(client, make("dct:8:2", SHAPE), config, tmp_path).run(progress=False)
    trained = _log(tmp_path)
    best = max(trained, key=lambda e: e["fitness"])
    assert not _log(tmp_path, "validation") and summary["validation"] is None
    assert summary["selected"] == {"by": "train", "generation": best["generation"], "candidate": "best", "score": best["fitness"]}
    assert summary["holdout"]["clips"] == 72 and summary["gap"]["tpr"]["validation_minus_holdout"] is None


def test_a_tied_generation_stops_the_run_and_the_report_says_why(client, tmp_path, capsys):
    # tpr on 4 clips at 8/255: every candidate finds all 4, so pycma ends the run on the tie (tolfun
    # here, tolflatfitness on the real corpus); the report says what that means, not a bare condition name
    from codecloop.cli_optimize import print_summary
    from codecloop.objectives import Objective

    config = replace(_config("cma", 64), epsilon=8 / 255, objective=Objective("tpr"), holdout=DatasetCarriers(split="holdout", num_clips=4))
    summary = Run(client, make("lowres:7x7", SHAPE), config, tmp_path).run(progress=False)
    assert summary["stopped"]["by"] == "optimizer" and summary["generations"] < 64 // 4
    tied = [c for c in summary["stopped"]["conditions"] if c in ("tolfun", "tolflatfitness")]
    assert tied, summary["stopped"]
    assert {e["fitness"] for e in _log(tmp_path)} == {1.0}
    print_summary(summary, str(tmp_path))
    out = capsys.readouterr().out
    assert f"({' / '.join(tied)}: the candidates' objective values tied; tpr counts clips, and on 4 training clips every candidate had the same count." in out
    # the same run told by a continuous objective: a tie there is convergence, and no line explains it
    print_summary(summary | {"objective": "centred-separation"}, str(tmp_path))
    assert "objective values tied" not in capsys.readouterr().out


def test_summary_is_strict_json_with_train_validation_holdout(client, tmp_path):
    # epsilon below half a uint8 level changes no pixel: PSNR is infinite, which strict JSON cannot hold
    config = replace(_config("cma", 8), epsilon=1e-4)
    Run(client, make("dct:8:2", SHAPE), config, tmp_path).run(progress=False)
    summary = _strict((tmp_path / "summary.json").read_text())
    assert summary["holdout"]["psnr_db"] is None and summary["config"]["max_seconds"] is None
    assert summary["target_fpr"] == 1 / 64 and summary["objective"] == "centred-separation"
    for split, clips in (("train", 4), ("validation", 4), ("holdout", 8)):
        assert summary[split]["clips"] == clips and summary[split]["separation"] == 0.0 and summary[split]["tpr"] == 0.0
    assert summary["gap"]["objective"]["train_minus_holdout"] == summary["train"]["objective"] - summary["holdout"]["objective"]
    for name in ("log.jsonl", "validation.jsonl"):
        for line in (tmp_path / name).read_text().splitlines():
            assert _strict(line)["psnr_db"] is None


def test_cli_optimize_end_to_end(server_target, tmp_path):
    """Only a time limit (no --budget): the run stops by the clock and reports all three splits."""
    out = subprocess.run(
        [sys.executable, "-m", "codecloop.cli", "optimize", "--target", server_target, "--dataset", "embedded", "--epsilon", "4/255",
         "--max-minutes", "0.15", "--train-clips", "8", "--popsize", "4", "--holdout-clips", "8", "--validation-clips", "4",
         "--validate-every", "2", "--preset", "ultrafast", "--param", "dct:8:3", "--out", str(tmp_path), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = _strict((tmp_path / "summary.json").read_text())
    assert summary["config"]["budget"] is None and summary["generations"] >= 1 and summary["stopped"] == {"by": "max_seconds"}
    assert "stopped by max_seconds" in out.stdout
    assert summary["target_fpr"] == 1 / 64 and summary["selected"]["by"] == "validation"
    assert [summary[s]["clips"] for s in ("train", "validation", "holdout")] == [8, 4, 8]
    # racing is the default: said on stderr, recorded in the config, and fewer clips than P x N scored
    assert "codecloop: racing on (the default" in out.stderr
    assert summary["config"]["racing"] == {"first_clips": None, "eta": None, "finalists": None, "centre_weight": 1.0}
    assert summary["candidate_clips"] < summary["evaluations"] * 8  # P 4, N 8: 4 + 4 + 8 + 8 clips a generation, not 32
    assert f"holdout (8 clips, libx264 crf=28 ultrafast): objective {summary['holdout']['objective']:.4f} TPR" in out.stdout
    for name in ("fitness.png", "holdout_hist.png", "holdout_roc.png", "best.npy"):
        assert (tmp_path / name).stat().st_size > 0


def test_racing_default_and_where_it_is_off_or_refused():
    from codecloop.cli import build_parser
    from codecloop.cli_optimize import racing_choice

    def choice(*flags: str, gradient: bool = False, shape: tuple[int, int, int] = (16, 112, 112)) -> tuple[Racing | None, str]:
        return racing_choice(build_parser().parse_args(["optimize", "--out", "x", *flags]), gradient, shape, 64 << 20)

    assert choice()[0] == Racing() and "racing on (the default" in choice()[1]
    assert choice("--racing", "eta=3")[0] == Racing(eta=3)
    assert choice("--no-racing") == (None, "racing off (--no-racing): every candidate on every training clip")
    assert choice(gradient=True) == (None, "")  # one candidate per step
    off, line = choice("--objective", "tpr")
    assert off is None and "racing off: --objective tpr" in line
    off, line = choice(shape=(16, 256, 256))  # 16 x 12.6 MB: more than one 64 MiB request
    assert off is None and "need more than one request (limit 64 MiB)" in line
    assert choice("--popsize", "4", shape=(16, 256, 256))[0] == Racing()
    with pytest.raises(CodecLoopValueError, match="--racing: the gradient back-end 'cma' evaluates one candidate per step"):
        choice("--racing", gradient=True)
    with pytest.raises(CodecLoopValueError, match="--racing: a race ranks by separation or centred-separation; --objective 'tpr'"):
        choice("--racing", "--objective", "tpr")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["optimize", "--out", "x", "--racing", "--no-racing"])
    with pytest.raises(CodecLoopValueError, match=r"--racing: eta=1 is outside the allowed range \[2, 16\]"):
        choice("--racing", "eta=1")
    with pytest.raises(CodecLoopValueError, match="--racing: 16 candidates of 16x256x256 .* give a smaller --popsize or --no-racing"):
        choice("--racing", shape=(16, 256, 256))
    args = build_parser().parse_args(["optimize", "--out", "x", "--racing", "first_clips=8"])
    with pytest.raises(CodecLoopValueError, match="--racing: first_clips=8 is more than the 6 training clips a generation gets"):
        racing_choice(args, False, (16, 112, 112), 64 << 20, train_clips=6)


def test_a_race_is_one_setting_of_a_run_folder():
    """The default race and the same race spelled out are the same run; off against on is one line."""
    from codecloop.runcheck import check, differences, settings

    base = _config("cma", 8, train=DatasetCarriers(num_clips=8))
    default, spelled, off = (settings(replace(base, racing=r)) for r in (Racing(), Racing(first_clips=4, eta=2, finalists=1), None))
    assert default == spelled and default["racing"] == "on (first_clips 4, eta 2, finalists 1)"
    assert differences(default, off) == ["racing (--racing / --no-racing): on (first_clips 4, eta 2, finalists 1) in the run folder, off now"]
    assert settings(replace(base, train=DatasetCarriers(num_clips=3), racing=Racing()))["racing"] == "on (first_clips 3, eta 2, finalists 1)"
    # settings saved before the race was one setting compare as now
    old = {k: v for k, v in default.items() if k != "racing"} | {"racing.first_clips": None, "racing.eta": None, "racing.finalists": None, "racing.centre_weight": 1.0}
    check(Path("x"), old, default)
    check(Path("x"), {k: v for k, v in off.items() if k != "racing"} | {"racing": None}, off)


def test_patience_stops_early(client, tmp_path):
    config = replace(_config("cma", 400), patience=1, sigma0=1e-9)  # no movement: no improvement
    summary = Run(client, make("dct:8:2", SHAPE), config, tmp_path).run(progress=False)
    assert summary["generations"] <= 3 and summary["stopped"] == {"by": "patience"}


def test_pycma_stop_conditions_end_the_run_and_are_recorded(client, tmp_path):
    """pycma's own es.stop() ends a run (here its maxiter, 2 generations) long before the budget;
    summary.json names the condition. A budget stop is recorded as such."""
    run = Run(client, make("dct:8:2", SHAPE), _config("cma", 400), tmp_path / "a")
    run.backend.es.opts["maxiter"] = 2
    summary = run.run(progress=False)
    assert summary["generations"] == 2 and summary["stopped"] == {"by": "optimizer", "conditions": ["maxiter"]}
    assert _strict((tmp_path / "a" / "summary.json").read_text())["stopped"] == summary["stopped"]
    by_budget = Run(client, make("dct:8:2", SHAPE), _config("cma", 8), tmp_path / "b").run(progress=False)
    assert by_budget["stopped"] == {"by": "budget"} and by_budget["generations"] == 2


def test_unknown_optimizer_and_split(client, tmp_path):
    with pytest.raises(CodecLoopValueError, match="nevergrad has no optimizer"):
        Run(client, make("dct:8:2", SHAPE), _config("nevergrad:NoSuchThing", 8), tmp_path)
    with pytest.raises(CodecLoopValueError, match=r"holdout.split: dataset 'embedded' has no split 'test'"):
        Run(client, make("dct:8:2", SHAPE), replace(_config("cma", 8), holdout=DatasetCarriers(split="test")), tmp_path)


def test_a_racing_run_scores_fewer_clips_and_keeps_the_race_winner(client, tmp_path):
    """Each generation is a race: the log says how many clips each candidate got and its rank; the
    generation's best is the race's winner; the run repeats exactly (seeded draws, deterministic race)."""
    from codecloop import Racing

    config = _config("cma", 8, train=DatasetCarriers(num_clips=8), racing=Racing(first_clips=2))
    assert config.racing == Racing(first_clips=2, centre_weight=1.0)  # ranks by the objective, centred-separation
    run = Run(client, make("lowres:7x7", SHAPE), config, tmp_path / "a")
    summary = run.run(progress=False)
    log = _log(tmp_path / "a")
    for g in (0, 1):  # schedule (4, 2), (2, 4), (1, 8): clips 2, 2, 4, 8
        lines = [e for e in log if e["generation"] == g]
        assert sorted(e["clips"] for e in lines) == [2, 2, 4, 8]
        assert sorted(e["race_rank"] for e in lines) == [0, 1, 2, 3]
        winner = next(e for e in lines if e["race_rank"] == 0)
        assert winner["clips"] == 8 and run.state.history[g]["max"] == winner["fitness"]
        assert run.state.history[g]["candidate_clips"] == 16
    assert summary["candidate_clips"] == 32 < summary["evaluations"] * 8
    Run(client, make("lowres:7x7", SHAPE), config, tmp_path / "b").run(progress=False)
    assert _log(tmp_path / "b") == log


def test_a_ranked_run_is_not_stopped_by_its_constant_best_rank(client, tmp_path):
    """Told ranks, CMA-ES sees the same best value every generation; pycma's tolfunhist stopped such
    runs after 10 generations. A raced run now runs to its budget."""
    config = _config("cma", 4 * 13, train=DatasetCarriers(num_clips=4), racing=Racing(first_clips=2), validation=None)
    summary = Run(client, make("dct:8:2", SHAPE), config, tmp_path).run(progress=False)
    assert summary["generations"] == 13 and summary["stopped"] == {"by": "budget"}


def test_checkpoints_at_most_every_interval_and_a_resume_reruns_the_rest_exactly(client, tmp_path, monkeypatch):
    """Checkpoints after the first generation, after validations, at the end, else at most every
    CHECKPOINT_EVERY_S: a run killed in between goes back to the last one and repeats the same
    generations, so its log equals an uninterrupted run's."""
    import pickle

    from codecloop import run as run_module

    monkeypatch.setattr(run_module, "CHECKPOINT_EVERY_S", 1e9)  # only the first, validations and the end
    config = _config("cma", 4 * 5, validation=None)
    param = make("dct:8:2", SHAPE)
    straight = Run(client, param, config, tmp_path / "a")
    straight.run(progress=False)
    cut = Run(client, param, config, tmp_path / "b")
    for _ in range(3):
        cut.step()
    assert pickle.loads((tmp_path / "b" / "checkpoint.pkl").read_bytes())["state"].generation == 1  # not 3
    resumed = Run(client, param, config, tmp_path / "b")  # "killed" after 3 generations
    assert resumed.state.generation == 1 and {e["generation"] for e in _log(tmp_path / "b")} == {0}
    resumed.run(progress=False)
    assert _log(tmp_path / "b") == _log(tmp_path / "a")
    assert pickle.loads((tmp_path / "b" / "checkpoint.pkl").read_bytes())["state"].generation == 5  # written at the end


def test_racing_needs_a_mean_objective():
    from codecloop import Racing

    with pytest.raises(CodecLoopValueError, match="racing: a race ranks by separation or centred-separation; objective 'tpr'"):
        _config("cma", 8, objective="tpr", racing=Racing())
    with pytest.raises(CodecLoopValueError, match="racing.centre_weight: 3"):
        _config("cma", 8, racing=Racing(centre_weight=3))


def test_ctrl_c_reports_from_the_last_checkpoint(client, tmp_path):
    """Ctrl-C during a generation: the run goes back to its last checkpoint, writes its report from
    there with stopped = interrupt, and the folder resumes at the generation that was cut off."""

    class CutOff(Run):
        def step(self):
            if self.state.generation == 2:
                self.backend.ask()  # the third generation under way: asked, never told
                raise KeyboardInterrupt
            return super().step()

    param = make("dct:8:2", SHAPE)
    summary = CutOff(client, param, _config("cma", 400), tmp_path).run(progress=False)
    assert summary["stopped"] == {"by": "interrupt"} and summary["generations"] == 2 and summary["evaluations"] == 8
    assert {e["generation"] for e in _log(tmp_path)} == {0, 1}
    resumed = Run(client, param, _config("cma", 400), tmp_path)
    assert resumed.resumed and resumed.state.generation == 2
