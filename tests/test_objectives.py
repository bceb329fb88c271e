"""Objectives from known per-clip scores, strict JSON reports, CLI fractions and defaults, plot figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from codecloop import Codec, jsonutil
from codecloop.cli import build_parser
from codecloop.objectives import Objective
from codecloop.results import CandidateResult, CodecStats, EvaluateResult
from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.stats import Decision, detection_stats

CLEAN = np.array([-0.02, -0.01, 0.0, 0.01, 0.03, -0.03, 0.02, 0.0])
POISONED = np.array([0.05, 0.04, 0.00, 0.06, 0.02, 0.01, 0.08, 0.03])


def stats(clean: np.ndarray, poisoned: np.ndarray, codec: Codec = Codec(), target_fpr: float = 1 / 64) -> CodecStats:
    """CodecStats as the server computes them (same stats module), with per-clip scores."""
    s = detection_stats(clean, poisoned, Decision(target_fpr=target_fpr))
    return CodecStats(codec=codec, psnr_db=math.inf, clean_bytes_mean=0.0, poisoned_bytes_mean=0.0,
                      clean_scores=clean, poisoned_scores=poisoned, **s)  # fmt: skip


def test_objectives_from_known_scores():
    f = 1 / 64
    sep = POISONED.mean() - CLEAN.mean()
    assert Objective("separation").scores(CLEAN, POISONED) == pytest.approx(sep)
    shifted = CLEAN - 0.01  # clean scores off centre by -0.01 on average (mean(CLEAN) is 0)
    assert Objective("centred-separation", centre_weight=2.0).scores(shifted, POISONED) == pytest.approx(sep + 0.01 - 2.0 * 0.01)
    assert Objective("dprime").scores(CLEAN, POISONED) == pytest.approx(sep / math.sqrt(0.5 * (CLEAN.var() + POISONED.var())), rel=1e-6)
    # 8 clean clips, FPR 1/64 -> threshold = the highest clean score 0.03; poisoned above it: 0.05 0.04 0.06 0.08
    assert Objective("tpr", target_fpr=f).scores(CLEAN, POISONED) == 4 / 8
    assert Objective("tpr", target_fpr=1 / 4).scores(CLEAN, POISONED) == 6 / 8  # 2 clean above 0.01 allowed
    assert Objective("auc").scores(CLEAN, POISONED) == pytest.approx(stats(CLEAN, POISONED).auc)
    # quantile(p, 0.1): sorted p = 0, .01, .02, ...; position 0.7 -> 0.007; quantile(c, 63/64): between 0.02 and 0.03
    q_clean = 0.02 + (7 * 63 / 64 - 6) * 0.01
    margin = 0.007 - q_clean
    assert Objective("margin", target_fpr=f, poisoned_quantile=0.1).scores(CLEAN, POISONED) == pytest.approx(margin)
    assert Objective("centred-margin", f, 0.1, centre_weight=2.0).scores(shifted, POISONED) == pytest.approx(
        0.007 - (q_clean - 0.01) - 2.0 * 0.01
    )


def test_worst_codec_decides_and_result_order():
    good, bad = stats(CLEAN, POISONED), stats(CLEAN, POISONED - 0.03, Codec(crf=35))
    result = EvaluateResult(
        candidates=(CandidateResult(0.0, (good, bad)), CandidateResult(0.0, (good,))), scorer="blind", epsilon=0.01, num_clips=8
    )
    values = Objective("margin")(result)
    assert values.shape == (2,)
    assert values[0] == Objective("margin").codec(bad) < values[1] == Objective("margin").codec(good)


def test_objective_needs_per_clip_scores_and_checks_parameters():
    full = stats(CLEAN - 0.004, POISONED)
    no_scores = CodecStats(**{**full.__dict__, "clean_scores": None, "poisoned_scores": None})
    for name in ("separation", "centred-separation"):  # from the server's means, equal to the per-clip formula
        assert not Objective(name).needs_per_clip and Objective("margin").needs_per_clip
        assert Objective(name).codec(no_scores) == Objective(name).scores(CLEAN - 0.004, POISONED)
    with pytest.raises(CodecLoopValueError, match="per_clip_scores=True"):
        Objective("margin").codec(no_scores)
    with pytest.raises(CodecLoopValueError, match="objective: 'sep' is not one of"):
        Objective("sep")
    with pytest.raises(CodecLoopValueError, match=r"target_fpr: 1.0 is outside the allowed range \[0, 1\)"):
        Objective(target_fpr=1.0)
    with pytest.raises(CodecLoopValueError, match=r"poisoned_quantile: 0 is outside"):
        Objective(poisoned_quantile=0)


def test_strict_json_has_no_infinity_or_nan():
    text = jsonutil.dumps({"psnr_db": math.inf, "x": np.float64("nan"), "n": np.int64(3), "a": np.array([1.0, -math.inf]),
                           "codec": Codec(), "t": (1, 2)})  # fmt: skip
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    assert back == {"psnr_db": None, "x": None, "n": 3, "a": [1.0, None], "codec": {**Codec().__dict__}, "t": [1, 2]}
    with pytest.raises(ValueError):  # what the helper protects against: the stdlib default writes Infinity
        json.dumps({"psnr_db": math.inf}, allow_nan=False)


@pytest.mark.parametrize("command", [["evaluate", "--random", "pixel"], ["optimize", "--out", "x"]])
def test_target_fpr_parses_like_epsilon_and_defaults_agree(command):
    parser = build_parser()
    assert parser.parse_args(command).target_fpr == 1 / 64  # evaluate and optimize: same default FPR
    args = parser.parse_args([*command, "--target-fpr", "1/128", "--epsilon", "2/255"])
    assert args.target_fpr == 1 / 128 and args.epsilon == 2 / 255
    assert parser.parse_args([*command, "--target-fpr", "0.01"]).target_fpr == 0.01


@pytest.mark.parametrize(
    "flag,value,message",
    [("--target-fpr", "1", r"argument --target-fpr: 1 is outside the allowed range \[0, 1\)"),
     ("--target-fpr", "1/0", "argument --target-fpr: '1/0' is not a number"),
     ("--epsilon", "0", r"argument --epsilon: 0 is outside the allowed range \(0, 1\]"),
     ("--epsilon", "4/2", r"argument --epsilon: 4/2 = 2 is outside the allowed range \(0, 1\]"),
     ("--epsilon", "abc", "argument --epsilon: 'abc' is not a number")],
)  # fmt: skip
def test_bad_fractions_name_the_field_and_range(capsys, flag, value, message):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["optimize", "--out", "x", flag, value])
    assert __import__("re").search(message, capsys.readouterr().err)


def test_help_shows_defaults():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    text = sub["optimize"].format_help()
    for expected in ("(default: centred-separation)", "(default: 1/64)", "(default: 4/255)", "(default: lowres:7x7:rgb:t=all)", "default: medium"):
        assert expected in " ".join(text.split()), expected
    assert "(default: 1/64)" in " ".join(sub["evaluate"].format_help().split())


def test_plot_figures_roc_log_axis_and_histogram_counts():
    from codecloop import plots

    s = stats(CLEAN, POISONED)
    roc = plots.roc_figure([s], epsilon=2 / 255, target_fpr=1 / 64)
    ax = roc.axes[0]
    assert ax.get_xscale() == "log"
    marker = next(c for c in ax.containers if c.get_label().startswith("threshold:"))
    point = marker.lines[0]  # the operating point, drawn with its 95 % intervals as error bars
    assert list(point.get_xdata()) == [1 / 16] and list(point.get_ydata()) == [s.tpr]  # FPR 0 drawn at 1/(2n)
    assert f"TPR {s.true_positives}/{s.num_clips}" in marker.get_label()
    hist = plots.histogram_figure([s], epsilon=2 / 255).axes[0]
    assert hist.get_ylabel() == "clips"
    assert all(part in hist.get_title() for part in ("held-out", "libx264 crf=28 medium", "ε = 2/255", "n = 8 clips"))
    counts = sum(p.get_height() for p in hist.patches)
    assert counts == 16  # 8 clean + 8 poisoned clips, as counts (not densities)


def test_cli_evaluate_json_is_strict(server_target, tmp_path):
    """An epsilon below half a uint8 level changes no pixel: PSNR +inf is written as null."""
    import subprocess
    import sys

    path = tmp_path / "r.json"
    out = subprocess.run(
        [sys.executable, "-m", "codecloop.cli", "evaluate", "--target", server_target, "--random", "pixel", "--epsilon", "1/1000",
         "--clips", "2", "--preset", "ultrafast", "--json", str(path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    stats_ = result["candidates"][0]["codecs"][0]
    assert stats_["psnr_db"] is None and stats_["separation"] == 0.0 and len(stats_["clean_scores"]) == 2
