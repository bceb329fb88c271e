"""The fitness function is a function: the same request gives the same answer, on every repeat, in
every process, and at every x264 SIMD level of the determinism class (x264_asm.LEVELS).

These would have caught the AVX-512 nondeterminism (x264's own CPU detection picks its AVX-512 code
on this machine class, and the same clip then encodes to several different bitstreams): every
preset, real-looking content (codecloop.testing: motion, texture, noise, scene cuts), the fused
swscale -> x264 path and the staged one, the worker path, and two server processes.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import grpc
import numpy as np
import pytest

import codecloop
from codecloop.testing import realistic_clip
from codecloop_server import x264_asm
from codecloop_server.codecs import PRESETS, CodecSettings
from codecloop_server.convert import rgb_to_yuv420p
from codecloop_server.reference import encode_yuv420p
from codecloop_server.transcode import transcode_rgb
from codecloop_server.versions import x264_build
from codecloop_wire.errors import CodecLoopValueError
from codecloop_wire.v1 import codecloop_pb2 as pb
from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc
from tests.conftest import _start_server, block_signature

SUPPORTED = [level for level in x264_asm.LEVELS if x264_asm.supported(level)]


def _digest(a: np.ndarray | bytes) -> str:
    return hashlib.sha256(a if isinstance(a, bytes) else a.tobytes()).hexdigest()


def test_default_level_is_the_fastest_deterministic_one():
    assert SUPPORTED, "this machine has none of x264_asm.LEVELS (no SSSE3?)"
    assert x264_asm.resolve("auto") == SUPPORTED[0] == CodecSettings().x264_asm
    assert CodecSettings().ffmpeg_args()[-2:] == ["-x264-params", f"asm={SUPPORTED[0]}"]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_level_gives_one_bitstream(preset):
    """Each supported level of the class, twice each, staged and fused: one bitstream per preset."""
    clip = realistic_clip(PRESETS.index(preset), cut=preset in ("medium", "veryslow"))
    yuv = rgb_to_yuv420p(clip)
    bitstreams, decoded = set(), set()
    for level in SUPPORTED:
        settings = CodecSettings(preset=preset, x264_asm=level)
        for _ in range(2):
            bitstreams.add(_digest(encode_yuv420p(yuv, settings)))
            decoded.add(_digest(transcode_rgb(clip, settings)[0]))
    assert len(bitstreams) == 1, f"{preset}: {len(bitstreams)} different bitstreams over levels {SUPPORTED}"
    assert len(decoded) == 1, f"{preset}: fused path gave {len(decoded)} different decoded clips"


@pytest.mark.parametrize("preset", ["medium", "veryfast", "slow"])
def test_repeats_on_realistic_content(preset):
    """Where x264's AVX-512 code gave 2-4 answers in 12 tries per clip, the default level gives one."""
    settings = CodecSettings(preset=preset)
    for seed in range(4):
        clip = realistic_clip(seed, cut=seed % 2 == 1)
        answers = {_digest(transcode_rgb(clip, settings)[0]) for _ in range(12)}
        assert len(answers) == 1, f"{preset} clip {seed}: {len(answers)} different answers in 12 encodes"


