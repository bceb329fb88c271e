"""Reliability (issue 21), each against a real server on loopback with real codecs: work and memory
admitted by what a channel makes (not by the carrier), conversions that never reach FFmpeg's image
size limit, SVT-AV1's bitrate mode under 64 px refused, echoed strings bounded, every RPC logged
with its true status, start-up that a signal or the parent's death stops, and smaller edge cases."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from codecloop_server import memory
from codecloop_server.channels import Channel, FrameRate, Resize
from codecloop_server.codecs import MIN_SIZE, CodecSettings
from codecloop_server.convert import _IMAGE_LIMIT, frames_per_call
from codecloop_server.transcode import transcode_rgb
from codecloop_wire.tensors import from_tensor, to_tensor
from codecloop_wire.v1 import codecloop_pb2 as pb
from codecloop_wire.v1 import codecloop_pb2_grpc as pb_grpc
from tests.conftest import SERVER_LINES, block_signature
from tests.test_faults_redteam import Server

MIB = 1 << 20


def _status(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        return err.code(), err.details()


def _channel(*steps: pb.ChannelStep, **kw) -> pb.Channel:
    return pb.Channel(steps=list(steps), **kw)


def _resize(w: int, h: int) -> pb.ChannelStep:
    return pb.ChannelStep(resize=pb.ResizeStep(width=w, height=h))


def _fps(fps: int) -> pb.ChannelStep:
    return pb.ChannelStep(frame_rate=pb.FrameRateStep(fps=fps))


def _encode(**kw) -> pb.ChannelStep:
    return pb.ChannelStep(encode=pb.CodecSettings(**kw))


def _evaluate(channels=(), codecs=(), dataset: str = "embedded", **kw) -> pb.EvaluateRequest:
    shape = (1, 112, 112) if dataset == "embedded" else (1, 32, 48)
    sig = block_signature(3, shape=shape) if dataset == "embedded" else np.zeros((1, 32, 48, 3), np.float32)
    return pb.EvaluateRequest(
        candidates=[to_tensor(sig)], channels=list(channels), codecs=list(codecs),
        carriers=pb.Carriers(dataset=pb.DatasetCarriers(dataset=dataset, num_clips=1)), **kw,
    )  # fmt: skip


@pytest.fixture()
def server(request):
    """A one-worker server with the flags the test names (test_faults_redteam.Server)."""
    srv = Server(*request.param)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def stub(server_target):
    with grpc.insecure_channel(server_target) as channel:
        yield pb_grpc.CodecLoopStub(channel)


# --- 1: conversions chunked under FFmpeg's image limit ---------------------------------------


def test_frames_per_call_stays_under_the_image_limit_for_every_legal_size():
    """(k W + 128)(H + 128) < INT_MAX / 8 for the chunk of k frames, at every legal side and count."""
    sides = [MIN_SIZE, 18, 100, 496, 1280, 4094, 8192]
    for h in sides:
        for w in sides:
            for t in (1, 16, 3840, 240 * 64):
                k = frames_per_call(t, h, w)
                assert 1 <= k <= t
                assert (k * w + 128) * (h + 128) < _IMAGE_LIMIT


def test_channel_that_makes_a_wide_clip_is_served_bit_exact(stub):
    """Inline 16x16 clips at 15 fps -> 240 fps (256 frames) -> 8192x16: one side-by-side swscale call
    on all frames was 2.1 M pixels wide, over FFmpeg's limit (INTERNAL before). Now served, by
    Transcode and Evaluate, and the same as the channel run here frame by frame."""
    clips = np.random.default_rng(5).integers(0, 256, (1, 16, 16, 16, 3), dtype=np.uint8)
    channel = _channel(_fps(240), _resize(8192, 16), _encode(preset="ultrafast", crf=30), input_fps=15)
    reply = stub.Transcode(pb.TranscodeRequest(carriers=pb.Carriers(clips=to_tensor(clips, "uint8")), channel=channel), timeout=300)
    ours = Channel((FrameRate(240), Resize(width=8192, height=16), CodecSettings(preset="ultrafast", crf=30, fps=240)), input_fps=15)
    expected, _ = ours.apply(clips[0])
    np.testing.assert_array_equal(from_tensor(reply.decoded, "decoded")[0], expected)
    sig = to_tensor(np.zeros((1, 16, 16, 3), np.float32))
    req = pb.EvaluateRequest(candidates=[sig], channels=[channel], carriers=pb.Carriers(clips=to_tensor(clips, "uint8")))
    assert len(stub.EvaluateSignature(req, timeout=300).results) == 1


# --- 2: SVT-AV1 in bitrate mode under 64 px ------------------------------------------------------


def test_svtav1_bitrate_under_64_px_is_invalid_argument_naming_the_field(stub):
    code, details = _status(lambda: stub.EvaluateSignature(
        _evaluate([_channel(pb.ChannelStep(resize=pb.ResizeStep(scale=0.5)), _encode(codec="libsvtav1", bitrate_kbps=150))]), timeout=60))  # fmt: skip
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("channels[0].steps[1].encode.bitrate_kbps: libsvtav1 in bitrate mode needs width and height of at least 64")
    assert "56x56" in details
    code, details = _status(lambda: stub.EvaluateSignature(
        _evaluate(codecs=[pb.CodecSettings(codec="libsvtav1", bitrate_kbps=150)], dataset="tiny"), timeout=60))  # fmt: skip
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("codecs[0].bitrate_kbps: libsvtav1"), details
    # at 64 x 64 bitrate mode works; under it crf still does
    clips = np.random.default_rng(1).integers(0, 256, (1, 4, 64, 64, 3), dtype=np.uint8)
    carriers = pb.Carriers(clips=to_tensor(clips, "uint8"))
    stub.Transcode(pb.TranscodeRequest(carriers=carriers, codec=pb.CodecSettings(codec="libsvtav1", bitrate_kbps=150)), timeout=120)
    stub.EvaluateSignature(_evaluate([_channel(pb.ChannelStep(resize=pb.ResizeStep(scale=0.5)), _encode(codec="libsvtav1", crf=40))]), timeout=120)


# --- 3: memory and work admitted by what the channel makes ----------------------------------------


def test_channel_over_the_worker_bound_is_refused_naming_the_step(stub):
    """One candidate x one clip, resized to 4096 x 4096: about 7 GiB per worker; refused at once."""
    start = time.monotonic()
    for method in ("EvaluateSignature", "Transcode"):
        channel = _channel(_encode(preset="ultrafast"), _resize(4096, 4096), _encode(preset="ultrafast"))
        if method == "Transcode":
            req = pb.TranscodeRequest(carriers=pb.Carriers(dataset=pb.DatasetCarriers(num_clips=1)), channel=channel)
        else:
            req = _evaluate([channel])
        code, details = _status(lambda m=method, r=req: getattr(stub, m)(r, timeout=60))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        field = "channel" if method == "Transcode" else "channels[0]"
        assert details.startswith(f"{field}.steps[2].encode: 16 frames of 4096x4096 here"), details
        assert "max_worker_memory_bytes = 2147483648" in details
    assert time.monotonic() - start < 10  # refused before any encode
    # the frame rate counts too: 1 fps -> 240 fps makes 3840 frames of each clip
    code, details = _status(lambda: stub.EvaluateSignature(_evaluate([_channel(_fps(240), _resize(1280, 1280), _encode(preset="ultrafast"), input_fps=1)]), timeout=60))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith("channels[0].steps"), details
    assert "3840 frames of 1280x1280" in details


def test_work_counts_the_largest_step_not_the_carrier(stub):
    """max_work_pixels (2^31) against candidates x clips x each channel's largest frames x H x W."""
    sigs = [to_tensor(block_signature(s, shape=(1, 112, 112))) for s in range(20)]
    channel = _channel(_resize(1024, 1024), _encode(preset="ultrafast"))  # 16 M pixels per clip
    req = pb.EvaluateRequest(candidates=sigs, channels=[channel], carriers=pb.Carriers(dataset=pb.DatasetCarriers(num_clips=8)))
    code, details = _status(lambda: stub.EvaluateSignature(req, timeout=60))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "exceeds the server limit max_work_pixels" in details and "channels[0].steps[1].encode, makes 16777216 pixels" in details


