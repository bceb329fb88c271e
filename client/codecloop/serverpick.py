"""Which server a CLI command uses, checked and named on stderr before any work.

- ``--local``: a private server for this command (:class:`codecloop.local.LocalServer`).
- ``--dataset FOLDER`` (no ``--target``): a private server serving that folder.
- ``--target host:port[,...]``: that server, which must answer grpc.health.v1 with SERVING and
  ``GetServerInfo`` as a codecloop server; otherwise the command fails at once with the reason
  (after waiting up to ``--wait`` seconds for it to become SERVING).
- neither: the server on 127.0.0.1:50051 (``$CODECLOOP_DEFAULT_TARGET`` to try another) if it passes the same check; if nothing listens
  there, or what listens is NOT_SERVING, not gRPC or not codecloop, a private server, and the
  reason is printed.

The line printed names the server: ``codecloop: server 127.0.0.1:50051 (codecloop 0.9, 4
workers)`` or ``codecloop: private server 127.0.0.1:40123 (codecloop 0.9, 2 workers)``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from codecloop.client import Client
from codecloop_wire.errors import CodecLoopError, CodecLoopUnavailableError

DEFAULT_TARGET = "127.0.0.1:50051"  # where `codecloop serve` listens by default


def default_target() -> str:
    """The address tried without ``--target``: ``$CODECLOOP_DEFAULT_TARGET``, else :data:`DEFAULT_TARGET`."""
    return os.environ.get("CODECLOOP_DEFAULT_TARGET") or DEFAULT_TARGET
PROBE_TIMEOUT_S = 3.0  # per health / info call of the check


def _say(text: str) -> None:
    print(f"codecloop: {text}", file=sys.stderr, flush=True)


def listens(target: str, timeout: float = 1.0) -> bool:
    """Whether anything accepts a TCP connection at ``host:port`` (the gRPC check comes after)."""
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def why_unusable(client: Client, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``client``'s server is a SERVING codecloop server, else the reason in words."""
    try:
        status = client.health(timeout=timeout)
    except CodecLoopError as err:
        return f"no grpc.health.v1 answer ({type(err).__name__}: {err})"
    if status != "SERVING":
        return f"its health status is {status}"
    try:
        versions = client.info(timeout=timeout).versions
    except CodecLoopError as err:
        return f"not a codecloop server (GetServerInfo: {type(err).__name__}: {err})"
    return None if "codecloop" in versions else "not a codecloop server (GetServerInfo names no codecloop version)"


def describe(client: Client) -> str:
    """``host:port (codecloop X, N workers)`` of a checked server."""
    info = client.info(timeout=PROBE_TIMEOUT_S)
    return f"{client.target} (codecloop {info.versions['codecloop']}, {info.workers} workers)"


def _wait_usable(client: Client, wait: float) -> str | None:
    """:func:`why_unusable`, retried for up to ``wait`` seconds (a server still starting up)."""
    deadline = time.monotonic() + wait
    while True:
        why = why_unusable(client)
        if why is None or time.monotonic() >= deadline:
            return why
        time.sleep(0.5)


def _pem(var: str) -> bytes | None:
    path = os.environ.get(var)
    return Path(path).read_bytes() if path else None


def connect(target: str, max_attempts: int = 5) -> Client:
    """A client of ``target`` (comma-separated ``ip:port`` list = replicas), unchecked, with the
    transport settings from the environment: CODECLOOP_TOKEN (bearer token), CODECLOOP_TLS_CA (PEM
    of the server's CA: TLS on), CODECLOOP_TLS_CERT / CODECLOOP_TLS_KEY (mutual TLS)."""
    return Client(
        target.split(",") if "," in target else target,
        token=os.environ.get("CODECLOOP_TOKEN") or None,
        root_certificates=_pem("CODECLOOP_TLS_CA"),
        certificate_chain=_pem("CODECLOOP_TLS_CERT"),
        private_key=_pem("CODECLOOP_TLS_KEY"),
        max_attempts=max_attempts,
    )


def remote(target: str, wait: float = 0.0) -> Client:
    """A checked client of ``target`` (:func:`connect`); raises CodecLoopUnavailableError naming
    the target and the reason when it is not a SERVING codecloop server after ``wait`` seconds."""
    client = connect(target)
    why = _wait_usable(client, wait)
    if why is not None:
        client.close()
        raise CodecLoopUnavailableError(f"--target {target}: {why}" + (f" (waited {wait:g} s)" if wait else ""))
    _say(f"server {describe(client)}")
    return client


def private(reason: str, datasets: Mapping[str, str] | None = None, server_args: Sequence[str] = ()) -> Client:
    """A client of a private server started for this command, ``reason`` saying why."""
    _say(f"starting a local server ({reason}) ...")
    client = Client(None, datasets=datasets, server_args=server_args)
    _say(f"private server {describe(client)}")
    return client


def pick(target: str | None, local: bool = False, wait: float = 0.0, folder: tuple[str, str] | None = None, server_args: Sequence[str] = ()) -> Client:
    """The client a CLI command uses (module docstring); ``folder`` = (dataset name, folder) to serve
    privately, ``server_args`` more ``serve`` flags for a private server."""
    if target is not None:
        return remote(target, wait)
    default = default_target()
    if local or folder is not None:
        why = "--local" if local else f"--dataset {folder[1]} is a folder" if folder else ""
        return private(why, dict([folder]) if folder else None, server_args)
    if wait > 0:  # a server that is starting up on the default address: wait for it, or fail
        return remote(default, wait)
    if not listens(default):
        return private(f"no --target given and nothing listens on {default}", None, server_args)
    probe = connect(default, max_attempts=1)
    try:
        why = why_unusable(probe)
    finally:
        probe.close()
    if why is not None:
        return private(f"no --target given; {default} is not usable: {why}", None, server_args)
    client = connect(default)
    _say(f"server {describe(client)}")
    return client