def test_swscale_conversions_agree_across_simd_levels():
    """FFmpeg's own SIMD (swscale's rgb <-> yuv420p) limited to SSSE3 .. AVX2, or left to detect
    (AVX-512 here), converts identically: av_force_cpu_flags on PyAV's own libavutil, in a fresh
    process so that no other test sees the forced flags."""
    code = textwrap.dedent(
        """
        import ctypes, glob, hashlib
        import av
        from codecloop.testing import realistic_clip
        from codecloop_server.convert import rgb_to_yuv420p, yuv420p_to_rgb
        lib = ctypes.CDLL(glob.glob(av.__path__[0] + ".libs/libavutil-*.so*")[0])
        SSSE3 = 0x1 | 0x2 | 0x8 | 0x10 | 0x1000 | 0x40 | 0x80
        SSE42 = SSSE3 | 0x100 | 0x200
        AVX = SSE42 | 0x4000
        AVX2 = AVX | 0x8000 | 0x10000 | 0x20000 | 0x40000
        clip = realistic_clip(5, cut=True)
        for flags in (-1, AVX2, AVX, SSE42, SSSE3):
            lib.av_force_cpu_flags(flags)  # new swscale contexts (one per thread) pick it up
            import threading
            out = []
            def run():
                yuv = rgb_to_yuv420p(clip)
                out.append(hashlib.sha256(yuv.tobytes() + yuv420p_to_rgb(yuv).tobytes()).hexdigest())
            t = threading.Thread(target=run); t.start(); t.join()
            print(out[0])
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = result.stdout.split()
    assert len(lines) == 5 and len(set(lines)) == 1, lines


def test_resolve_checks_the_cpu(monkeypatch):
    monkeypatch.setattr(x264_asm, "cpu_features", lambda: frozenset({"SSSE3", "SSE41", "SSE42"}))
    assert x264_asm.resolve("auto") == "SSE4.2"
    with pytest.raises(CodecLoopValueError, match=r"x264_asm: this CPU lacks .*'AVX'.* level 'AVX'"):
        x264_asm.resolve("AVX")
    with pytest.raises(CodecLoopValueError, match=r"x264_asm: unknown level 'AVX512'"):
        x264_asm.resolve("AVX512")
    monkeypatch.setattr(x264_asm, "cpu_features", lambda: frozenset({"SSE2", "SSE3"}))
    with pytest.raises(CodecLoopValueError, match=r"none of the deterministic x264 levels.*'native'"):
        x264_asm.resolve("auto")
    assert x264_asm.resolve("native") == "native"


@pytest.fixture(scope="module")
def two_servers():
    """Two fresh server processes with the result cache off (every answer is a new encode)."""
    procs = [_start_server(["--result-cache-entries", "0", "--clean-cache-mib", "0"]) for _ in range(2)]
    yield [target for _, target in procs]
    for proc, _ in procs:
        proc.terminate()
        proc.wait(timeout=30)


def test_servers_answer_identically(two_servers):
    """The tester's request (2 block candidates x 8 dataset clips, medium and veryfast), 3 times
    on each of two servers with no caches: every per-clip score identical; inline real-looking
    clips through Transcode identical to the in-process fused path."""
    sigs = np.stack([block_signature(s, 8) for s in (1, 2)])
    codecs = [codecloop.Codec(preset="medium"), codecloop.Codec(preset="veryfast")]
    inline = np.stack([realistic_clip(s, cut=s == 1) for s in range(3)])
    answers, decoded = set(), set()
    for target in two_servers:
        with codecloop.Client(target, timeout=300) as client:
            info = client.info()
            assert info.versions["x264_asm"] == x264_asm.default() and info.versions["x264"] == x264_build()
            for _ in range(3):
                res = client.evaluate(sigs, epsilon=4 / 255, carriers=codecloop.DatasetCarriers(num_clips=8), codecs=codecs, per_clip_scores=True)
                assert {s.codec.x264_asm for c in res.candidates for s in c.codecs} == {x264_asm.default()}
                answers.add(repr([(s.clean_scores, s.poisoned_scores, s.clean_bytes_mean, s.poisoned_bytes_mean) for c in res.candidates for s in c.codecs]))
                out = client.transcode(carriers=inline, codec=codecloop.Codec(preset="medium"))
                assert out.codec.x264_asm == x264_asm.default() and out.codec.x264_build == x264_build()
                decoded.add(_digest(out.decoded))
    assert len(answers) == 1, f"{len(answers)} different answers in 6 tries on 2 servers"
    local = np.stack([transcode_rgb(c, CodecSettings(preset="medium"))[0] for c in inline])
    assert decoded == {_digest(local)}


def test_request_may_pin_the_level(two_servers):
    stub_channel = grpc.insecure_channel(two_servers[0])
    stub = pb_grpc.CodecLoopStub(stub_channel)
    carriers = pb.Carriers(dataset=pb.DatasetCarriers(num_clips=1))
    other = next(level for level in x264_asm.LEVELS if level != x264_asm.default())
    with pytest.raises(grpc.RpcError) as err:
        stub.Transcode(pb.TranscodeRequest(carriers=carriers, codec=pb.CodecSettings(x264_asm=other)), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"codec.x264_asm: '{other}'; this server runs x264 x264_asm = '{x264_asm.default()}'" in err.value.details()
    reply = stub.Transcode(pb.TranscodeRequest(carriers=carriers, codec=pb.CodecSettings(x264_asm=x264_asm.default(), x264_build=x264_build())), timeout=60)
    assert reply.codec.x264_asm == x264_asm.default()
    stub_channel.close()
