"""Every request default is written once (codecloop_wire.defaults): the proto's comments state the
same values, the server resolves an empty request to them, the SDK sends nothing it was not given,
and the CLI's defaults are the same values."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from codecloop import Codec, DatasetCarriers, EvaluateOptions
from codecloop.cli import build_parser
from codecloop_wire import defaults
from codecloop_wire.tensors import to_tensor
from codecloop_wire.v1 import codecloop_pb2 as pb
from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc

PROTO = (Path(__file__).parent.parent / "proto" / "codecloop" / "v1" / "codecloop.proto").read_text()

# proto field -> the default it must document
DOCUMENTED = {
    "dataset": defaults.DATASET,
    "split": defaults.SPLIT,
    "num_clips": defaults.NUM_CLIPS,
    "seed": defaults.SEED,
    "codec": defaults.CODEC,
    "crf": defaults.CRF,
    "preset": defaults.PRESET,
    "pix_fmt": defaults.PIX_FMT,
    "gop": defaults.GOP,
    "fps": defaults.FPS,
    "name": defaults.SCORER,
    "target_fpr": defaults.TARGET_FPR,
    "epsilon": defaults.EPSILON,
    "eta": defaults.RACE_ETA,
    "finalists": defaults.RACE_FINALISTS,
    "centre_weight": defaults.RACE_CENTRE_WEIGHT,
}


def _value(text: str) -> object:
    text = text.strip()
    if text.startswith('"'):
        return text.strip('"')
    return float(Fraction(text))


@pytest.mark.parametrize("field", sorted(DOCUMENTED))
def test_proto_comments_state_the_defaults(field):
    found = re.findall(rf"\b{field} = \d+;[^\n]*?// [^\n]*?\bdefault (\"[^\"]*\"|[\d./]+)", PROTO)
    assert found, f"no documented default for {field}"
    expected = DOCUMENTED[field]
    for text in found:  # epsilon is documented twice (evaluate, transcode)
        value = _value(text)
        assert value == (expected if isinstance(expected, str) else pytest.approx(float(expected))), (field, text)


def test_sdk_sends_only_what_it_was_given():
    req = EvaluateOptions().to_proto()
    assert not req.HasField("epsilon") and not req.codecs and req.carriers.WhichOneof("source") is None
    assert not req.scorer.HasField("name") and req.decision.WhichOneof("rule") is None
    assert not any(Codec().to_proto().HasField(f) for f in ("crf", "preset", "gop", "fps", "codec", "pix_fmt"))
    assert not any(DatasetCarriers().to_proto().dataset.HasField(f) for f in ("dataset", "split", "num_clips", "seed"))
    crf0 = Codec(crf=0).to_proto()  # 0 is lossless, a value: sent
    assert crf0.HasField("crf") and crf0.crf == 0
    given = EvaluateOptions(epsilon=2 / 255, target_fpr=0.0).to_proto()
    assert given.epsilon == 2 / 255 and given.decision.WhichOneof("rule") == "target_fpr" and given.decision.target_fpr == 0.0


def test_resolved_fills_the_server_defaults():
    c = Codec(crf=0).resolved()
    assert (c.codec, c.crf, c.preset, c.pix_fmt, c.gop, c.fps) == ("libx264", 0, defaults.PRESET, defaults.PIX_FMT, defaults.GOP, defaults.FPS)
    d = DatasetCarriers(num_clips=3).resolved()
    assert (d.dataset, d.split, d.num_clips, d.seed) == (defaults.DATASET, defaults.SPLIT, 3, defaults.SEED)


def test_unknown_option_is_refused_by_name():
    from codecloop_wire.errors import CodecLoopValueError

    with pytest.raises(CodecLoopValueError, match="epsilonn: not an evaluation option"):
        EvaluateOptions().updated(epsilonn=0.1)


@pytest.mark.parametrize("command", ["evaluate", "optimize", "diagnose"])
def test_cli_defaults_are_the_same_values(command):
    argv = {"evaluate": ["evaluate", "--random", "pixel"], "optimize": ["optimize", "--out", "x"], "diagnose": ["diagnose", "--signature", "x.npy"]}
    args = build_parser().parse_args(argv[command])
    assert args.epsilon == defaults.EPSILON
    assert getattr(args, "target_fpr", defaults.TARGET_FPR) == defaults.TARGET_FPR
    assert args.preset == defaults.PRESET
    assert getattr(args, "scorer", defaults.SCORER) == defaults.SCORER
    assert getattr(args, "dataset", defaults.DATASET) == defaults.DATASET


def test_an_empty_request_resolves_to_the_defaults(server_target):
    """A bare request (one candidate, nothing else set) as an outside client sends it."""
    import grpc

    sig = np.zeros((1, 112, 112, 3), np.float32)
    with grpc.insecure_channel(server_target) as channel:
        resp = pb_grpc.CodecLoopStub(channel).EvaluateSignature(pb.EvaluateRequest(candidates=[to_tensor(sig)]), timeout=300)
    assert resp.epsilon == pytest.approx(defaults.EPSILON) and resp.scorer == defaults.SCORER and resp.num_clips == defaults.NUM_CLIPS
    codec = resp.results[0].codecs[0].codec
    assert (codec.codec, codec.crf, codec.preset, codec.pix_fmt, codec.gop, codec.fps) == (
        defaults.CODEC, defaults.CRF, defaults.PRESET, defaults.PIX_FMT, defaults.GOP, defaults.FPS,
    )  # fmt: skip
    s = resp.results[0].codecs[0]
    # target_fpr 1/64 on 32 clean clips: no clean clip may pass, the threshold is the highest clean score
    assert s.fpr == 0.0