def _largest_admitted_side(limit_bytes: int) -> int:
    """The largest even square side S such that Resize(S x S) + an encode on 16x112x112 carriers is admitted."""
    lo, hi = 16, 8192
    while hi - lo > 2:
        mid = (lo + hi) // 4 * 2
        fp = memory.channel_footprint(Channel((Resize(width=mid, height=mid), CodecSettings())), (16, 112, 112), "c")
        lo, hi = (mid, hi) if memory.WORKER_BASE_BYTES + fp.task_bytes <= limit_bytes else (lo, mid)
    return lo


@pytest.mark.parametrize("server", [("--max-worker-memory-mib", "1024", "--result-cache-entries", "0")], indirect=True)
def test_worst_admitted_channel_stays_under_the_worker_bound(server):
    """The largest resize the 1024 MiB bound admits runs (x264 medium) with the worker's peak RSS
    under the bound; one step larger is refused; the request's worker charge is held while it runs."""
    side = _largest_admitted_side(1024 * MIB)
    assert side >= 512
    over = _channel(_resize(side + 2, side + 2), _encode())
    code, details = _status(lambda: server.stub.EvaluateSignature(_evaluate([over]), timeout=60))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_worker_memory_bytes = 1073741824" in details, details
    assert server.load()["worker_memory_limit_bytes"] == 1024 * MIB
    worker = server.worker()
    reply = server.stub.EvaluateSignature(_evaluate([_channel(_resize(side, side), _encode())]), timeout=600)
    assert len(reply.results) == 1
    status = Path(f"/proc/{worker}/status").read_text()
    peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) * 1024
    print(f"resize to {side}x{side}: worker peak {peak / MIB:.0f} MiB, bound 1024 MiB")
    assert peak <= 1024 * MIB


