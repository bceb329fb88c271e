"""The server is always named (codecloop.serverpick): every command says which server it uses; a
--target that is NOT_SERVING, not gRPC or not codecloop fails at once with the reason; the default
address falls back to a private server with the reason printed; --local forces a private one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codecloop.cli", *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture()
def not_serving():
    """A bare gRPC server whose grpc.health.v1 status is NOT_SERVING (a server shutting down or stuck)."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture()
def not_codecloop():
    """A bare gRPC server that is SERVING but has no codecloop service."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)  # SERVING by default
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture()
def plain_socket():
    """A TCP listener that never speaks gRPC (some other program on the port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_a_checked_target_is_named(server_target):
    run = cli("info", "--target", server_target)
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith(f"codecloop: server {server_target} (codecloop ") and " 2 workers)" in run.stderr


@pytest.mark.parametrize(
    "listener,reason",
    [("not_serving", "its health status is NOT_SERVING"),
     ("not_codecloop", "not a codecloop server (GetServerInfo: CodecLoopServerError: UNIMPLEMENTED"),
     ("plain_socket", "no grpc.health.v1 answer")],
)  # fmt: skip
def test_an_unusable_target_fails_fast_with_the_reason(request, listener, reason):
    target = request.getfixturevalue(listener)
    run = cli("evaluate", "--target", target, "--random", "block8")
    assert run.returncode == 2, run.stderr
    assert f"codecloop: CodecLoopUnavailableError: --target {target}: {reason}" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


@pytest.mark.parametrize("listener,reason", [("not_serving", "its health status is NOT_SERVING"), ("plain_socket", "no grpc.health.v1 answer")])
def test_an_unusable_default_falls_back_to_a_private_server(request, listener, reason):
    target = request.getfixturevalue(listener)
    run = cli("info", env={"CODECLOOP_DEFAULT_TARGET": target})
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert lines[0].startswith(f"codecloop: starting a local server (no --target given; {target} is not usable: {reason}")
    assert lines[1].startswith("codecloop: private server 127.0.0.1:") and "workers)" in lines[1]
    assert '"datasets"' in run.stdout


def test_the_default_is_used_when_usable_and_local_forces_a_private_server(server_target):
    used = cli("info", env={"CODECLOOP_DEFAULT_TARGET": server_target})
    assert used.returncode == 0 and used.stderr.startswith(f"codecloop: server {server_target} (codecloop "), used.stderr
    local = cli("info", "--local", env={"CODECLOOP_DEFAULT_TARGET": server_target})
    assert local.returncode == 0, local.stderr
    assert local.stderr.startswith("codecloop: starting a local server (--local) ...")
    assert "codecloop: private server 127.0.0.1:" in local.stderr and server_target not in local.stderr
    both = cli("info", "--local", "--target", server_target)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