@pytest.mark.parametrize("server", [("--max-request-memory-mib", "256",)], indirect=True)
def test_worker_memory_is_charged_to_the_request_budget(server):
    """A channel within the per-worker bound, but whose task memory on the worker is over the
    request memory budget, is refused naming max_request_memory_bytes."""
    code, details = _status(lambda: server.stub.EvaluateSignature(_evaluate([_channel(_resize(1024, 1024), _encode())]), timeout=60))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "codec workers x" in details and "max_request_memory_bytes = 268435456" in details
    assert server.load()["request_memory_bytes"] == 0


# --- 6: echoed strings bounded ----------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda big: _evaluate(dataset=big),
        lambda big: _evaluate(codecs=[pb.CodecSettings(preset=big)]),
        lambda big: _evaluate(scorer=pb.Scorer(name=big)),
        lambda big: _evaluate(scorer=pb.Scorer(params={big: 1.0})),
        lambda big: _evaluate([pb.Channel(preset=big)]),
        lambda big: _evaluate([_channel(pb.ChannelStep(resize=pb.ResizeStep(scale=0.5, filter=big)), _encode())]),
    ],
)
def test_unknown_names_are_cut_in_messages(stub, build):
    """A 20 KB unknown name is INVALID_ARGUMENT (it was RESOURCE_EXHAUSTED: metadata over 16 KiB),
    echoed as its first 64 characters and its length."""
    big = "x" * 20_000
    code, details = _status(lambda: stub.EvaluateSignature(build(big), timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details[:300]
    assert len(details) < 1000 and "(20000 characters)" in details


def test_channel_names_are_bounded(stub, server_target):
    """A 1 MiB channel name (it was copied into every result, uncharged) is refused before any encode."""
    req = _evaluate([_channel(_encode(preset="ultrafast"), name="n" * MIB)])
    code, details = _status(lambda: stub.EvaluateSignature(req, timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == "channels[0].name: 1048576 characters; a channel name has at most 256"
    assert max(len(line) for line in SERVER_LINES[server_target]) < 10_000
    ok = stub.EvaluateSignature(_evaluate([_channel(_encode(preset="ultrafast"), name="n" * 256)]), timeout=120)
    assert ok.results[0].codecs[0].channel.name == "n" * 256


# --- 7: every outcome logged and counted with its true code -------------------------------------


def test_cancelled_streams_are_logged_and_counted_as_cancelled(stub, server_target, metrics_url):
    """Streams cancelled by the client after 1 to 4 events, some while the server is between two
    events (its generator is closed: GeneratorExit, which passed around the status mapping and was
    logged and counted OK), are all logged and counted CANCELLED, none OK."""

    def count(code: str) -> float:
        text = urllib.request.urlopen(metrics_url, timeout=30).read().decode()
        for line in text.splitlines():
            if line.startswith("codecloop_requests_total{") and 'method="EvaluateSignatureStream"' in line and f'code="{code}"' in line:
                return float(line.split()[-1])
        return 0.0

    before, ok_before = count("CANCELLED"), count("OK")
    streams = 8
    for k in range(streams):
        sigs = [to_tensor(block_signature(s)) for s in range(300 + 16 * k, 316 + 16 * k)]
        req = pb.EvaluateRequest(candidates=sigs, carriers=pb.Carriers(dataset=pb.DatasetCarriers(num_clips=16, seed=k)),
                                 codecs=[pb.CodecSettings(preset="ultrafast", crf=20 + k)])  # fmt: skip
        stream = stub.EvaluateSignatureStream(req, timeout=300)
        for _ in range(1 + k % 4):
            next(stream)  # started, then progress events
        stream.cancel()
    deadline = time.monotonic() + 60
    while count("CANCELLED") < before + streams:
        assert time.monotonic() < deadline, f"{count('CANCELLED') - before} of {streams} cancelled streams counted CANCELLED"
        time.sleep(0.2)
    assert count("OK") == ok_before
    rpc_lines = [line for line in SERVER_LINES[server_target] if '"event": "rpc"' in line and "EvaluateSignatureStream" in line]
    assert all('"code": "CANCELLED"' in line for line in rpc_lines[-streams:]), rpc_lines[-streams:]


# --- 5: start-up interruptible -----------------------------------------------------------------


def _serve(args: list[str], env: dict[str, str], parent_exits: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "codecloop.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "1", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env}, start_new_session=True)


_QUEUES: dict[int, queue.Queue[str | None]] = {}


def _read_until(proc: subprocess.Popen, pattern: str, timeout: float) -> list[str]:
    """Lines the process printed until one matches ``pattern`` (AssertionError after ``timeout`` s).

    A reader thread per process feeds a queue: select() on a text pipe misses lines that the
    readline buffer already holds when the server prints several at once."""
    if proc.pid not in _QUEUES:
        q: queue.Queue[str | None] = queue.Queue()
        _QUEUES[proc.pid] = q

        def pump() -> None:
            for line in proc.stdout:
                q.put(line)
            q.put(None)

        threading.Thread(target=pump, daemon=True).start()
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = _QUEUES[proc.pid].get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n" + "".join(lines[-30:]))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def test_fifo_in_a_folder_is_skipped_and_a_folder_with_equals_is_served(tmp_path):
    """A FIFO named x.mp4 hung loading forever; it is skipped with a reason. The folder's path has
    '=' in it: NAME=FOLDER splits at the first '=' (a dataset name has none)."""
    folder = tmp_path / "clips=v2"
    folder.mkdir()
    clips = np.random.default_rng(2).integers(0, 256, (4, 8, 32, 48, 3), dtype=np.uint8)
    np.save(folder / "a.npy", clips[:2])
    np.save(folder / "b.npy", clips[2:])
    os.mkfifo(folder / "x.mp4")
    proc = _serve(["--dataset", f"mine={folder}"], {})
    try:
        lines = _read_until(proc, r"listening on", 300)
        assert any("x.mp4: not a regular file" in line and "skipped" in line for line in lines)
        target = re.search(r"listening on ([\d.:]+)", lines[-1]).group(1)
        with grpc.insecure_channel(target) as channel:
            info = pb_grpc.CodecLoopStub(channel).GetServerInfo(pb.GetServerInfoRequest(), timeout=30)
        mine = next(d for d in info.datasets if d.name == "mine")
        assert mine.description == str(folder) and sum(mine.split_clips.values()) == 4
    finally:
        _stop(proc)


def test_sigterm_while_loading_datasets_stops_at_once(tmp_path):
    """A fresh cache: the embedded corpus is being built (15 s or more). SIGTERM then ends the
    server within seconds (it used to finish loading and warming up first)."""
    proc = _serve([], {"CODECLOOP_CACHE_DIR": str(tmp_path / "cache")})
    try:
        _read_until(proc, r"x264 runs at SIMD level", 120)
        time.sleep(1.0)
        assert proc.poll() is None
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert time.monotonic() - start < 15
        assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("embedded-*.npy"))  # it had not finished
    finally:
        _stop(proc)


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_exit_with_parent_while_loading_datasets(tmp_path):
    """The parent of a server started with --exit-with-parent dies while the server loads: the
    server exits within seconds, not after start-up (it was left running, re-parented)."""
    cmd = [sys.executable, "-m", "codecloop.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "1", "--exit-with-parent"]
    env = {**os.environ, "CODECLOOP_CACHE_DIR": str(tmp_path / "cache")}
    log = tmp_path / "server.log"
    parent = subprocess.Popen(
        ["sh", "-c", f'"$@" --parent-pid $$ > {log} 2>&1 & echo $!; sleep 4', "sh", *cmd], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    pid = int(parent.stdout.readline())
    parent.wait(30)  # the parent is gone after 4 s; the server is still building the corpus
    try:
        deadline = time.monotonic() + 15
        while _alive(pid):
            assert time.monotonic() < deadline, "the server outlived its parent:\n" + log.read_text()[-3000:]
            time.sleep(0.2)
        assert "listening on" not in log.read_text()
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


# --- 8: smaller items --------------------------------------------------------------------------


def test_input_fps_zero_names_input_fps(stub):
    code, details = _status(lambda: stub.EvaluateSignature(_evaluate([_channel(_encode(), input_fps=0)]), timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == "channels[0].input_fps: 0 is outside the allowed range [1, 240]", details


def test_npy_frames_with_an_empty_axis_name_the_file(tmp_path):
    from codecloop_server.folder_dataset import folder_dataset
    from codecloop_wire.errors import CodecLoopValueError

    np.save(tmp_path / "a.npy", np.zeros((40, 0, 64, 3), np.uint8))
    np.save(tmp_path / "b.npy", np.zeros((40, 64, 64, 3), np.uint8))
    np.save(tmp_path / "c.npy", np.zeros((40, 64, 64, 3), np.uint8))
    # served: the file is skipped with its reason (issue 22); strict: refused naming it
    ds = folder_dataset("d", tmp_path, (16, 32, 32))
    assert ds.sources == ("b.npy", "c.npy") and any(name == "a.npy" and "zero-length axis" in why for name, why in ds.skipped), ds.skipped
    with pytest.raises(CodecLoopValueError, match=r"a\.npy: shape \(40, 0, 64, 3\) has a zero-length axis"):
        folder_dataset("d", tmp_path, (16, 32, 32), strict=True)


def test_dataset_argument_rule():
    import argparse

    from codecloop.local import folder_dataset
    from codecloop_server.cli import _dataset_arg

    assert _dataset_arg("a=/data/x=y") == ("a", "/data/x=y")
    assert _dataset_arg("a=b=/p") == ("a", "b=/p")  # the name ends at the first '='
    for bad in ("-a=/p", "a b=/p", "x" * 65 + "=/p"):
        with pytest.raises(argparse.ArgumentTypeError, match="a dataset name is 1 to 64 of"):
            _dataset_arg(bad)
    assert folder_dataset("/nonexistent/for/sure") is None


def test_local_folder_name_with_equals_becomes_a_dataset_name(tmp_path):
    from codecloop.local import folder_dataset

    (tmp_path / "my=clips").mkdir()
    (tmp_path / "==").mkdir()
    assert folder_dataset(str(tmp_path / "my=clips")) == ("my_clips", str(tmp_path / "my=clips"))
    assert folder_dataset(str(tmp_path / "=="))[0] == "folder"


def test_crf_0_is_lossless_for_libx264_only():
    clip = np.random.default_rng(4).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    x264, _ = transcode_rgb(clip, CodecSettings("libx264", crf=0, preset="ultrafast"))
    x265, _ = transcode_rgb(clip, CodecSettings("libx265", crf=0, preset="ultrafast"))
    from codecloop_server.convert import rgb_to_yuv420p, yuv420p_to_rgb

    np.testing.assert_array_equal(x264, yuv420p_to_rgb(rgb_to_yuv420p(clip)))  # only the colour conversion's loss
    assert not np.array_equal(x265, x264)


def test_channel_parse_refuses_a_repeated_codec_option():
    from codecloop import Channel as SdkChannel
    from codecloop_wire.errors import CodecLoopValueError

    with pytest.raises(CodecLoopValueError, match="codec option 'crf' given twice"):
        SdkChannel.parse("libx264:crf=23:crf=30")
    assert SdkChannel.parse("libx264:crf=23:qp=30")  # distinct keys still parse (the server refuses two rate modes)


def test_labels_show_an_encode_fps_that_differs_from_the_default(stub):
    """Two channels that differ only in the encode's fps get different labels (server round trip)."""
    from codecloop import Codec
    from codecloop.results import CodecStats

    req = _evaluate([_channel(_encode(preset="ultrafast", fps=15)), _channel(_encode(preset="ultrafast"))])
    reply = stub.EvaluateSignature(req, timeout=120)
    labels = [CodecStats.from_proto(c).label() for c in reply.results[0].codecs]
    assert labels == ["libx264 crf=28 ultrafast 15fps", "libx264 crf=28 ultrafast"], labels
    assert Codec(fps=25).label() == Codec().label()
